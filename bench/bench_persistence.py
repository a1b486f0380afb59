"""The durable outbox's cost, measured in one run against a private mosquitto.

    python bench/bench_persistence.py [--baseline TREE] [--runs 3] [--n 50000]

Rows (1 publishing thread unless said; 100-byte payload; TCP; the rate
counts until flush() returned, i.e. every message acknowledged):
  QoS 1 without persistence          the anchor
  QoS 1, persistence_sync="write"    goal >= 50 % of the anchor
  QoS 1, persistence_sync="fsync"    1 thread, then 8 threads (group commit; goal >= 10k/s)
  QoS 0 / QoS 1 without persistence, this tree vs --baseline TREE (a checkout
  of the commit before the store, built in place): goal "unchanged".

Each figure is the median of --runs runs, each a fresh process; the
measurements alternate between configurations so drift hits all alike.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def worker(port: int, qos: int, n: int, persistence: str, sync: str, threads: int) -> None:
    from sermas_bus import client as mqtt
    kw = {}
    if persistence:
        kw = {"persistence": persistence, "persistence_sync": sync}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, "bench-pub", **kw)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    payload = b"x" * 100
    per = n // threads

    def run() -> None:
        for _ in range(per):
            c.publish("bench/persist", payload, qos=qos)
    workers = [threading.Thread(target=run) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert c.flush(60)
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    print(json.dumps({"rate": per * threads / dt}))


def measure(tree: str, port: int, qos: int, n: int, persistence: bool, sync: str = "write",
            threads: int = 1) -> float:
    store = tempfile.mkdtemp(prefix="sb-bench-store-") if persistence else ""
    try:
        env = dict(os.environ, PYTHONPATH=tree)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "worker", str(port), str(qos), str(n),
                              store, sync, str(threads)], env=env, capture_output=True, text=True,
                             timeout=300, cwd=tree)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return float(json.loads(out.stdout.strip().splitlines()[-1])["rate"])
    finally:
        if store:
            shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        port, qos, n, store, sync, threads = sys.argv[2:8]
        worker(int(port), int(qos), int(n), store, sync, int(threads))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", help="a built checkout to compare the non-persistent rows with")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=50000)
    args = ap.parse_args()
    sys.path.insert(0, ROOT)
    from sermas_bus.testing import Mosquitto

    rows = {
        "QoS 1, no persistence": dict(qos=1, persistence=False),
        "QoS 1, persistence write": dict(qos=1, persistence=True),
        "QoS 1, persistence fsync, 1 thread": dict(qos=1, persistence=True, sync="fsync", n=5000),
        "QoS 1, persistence fsync, 8 threads": dict(qos=1, persistence=True, sync="fsync", threads=8, n=40000),
        "QoS 0, no persistence": dict(qos=0, persistence=False, n=args.n * 4),
    }
    trees = {"this tree": ROOT}
    if args.baseline:
        trees["baseline"] = os.path.abspath(args.baseline)
    results: dict = {}
    with Mosquitto(websockets=False, log_type="warning") as broker:
        port = broker.listeners["tcp"]
        for _ in range(args.runs):
            for name, row in rows.items():
                for tree_name, tree in trees.items():
                    if tree_name != "this tree" and row.get("persistence"):
                        continue
                    kw = dict(row)
                    n = kw.pop("n", args.n)
                    results.setdefault((name, tree_name), []).append(measure(tree, port, n=n, **kw))
    med = {k: statistics.median(v) for k, v in results.items()}
    anchor = med[("QoS 1, no persistence", "this tree")]
    print(f"{'row':42} {'msg/s':>10} {'vs anchor':>10}  runs")
    for (name, tree_name), rate in med.items():
        label = name if tree_name == "this tree" else f"{name} [baseline]"
        print(f"{label:42} {rate:10,.0f} {rate / anchor:9.2f}x  "
              + " ".join(f"{r:,.0f}" for r in results[(name, tree_name)]))
    write = med[("QoS 1, persistence write", "this tree")] / anchor
    fsync8 = med[("QoS 1, persistence fsync, 8 threads", "this tree")]
    print(f"\npersistence write / none: {write:.2f} (goal >= 0.50) {'PASS' if write >= 0.5 else 'FAIL'}")
    print(f"fsync group commit, 8 threads: {fsync8:,.0f}/s (goal >= 10,000) "
          f"{'PASS' if fsync8 >= 10000 else 'FAIL'}")
    if args.baseline:
        for name in ("QoS 1, no persistence", "QoS 0, no persistence"):
            ratio = med[(name, "this tree")] / med[(name, "baseline")]
            print(f"{name}: this tree / baseline = {ratio:.2f}")


if __name__ == "__main__":
    main()
