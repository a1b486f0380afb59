"""Benchmark sermas_bus.json against json (stdlib) and orjson on a SERMAS dialogue event.

Run standalone:  python bench/bench_json.py [--repeat 31] [--target-ms 20]

Every case is timed timeit-style: `repeat` rounds of `number` calls each; the
rounds of all cases are interleaved (round-robin) so that drift and other load on
the machine hit every case alike.  The table shows the median and the best
per-call time over the rounds; ratios use the medians.  orjson is a comparison
only, used when it is importable.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sermas_bus import json as sjson  # noqa: E402

try:
    import orjson
except ImportError:  # a comparison, not a dependency
    orjson = None

# A dialogue message as the platform publishes it on app/<appId>/dialogue/messages/<sessionId>
# (the field names and punctuation alone are 225 bytes; short ids keep it near 300).
EVENT = {
    "appId": "demo",
    "sessionId": "s-5e1f",
    "messageId": "m-42",
    "chunkId": "c-7",
    "actor": "agent",
    "text": "Hi! How can I help?",
    "language": "en",
    "ts": "2024-05-01T12:00:00.123Z",
    "requestId": "r-17",
    "ttsEnabled": True,
    "emotion": "neutral",
    "llm": {"provider": "openai", "model": "gpt-4o", "temperature": 0.7},
    "gender": "F",
    "isWelcome": False,
}
PAYLOAD = json.dumps(EVENT, separators=(",", ":"), ensure_ascii=False).encode()

TARGETS = {
    "encode vs json.dumps": 3.0,      # at least 3x faster
    "encode vs orjson.dumps": 1 / 1.5,  # at most 1.5x slower
    "decode vs json.loads": 2.0,      # at least 2x faster
}


def cases():
    compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    c = {
        "json.dumps": lambda: json.dumps(EVENT, separators=(",", ":"), ensure_ascii=False).encode(),
        "json.dumps (encoder, no bytes)": lambda: compact(EVENT),
        "sermas_bus.json.dumps": lambda: sjson.dumps(EVENT),
        "json.loads": lambda: json.loads(PAYLOAD),
        "sermas_bus.json.loads": lambda: sjson.loads(PAYLOAD),
    }
    if orjson is not None:
        c["orjson.dumps"] = lambda: orjson.dumps(EVENT)
        c["orjson.loads"] = lambda: orjson.loads(PAYLOAD)
    return c


def calibrate(fn, target_s):
    number = 1
    while True:
        t = timeit.Timer(fn).timeit(number)
        if t >= target_s / 4:
            return max(1, int(number * target_s / t))
        number *= 4


def measure(repeat, target_ms):
    cs = cases()
    numbers = {name: calibrate(fn, target_ms / 1000) for name, fn in cs.items()}
    timers = {name: timeit.Timer(fn) for name, fn in cs.items()}
    samples = {name: [] for name in cs}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            for name, t in timers.items():
                samples[name].append(t.timeit(numbers[name]) / numbers[name] * 1e9)
    finally:
        if gc_was:
            gc.enable()
    return {name: (statistics.median(s), min(s)) for name, s in samples.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=31, help="rounds per case (default 31)")
    ap.add_argument("--target-ms", type=float, default=20.0, help="duration of one round (default 20 ms)")
    args = ap.parse_args(argv)

    assert sjson.dumps(EVENT) == PAYLOAD
    assert sjson.loads(PAYLOAD) == json.loads(PAYLOAD)
    r = measure(args.repeat, args.target_ms)

    print(f"payload: SERMAS dialogue event, {len(PAYLOAD)} bytes; Python {sys.version.split()[0]}; "
          f"orjson {'%s' % orjson.__version__ if orjson else 'not installed'}")
    print(f"{args.repeat} interleaved rounds of ~{args.target_ms:g} ms per case\n")
    print(f"{'case':34} {'median ns':>10} {'best ns':>10}")
    for name, (med, best) in r.items():
        print(f"{name:34} {med:10.0f} {best:10.0f}")

    ours_d, ours_l = r["sermas_bus.json.dumps"][0], r["sermas_bus.json.loads"][0]
    rows = [
        ("encode vs json.dumps", r["json.dumps"][0] / ours_d),
        ("decode vs json.loads", r["json.loads"][0] / ours_l),
    ]
    if orjson is not None:
        rows.insert(1, ("encode vs orjson.dumps", r["orjson.dumps"][0] / ours_d))
        rows.append(("decode vs orjson.loads", r["orjson.loads"][0] / ours_l))
    print(f"\n{'ratio (their time / ours)':34} {'speedup':>10} {'target':>10}  ")
    ok = True
    for name, x in rows:
        tgt = TARGETS.get(name)
        if tgt is None:
            mark, tgt_s = "", "-"
        else:
            met = x >= tgt
            ok &= met
            mark = "met" if met else "MISSED"
            tgt_s = f">= {tgt:.2f}x"
        print(f"{name:34} {x:9.2f}x {tgt_s:>10}  {mark}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
