"""Python side of the sermas_bus benchmark: one workload script, many clients.

The same code drives ``sermas_bus.client`` and ``paho.mqtt.client`` (2.x API);
only the module differs (``--client sermas|paho``).  bench/run.py starts this
script once per measurement, so every client gets its own process, GIL and CPU
accounting.  Protocol with the driver: the script prints ``READY`` once it is
subscribed (roles that subscribe), then a single ``RESULT {json}`` line.
Timestamps are ``time.monotonic()`` (CLOCK_MONOTONIC), the clock the C
program uses, so the driver can compare them across processes.

Roles:
  probe  import the client, report the codec in use and the seq-0 payload
  pub    encode the SERMAS dialogue event per message and publish it N times
  sub    subscribe, decode every message with the JSON codec and count
  rtt    publish to a topic this same client subscribes to, wait for the
         echo through the broker, N samples after a warm-up
"""

import argparse
import functools
import importlib
import json
import os
import sys
import threading
import time

# ------------------------------------------------------------------ payload


def make_event():
    """The SERMAS dialogue event (~250 bytes encoded).

    Must mirror make_event() in bench/c_ceiling.c key for key; the driver
    checks that both encode seq 0 to the same bytes.  ``chunkId`` is the
    sequence number that changes per message.
    """
    return {
        "appId": "sermas",
        "sessionId": "s-3f2b8c1e",
        "messageId": "m-c1a9",
        "chunkId": 0,
        "actor": "agent",
        "text": "Hello! How can I help?",
        "language": "en-GB",
        "ts": 1714557600123,
        "requestId": "r-5d41402a",
        "llm": {"model": "gpt-4o", "temperature": 0.7},
        "ttsEnabled": True,
        "emotion": "neutral",
    }


def load_client(name):
    """Return (mqtt module, dumps, loads, codec description)."""
    # Compact separators so every client (and cJSON) sends identical bytes.
    dumps = functools.partial(json.dumps, separators=(",", ":"))
    loads = json.loads
    codec = {"dumps": "json.dumps", "loads": "json.loads"}
    if name == "paho":
        mqtt = importlib.import_module("paho.mqtt.client")
    elif name == "sermas":
        mqtt = importlib.import_module("sermas_bus.client")
        try:
            sjson = importlib.import_module("sermas_bus.json")
        except ImportError:
            sjson = None
        if sjson is not None and callable(getattr(sjson, "dumps", None)):
            dumps = sjson.dumps
            codec["dumps"] = "sermas_bus.json.dumps"
        if sjson is not None and callable(getattr(sjson, "loads", None)):
            loads = sjson.loads
            codec["loads"] = "sermas_bus.json.loads"
    else:
        raise SystemExit(f"unknown client {name!r}")
    return mqtt, dumps, loads, codec


def module_version(name):
    try:
        from importlib.metadata import version

        return version("paho-mqtt" if name == "paho" else "sermas_bus")
    except Exception:
        return "?"


# ------------------------------------------------------------------- client


def fail(msg):
    print(f"workload: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def connect(mqtt, args, role):
    """Connected client with its network loop running in a background thread."""
    transport = "websockets" if args.transport == "ws" else "tcp"
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-{args.client}-{role}-{os.getpid()}",
        protocol=mqtt.MQTTv5,
        transport=transport,
    )
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    connected = threading.Event()
    status = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        status["rc"] = reason_code
        connected.set()

    c.on_connect = on_connect
    if args.qos > 0 and args.window:
        c.max_inflight_messages_set(args.window)
    c.connect(args.host, args.port, keepalive=60)
    c.loop_start()
    if not connected.wait(10):
        fail("no CONNACK within 10 s")
    rc = status.get("rc")
    if getattr(rc, "is_failure", False):
        fail(f"connect refused: {rc}")
    return c


def subscribe(c, topic, qos):
    done = threading.Event()
    c.on_subscribe = lambda client, userdata, mid, reason_codes, properties: done.set()
    c.subscribe(topic, qos)
    if not done.wait(10):
        fail("no SUBACK within 10 s")


def close(c):
    c.disconnect()
    c.loop_stop()


def result(**fields):
    print("RESULT " + json.dumps(fields), flush=True)


# -------------------------------------------------------------------- roles


