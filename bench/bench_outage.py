#!/usr/bin/env python3
"""Messages lost in a broker outage: paho-mqtt vs sermas_bus.client vs SermasClient.

One publisher at a time, each against its own freshly started private
mosquitto (sermas_bus.testing.Mosquitto: tcp only, free 127.0.0.1 port, own
config and data dir; never the system broker), publishes a QoS 1 stream of
n = 2000 * (outage + 4) messages numbered 0..n-1 at 2,000 msg/s from a thread.
0.8 s after the stream starts the broker is SIGKILLed (Mosquitto.kill()), and
after --outage seconds restarted on the same port (Mosquitto.start()), as in
tests/test_outbox.py.  Publishers:

  paho     paho-mqtt 2.x (paho.mqtt.client), callback API VERSION2, its default
           protocol (MQTT 3.1.1), default queue bounds (unlimited queue,
           20 in flight), loop_start(), reconnect_delay_set(0.1, 0.5)
  client   sermas_bus.client.Client: the same code with the import changed
           (MQTT 5, its default)
  sermas   sermas_bus.SermasClient(mqtt_url=..., app_id="app", max_queued=100_000),
           bus.publish(topic, b"<i>", qos=1); bus.client.reconnect_delay_set(0.1, 0.5)

A subscriber (sermas_bus.client.Client, QoS 1, fixed client id, persistent
MQTT 5 session) counts the distinct payloads it receives.  The broker runs
with persistence off, so a SIGKILL wipes every session and the subscriber has
to subscribe again after the restart; each publisher's on_pre_connect (paho-mqtt
2.x has it; ours is the same hook) waits until the subscriber is back (its
on_connect, which sermas_bus calls after the subscriptions were restored), so
that nothing the publisher sends first reaches a broker with no subscription
yet (the "gate" of tests/test_outbox.py).  Without it the broker would drop
those messages whatever the publisher does.

After the stream: the publisher's queue is drained (paho: wait_for_publish on
every info whose rc was MQTT_ERR_SUCCESS, 30 s in all: paho's
wait_for_publish raises for any other rc, so it cannot wait for messages
published while disconnected; sermas_bus: flush(30)), then the subscriber gets
up to 20 s more, and lost = n - distinct payloads received.  "accepted" =
publish() returned rc MQTT_ERR_SUCCESS; "rc errors" = any other rc (in practice
MQTT_ERR_NO_CONN: "not connected now", which both paho-mqtt and sermas_bus
answer for a message they still queue and send after the reconnect).

  python bench/bench_outage.py                      # all three, 15 s outage (~1 min)
  python bench/bench_outage.py --outage 2 --only paho,client
  python bench/bench_outage.py --json out.json
  PYTHONPATH=/path/to/tree python bench/bench_outage.py   # another build
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PUBLISHERS = ["paho", "client", "sermas"]
LABEL = {"paho": "paho-mqtt", "client": "sermas_bus.client.Client", "sermas": "SermasClient"}
RATE = 2000            # msg/s
KILL_AFTER = 0.8       # s after the stream starts
DRAIN_TIMEOUT = 30.0   # s for the publisher's queue
SUB_TIMEOUT = 20.0     # s more for the subscriber


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Stream:
    """Publishes n messages at RATE/s from a thread through publish(i)."""

    def __init__(self, publish, n, rate=RATE):
        self.publish, self.n, self.rate = publish, n, rate
        self.infos = []
        self.error = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="bench-outage-stream")

    def _run(self):
        start = time.monotonic()
        try:
            for i in range(self.n):
                if self.stop.is_set():
                    return
                delay = start + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.infos.append(self.publish(i))
        except Exception as exc:   # reported in the result
            self.error = exc

    def start(self):
        self.thread.start()
        return self


class Subscriber:
    """sermas_bus.client.Client on `topic`, QoS 1, fixed id, persistent session;
    `ready` is set on every on_connect (after sermas_bus restored the subscription)."""

    def __init__(self, url, topic, client_id):
        import sermas_bus.client as mqtt
        from sermas_bus.packettypes import PacketTypes
        from sermas_bus.properties import Properties

        self.got = set()
        self.received = 0
        self.ready = threading.Event()
        self.connects = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600      # persistent session (MQTT 5)
        self.client.connect(url, properties=props)
        self.client.subscribe(topic, 1)
        self.client.loop_start()
        self.ready.set()

    def _on_message(self, client, userdata, msg):
        self.received += 1
        self.got.add(int(msg.payload))

    def _on_connect(self, *args):
        self.connects += 1
        self.ready.set()

    def close(self):
        self.client.close()


def _rc_name(rc):
    try:
        name = getattr(rc, "name", None) or ""
        return name or "rc %d" % int(rc)
    except Exception:
        return repr(rc)


def run_one(kind, outage):
    from sermas_bus.testing import Mosquitto

    n = int(RATE * (outage + 4))
    topic = "bench/outage/%s/%s" % (kind, uuid.uuid4().hex)
    tag = "%d-%s" % (os.getpid(), uuid.uuid4().hex[:8])
    res = {"publisher": kind, "label": LABEL[kind], "outage_s": outage, "n": n}
    broker = Mosquitto(tcp=True, websockets=False, log_type="warning")
    sub = pub_close = stream = None
    gate_waits = []
    try:
        broker.start()
        url = broker.url("tcp")
        sub = Subscriber(url, topic, "bench-outage-sub-" + tag)

        def gate(*_args):
            # on_pre_connect: hold the (re)connect until the subscriber is back
            t0 = time.monotonic()
            ok = sub.ready.wait(outage + 20)
            gate_waits.append((round(time.monotonic() - t0, 3), ok))

        if kind == "paho":
            import paho.mqtt
            import paho.mqtt.client as pmqtt
            pub = pmqtt.Client(pmqtt.CallbackAPIVersion.VERSION2, client_id="bench-outage-paho-" + tag)
            res["version"] = "paho-mqtt %s, MQTT %s (default)" % (
                paho.mqtt.__version__, {pmqtt.MQTTv31: "3.1", pmqtt.MQTTv311: "3.1.1",
                                        pmqtt.MQTTv5: "5"}[pub._protocol])
            pub.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
            pub.on_pre_connect = gate
            pub.connect(broker.host, broker.port)
            pub.loop_start()

            def publish(i):
                return pub.publish(topic, str(i), 1)

            def pub_close():
                pub.disconnect()
                pub.loop_stop()
            ok_rc = pmqtt.MQTT_ERR_SUCCESS
        elif kind == "client":
            import sermas_bus
            import sermas_bus.client as mqtt
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-outage-client-" + tag)
            pub.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
            pub.on_pre_connect = gate
            pub_close = pub.close
            pub.connect(url)
            pub.loop_start()
            res["version"] = "sermas_bus %s, MQTT %s" % (
                getattr(sermas_bus, "__version__", "?"), "5" if pub.protocol == mqtt.MQTTv5 else "3.1.1")

            def publish(i):
                return pub.publish(topic, str(i), 1)
            ok_rc = mqtt.MQTT_ERR_SUCCESS
        else:
            import sermas_bus
            import sermas_bus.client as mqtt
            from sermas_bus import SermasClient
            bus = SermasClient(mqtt_url=url, app_id="app", max_queued=100_000)
            bus.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
            bus.client.on_pre_connect = gate
            pub_close = bus.close
            bus.connect()
            res["version"] = "sermas_bus %s, MQTT %s" % (
                getattr(sermas_bus, "__version__", "?"), "5" if bus.client.protocol == mqtt.MQTTv5 else "3.1.1")

            def publish(i):
                return bus.publish(topic, str(i).encode(), qos=1)
            ok_rc = mqtt.MQTT_ERR_SUCCESS

        log("%s: %s, n=%d, outage %.1f s, broker %s" % (kind, res["version"], n, outage, url))
        t_start = time.monotonic()
        stream = Stream(publish, n).start()
        time.sleep(KILL_AFTER)
        sub.ready.clear()
        broker.kill()
        t_kill = time.monotonic()
        time.sleep(outage)
        broker.start()
        res["restart_s_after_kill"] = round(time.monotonic() - t_kill, 2)
        stream.thread.join(n / RATE + outage + 30)
        if stream.thread.is_alive():
            stream.stop.set()
            stream.thread.join(5)
            res["stream_blocked"] = True
        res["stream_s"] = round(time.monotonic() - t_start, 2)
        res["stream_error"] = None if stream.error is None else repr(stream.error)

        infos = list(stream.infos)
        res["published"] = len(infos)
        codes = {}
        for info in infos:
            if info.rc != ok_rc:
                name = _rc_name(info.rc)
                codes[name] = codes.get(name, 0) + 1
        res["accepted"] = sum(1 for info in infos if info.rc == ok_rc)
        res["rc_errors"] = len(infos) - res["accepted"]
        res["rc_error_codes"] = codes

        # drain the publisher's queue, bounded
        t0 = time.monotonic()
        if kind == "paho":
            deadline = t0 + DRAIN_TIMEOUT
            for info in infos:
                if info.rc != ok_rc:
                    continue       # paho's wait_for_publish raises for these
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    info.wait_for_publish(left)
                except (RuntimeError, ValueError):
                    pass
            res["drained"] = all(info.is_published() for info in infos if info.rc == ok_rc)
            # diagnostic (paho private state): what paho still holds, by state
            states = {}
            with pub._out_message_mutex:
                for m in pub._out_messages.values():
                    states[m.state] = states.get(m.state, 0) + 1
            names = {0: "invalid", 1: "publish", 2: "wait_for_puback", 3: "wait_for_pubrec",
                     4: "resend_pubrel", 5: "wait_for_pubrel", 6: "resend_pubcomp",
                     7: "wait_for_pubcomp", 8: "send_pubrec", 9: "queued"}
            res["paho_out_messages_left"] = {names.get(k, str(k)): v for k, v in sorted(states.items())}
        elif kind == "client":
            res["drained"] = bool(pub.flush(DRAIN_TIMEOUT))
        else:
            res["drained"] = bool(bus.flush(DRAIN_TIMEOUT))
        res["drain_s"] = round(time.monotonic() - t0, 2)

        # then the subscriber, bounded
        t0 = time.monotonic()
        while len(sub.got) < n and time.monotonic() - t0 < SUB_TIMEOUT:
            time.sleep(0.05)
        res["sub_wait_s"] = round(time.monotonic() - t0, 2)
        got = set(sub.got)
        lost = sorted(set(range(n)) - got)
        res["received"] = sub.received
        res["distinct"] = len(got & set(range(n)))
        res["lost"] = len(lost)
        res["lost_pct"] = round(100.0 * len(lost) / n, 2)
        res["lost_sample"] = lost[:10]
        if lost:
            res["lost_range"] = [lost[0], lost[-1]]
        res["gate_waits_s"] = gate_waits
        res["subscriber_connects"] = sub.connects
        log("%s: published %d, accepted %d, rc errors %s, drained %s in %.1f s, lost %d" % (
            kind, res["published"], res["accepted"], codes or 0, res["drained"], res["drain_s"], res["lost"]))
        if kind == "paho":
            log("paho: out_messages left by state: %s" % res["paho_out_messages_left"])
    finally:
        if stream is not None:
            stream.stop.set()
            stream.thread.join(5)
        for closer in (pub_close, sub.close if sub is not None else None):
            if closer is not None:
                try:
                    closer()
                except Exception as exc:   # closing must go on
                    log("close failed: %r" % (exc,))
        broker.close()
    return res


def machine():
    try:
        mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=5).stdout
        mosq = mosq.splitlines()[0].strip()
    except Exception:
        mosq = "mosquitto ?"
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "mosquitto": mosq,
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d")}


def row_name(r):
    """'paho-mqtt 2.2.0 (MQTT 3.1.1, its default)', 'SermasClient (MQTT 5)'."""
    version = r.get("version", "")
    mqtt = version[version.find("MQTT"):].replace(" (default)", "") if "MQTT" in version else "?"
    if r["publisher"] == "paho":
        return "paho-mqtt %s (%s, its default)" % (version.split()[1].rstrip(",") if version else "?", mqtt)
    return "%s (%s)" % (r["label"], mqtt)


def table(results):
    lines = ["| publisher | outage s | published | accepted | rc errors | lost | lost % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append("| %s | %g | error: %s | | | | |" % (r["label"], r["outage_s"], r["error"]))
            continue
        lines.append("| %s | %g | %d | %d | %d | %d | %.2f |" % (
            row_name(r), r["outage_s"], r["published"], r["accepted"], r["rc_errors"],
            r["lost"], r["lost_pct"]))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outage", type=float, default=15.0, help="seconds the broker stays down (default 15)")
    ap.add_argument("--only", default=",".join(PUBLISHERS),
                    help="comma-separated subset of %s" % ",".join(PUBLISHERS))
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    bad = [k for k in kinds if k not in PUBLISHERS]
    if bad or not kinds:
        ap.error("--only: unknown publisher(s) %s; choose from %s" % (bad, ",".join(PUBLISHERS)))
    if args.outage <= 0:
        ap.error("--outage must be > 0")

    results = []
    for kind in kinds:
        try:
            results.append(run_one(kind, args.outage))
        except Exception as exc:   # one failing row must not hide the others
            log("%s failed: %r" % (kind, exc))
            results.append({"publisher": kind, "label": LABEL[kind], "outage_s": args.outage,
                            "error": repr(exc)})
    m = machine()
    print("Messages lost in a broker outage: QoS 1, %d msg/s, broker SIGKILLed %.1f s after the start "
          "for %g s (%s, Python %s, %d CPUs)\n" % (RATE, KILL_AFTER, args.outage, m["mosquitto"],
                                                    m["python"], m["cpus"]))
    print(table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": m, "rate": RATE, "kill_after_s": KILL_AFTER, "results": results}, f, indent=2)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
