"""``sermas-bus bench``: a quick, self-contained benchmark on a local broker.

For the full comparison against paho-mqtt and a plain C program use
``make bench`` (bench/run.py); this one needs nothing but the package and
mosquitto, and prints a progress line per step.
"""
from __future__ import annotations

import json as stdjson
import sys
import threading
import time
import timeit

from . import client as mqtt
from . import json as sbjson
from .testing import Mosquitto

EVENT = {"appId": "bench", "sessionId": "s-3f2b8c1e", "messageId": "m-c1a9", "chunkId": 0, "actor": "agent",
         "text": "Hello! How can I help?", "language": "en-GB", "ts": "2024-05-01T12:00:00.123Z",
         "requestId": "r-5d41402a", "llm": {"model": "gpt-4o", "temperature": 0.7}, "ttsEnabled": True,
         "emotion": "neutral"}


def _progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _ns(fn, number: int = 20000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9


def main(count: int = 50000) -> int:
    rows = []
    _progress("JSON encode/decode")
    raw = sbjson.dumps(EVENT)
    enc_std = _ns(lambda: stdjson.dumps(EVENT, separators=(",", ":")))
    enc_sb = _ns(lambda: sbjson.dumps(EVENT))
    dec_std = _ns(lambda: stdjson.loads(raw))
    dec_sb = _ns(lambda: sbjson.loads(raw))
    rows.append(("JSON encode, ns", f"{enc_sb:.0f}", f"json.dumps {enc_std:.0f} ({enc_std / enc_sb:.1f}x)"))
    rows.append(("JSON decode, ns", f"{dec_sb:.0f}", f"json.loads {dec_std:.0f} ({dec_std / dec_sb:.1f}x)"))
    with Mosquitto(tcp=True, websockets=False, log_type="warning",
                   extra_conf="max_inflight_messages 1000\n") as broker:
        got = 0
        done = threading.Event()

        def on_message(client, userdata, msg):
            nonlocal got
            sbjson.loads(msg.payload)
            got += 1
            if got >= expected:
                done.set()

        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub", queue_max=100000)
        sub.on_message = on_message
        sub.connect(broker.url("tcp"))
        sub.subscribe("bench/#", 1)
        sub.loop_start()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
        pub.max_inflight_messages_set(1000)
        pub.connect(broker.url("tcp"))
        for qos in (0, 1):
            _progress(f"QoS {qos}: publishing {count} events, receiving them in another client")
            got, expected = 0, count
            done.clear()
            t0 = time.perf_counter()
            ev = dict(EVENT)
            for i in range(count):
                ev["chunkId"] = i
                info = pub.publish(f"bench/q{qos}", sbjson.dumps(ev), qos)
            info.wait_for_publish(30)
            t_pub = time.perf_counter() - t0
            ok = done.wait(30)
            t_all = time.perf_counter() - t0
            rows.append((f"QoS {qos} publish, msg/s", f"{count / t_pub:,.0f}", "dict -> JSON -> broker"))
            rows.append((f"QoS {qos} end to end, msg/s", f"{got / t_all:,.0f}",
                         "all received" if ok else f"only {got} of {count} received"))
        pub.close()
        sub.close()
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':{width}s}  {'sermas_bus':>10s}  notes")
    for name, value, note in rows:
        print(f"{name:{width}s}  {value:>10s}  {note}")
    return 0