def role_probe(args, mqtt, dumps, loads, codec):
    payload = dumps(make_event())
    if isinstance(payload, (bytes, bytearray)):
        payload = bytes(payload).decode()
    result(
        client=args.client,
        module=mqtt.__name__,
        version=module_version(args.client),
        payload=payload,
        **codec,
    )


def role_pub(args, mqtt, dumps, loads, codec):
    c = connect(mqtt, args, "pub")
    ev = make_event()
    topic, qos, n = args.topic, args.qos, args.n
    publish = c.publish

    t_start = time.monotonic()
    for i in range(n):
        ev["chunkId"] = i
        info = publish(topic, dumps(ev), qos)
    t_returned = time.monotonic()
    info.wait_for_publish(args.timeout)  # QoS0: written; QoS1: PUBACKed
    t_end = time.monotonic()

    ok = info.is_published()
    close(c)
    if not ok:
        fail(f"last message not published within {args.timeout} s (rc={info.rc})")
    result(n=n, t_start=t_start, t_returned=t_returned, t_end=t_end)


def role_sub(args, mqtt, dumps, loads, codec):
    c = connect(mqtt, args, "sub")
    n = args.n
    state = {"count": 0, "t_first": 0.0, "t_last": 0.0, "errors": 0}
    done = threading.Event()
    now = time.monotonic

    def on_message(client, userdata, msg):
        t = now()
        doc = loads(msg.payload)
        if "chunkId" not in doc:
            state["errors"] += 1
        count = state["count"] = state["count"] + 1
        if count == 1:
            state["t_first"] = t
        state["t_last"] = t
        if count == n:
            done.set()

    c.on_message = on_message
    subscribe(c, args.topic, args.qos)
    print("READY", flush=True)

    seen = -1
    while not done.wait(args.idle):
        if state["count"] == seen:  # nothing new for --idle seconds
            break
        seen = state["count"]
    close(c)
    result(
        n=n,
        count=state["count"],
        t_first=state["t_first"],
        t_last=state["t_last"],
        decode_errors=state["errors"],
    )


def percentile(sorted_values, q):
    """Nearest-rank percentile; same definition as bench/c_ceiling.c."""
    k = min(len(sorted_values), max(1, int(q * len(sorted_values) + 0.999999999)))
    return sorted_values[k - 1]


def role_rtt(args, mqtt, dumps, loads, codec):
    c = connect(mqtt, args, "rtt")
    arrived = threading.Event()
    c.on_message = lambda client, userdata, msg: arrived.set()
    subscribe(c, args.topic, 0)
    payload = dumps(make_event())
    topic, publish, clock = args.topic, c.publish, time.perf_counter

    samples, timeouts = [], 0
    for i in range(args.warmup + args.n):
        arrived.clear()
        t0 = clock()
        publish(topic, payload, 0)
        ok = arrived.wait(5)
        t1 = clock()
        if not ok:
            timeouts += 1
            if timeouts > 10:
                break
        elif i >= args.warmup:
            samples.append((t1 - t0) * 1e6)
    close(c)
    if not samples:
        fail("rtt: no samples")
    samples.sort()
    result(
        n=len(samples),
        p50_us=percentile(samples, 0.50),
        p99_us=percentile(samples, 0.99),
        mean_us=sum(samples) / len(samples),
        min_us=samples[0],
        max_us=samples[-1],
        timeouts=timeouts,
    )


ROLES = {"probe": role_probe, "pub": role_pub, "sub": role_sub, "rtt": role_rtt}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=sorted(ROLES))
    p.add_argument("--client", choices=["sermas", "paho"], required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int)
    p.add_argument("--transport", choices=["tcp", "ws"], default="tcp")
    p.add_argument("--topic", default="bench/t")
    p.add_argument("-n", type=int, default=1000, help="messages (pub/sub) or samples (rtt)")
    p.add_argument("--qos", type=int, choices=[0, 1], default=0)
    p.add_argument("--window", type=int, default=1000, help="QoS1 in-flight window")
    p.add_argument("--warmup", type=int, default=500, help="rtt warm-up round trips")
    p.add_argument("--idle", type=float, default=5.0, help="sub: give up after this long without a message")
    p.add_argument("--timeout", type=float, default=60.0, help="pub: wait_for_publish timeout")
    args = p.parse_args(argv)
    if args.role != "probe" and not args.port:
        p.error("--port is required")

    mqtt, dumps, loads, codec = load_client(args.client)
    ROLES[args.role](args, mqtt, dumps, loads, codec)


if __name__ == "__main__":
    main()
