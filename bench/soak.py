"""Soak: memory and descriptors stay flat over a long run.

    python bench/soak.py [--messages 1000000] [--cycles 10000]

1. --messages messages (QoS 0 and QoS 1 mixed, JSON payloads decoded by the
   subscriber's callback) through a client pair on a private mosquitto; RSS
   is sampled every 5 % of the run.  Goal: after the first 10 % (warm-up:
   queues, caches, allocator arenas), RSS stays within 5 % of its value then.
2. --cycles connect / subscribe / publish / close cycles of a new client each
   time; RSS and the number of open file descriptors sampled the same way.
   Goal: flat (RSS within 5 %, descriptors equal).

Prints a table and PASS/FAIL per goal; exits 1 on a FAIL.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sermas_bus import client as mqtt  # noqa: E402
from sermas_bus import json as sbjson  # noqa: E402
from sermas_bus.testing import Mosquitto  # noqa: E402

V2 = mqtt.CallbackAPIVersion.VERSION2


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def flat(samples, skip: float = 0.1, tolerance: float = 0.05):
    """(reference, worst relative deviation after the warm-up)."""
    start = max(1, int(len(samples) * skip))
    ref = samples[start - 1]
    worst = max(abs(s - ref) / ref for s in samples[start:]) if samples[start:] else 0.0
    return ref, worst


def soak_messages(port: int, n: int):
    got = [0]
    done = threading.Event()

    def on_message(client, userdata, msg):
        sbjson.loads(msg.payload)
        got[0] += 1
        if got[0] >= n:
            done.set()
    sub = mqtt.Client(V2, "soak-sub")
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("soak/#", 1)
    sub.loop_start()
    pub = mqtt.Client(V2, "soak-pub")
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    time.sleep(0.3)
    samples = []
    step = max(1, n // 20)
    t0 = time.perf_counter()
    for i in range(n):
        pub.publish("soak/t", sbjson.dumps({"n": i, "text": "soak", "values": [1, 2.5, None]}), qos=i & 1)
        if i % step == step - 1:
            # let the subscriber catch up a little: the sample measures the
            # client, not a backlog of undelivered messages
            while got[0] < i - 20000:
                time.sleep(0.01)
            samples.append(rss_kib())
    pub.flush(60)
    done.wait(120)
    dt = time.perf_counter() - t0
    pub.disconnect()
    pub.loop_stop()
    pub.close()
    sub.disconnect()
    sub.loop_stop()
    sub.close()
    return samples, got[0], dt


def soak_cycles(port: int, cycles: int):
    rss, fds = [], []
    step = max(1, cycles // 20)
    t0 = time.perf_counter()
    for i in range(cycles):
        c = mqtt.Client(V2, f"soak-cycle-{i % 7}")
        c.connect("127.0.0.1", port)
        c.subscribe("soak/cycle", 1)
        c.publish("soak/cycle", b"x", qos=1).wait_for_publish(5)
        c.disconnect()
        c.close()
        if i % step == step - 1:
            rss.append(rss_kib())
            fds.append(open_fds())
    return rss, fds, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--cycles", type=int, default=10_000)
    args = ap.parse_args()
    ok = True
    with Mosquitto(websockets=False, log_type="warning") as broker:
        port = broker.listeners["tcp"]
        samples, got, dt = soak_messages(port, args.messages)
        ref, worst = flat(samples)
        passed = worst <= 0.05 and got >= args.messages
        ok &= passed
        print(f"{args.messages:,} messages in {dt:.1f} s ({got:,} received): RSS {samples[0]:,} KiB at 5 %, "
              f"{ref:,} KiB after warm-up, {samples[-1]:,} KiB at the end; worst deviation "
              f"{worst * 100:.1f} % (goal <= 5 %) {'PASS' if passed else 'FAIL'}")
        rss, fds, dt = soak_cycles(port, args.cycles)
        ref, worst = flat(rss)
        passed = worst <= 0.05 and len(set(fds[1:])) == 1
        ok &= passed
        print(f"{args.cycles:,} connect/close cycles in {dt:.1f} s: RSS {rss[0]:,} -> {rss[-1]:,} KiB "
              f"(worst {worst * 100:.1f} % after warm-up), open fds {fds[0]} -> {fds[-1]} "
              f"{'PASS' if passed else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
