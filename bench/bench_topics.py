"""Micro-benchmark of sermas_bus.topics: ns/op for render and match.

Anchors (pure Python, written the straightforward way):
  - render: re.sub over the template's ':param's, with the same lookup order
    and value checks as the C code;
  - TopicTable.match: one compiled regex per template, tried most specific
    first (a literal level before a parameter, then more repeated-parameter
    constraints), first hit wins;
  - FilterTrie.match: sermas_bus.matcher.TopicMatcher (a pure-Python trie)
    and a linear scan with topic_matches_sub.

Run: PYTHONPATH=. python bench/bench_topics.py [--quick]
"""

from __future__ import annotations

import re
import sys
import time

from sermas_bus import topics
from sermas_bus.matcher import TopicMatcher, topic_matches_sub
from sermas_bus.topics import FilterTrie, TopicTable

QUICK = "--quick" in sys.argv

# ---------------------------------------------------------------------------
# pure-Python anchors

_PARAM = re.compile(r"(?<![^/]):([^/]+)")
_BAD = re.compile(r"[/+#\x00]")


class RegexTable:
    def __init__(self, table):
        self.templates = {}
        entries = []
        for order, (resource, names) in enumerate((r, n) for r, n in table.items()):
            for name, tpl in names.items():
                self.templates[f"{resource}.{name}"] = tpl
        for order, (name, tpl) in enumerate(self.templates.items()):
            seen, parts = set(), []
            for lvl in tpl.split("/"):
                if lvl.startswith(":"):
                    p = lvl[1:]
                    parts.append(f"(?P={p})" if p in seen else f"(?P<{p}>[^/+#\x00]+)")
                    seen.add(p)
                else:
                    parts.append(re.escape(lvl))
            shape = tuple(lvl.startswith(":") for lvl in tpl.split("/"))
            constraints = sum(shape) - len(seen)
            entries.append(((shape, -constraints, order), name, re.compile("/".join(parts) + r"\Z")))
        entries.sort(key=lambda e: e[0])
        self.entries = [(name, rx) for _, name, rx in entries]

    def match(self, topic):
        for name, rx in self.entries:
            m = rx.match(topic)
            if m:
                return name, m.groupdict()
        return None

    def render(self, name, params=None, payload=None, defaults=None, subscribe=False):
        tpl = self.templates[name]
        scope = tpl.split("/")[3] if tpl.count("/") >= 3 else None
        record = payload.get("record") if payload else None

        def value(m):
            p = m.group(1)
            v = None
            if params and p in params:
                v = params[p]
            elif payload and isinstance(payload.get(p), (str, int)) and not isinstance(payload.get(p), bool):
                v = payload[p]
            elif isinstance(record, dict) and p in (f"{scope}Id", "sessionId", "agentId") \
                    and isinstance(record.get(p), (str, int)):
                v = record[p]
            elif defaults and p in defaults:
                v = defaults[p]
            if v is None:
                if subscribe:
                    return "+"
                raise ValueError(f"missing parameter {p!r} for {name} ({tpl})")
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise TypeError(f"parameter {p!r} must be str or int")
            v = str(v)
            if not v or _BAD.search(v):
                raise ValueError(f"invalid value {v!r} for parameter {p!r}")
            return v

        return _PARAM.sub(value, tpl)


# ---------------------------------------------------------------------------
# timing


def ns_per_op(fn, n, repeat=5):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter_ns() - t0)
    return best / n


def row(label, c_ns, anchors):
    cells = "  ".join(f"{a_label} {a_ns:10.0f} ns (x{a_ns / c_ns:5.1f})" for a_label, a_ns in anchors)
    print(f"  {label:52s} C {c_ns:6.0f} ns   {cells}")


def main():
    n = 20_000 if QUICK else 200_000
    data = topics.load_table()
    table = TopicTable.from_dict(data)
    rx = RegexTable(data)

    print(f"sermas_bus.topics micro-benchmark (Python {sys.version.split()[0]}, best of 5)")
    x = (1, 2)
    print(f"(every figure includes ~{ns_per_op(lambda: len(x), n):.0f} ns of loop + lambda + call overhead)")
    print("\nrender")
    cases = [
        ("dialogue.messages, explicit params", ("dialogue.messages", {"appId": "app1", "sessionId": "s-123"})),
        ("dialogue.agentSpeech, from payload + record",
         ("dialogue.agentSpeech", None, {"appId": "app1", "messageId": "m1", "chunkId": 7, "text": "hi",
                                         "record": {"sessionId": "s-123"}})),
        ("dialogue.messages, subscribe with defaults",
         ("dialogue.messages", None, None, {"appId": "app1"}, True)),
    ]
    for label, args in cases:
        assert table.render(*args) == rx.render(*args), label
        row(label, ns_per_op(lambda: table.render(*args), n),
            [("regex", ns_per_op(lambda: rx.render(*args), n // 4))])
    args = cases[0][1]
    row("  via topics.render() (Python wrapper)", ns_per_op(lambda: topics.render(*args), n),
        [("regex", ns_per_op(lambda: rx.render(*args), n // 4))])

    print("\nTopicTable.match (57 templates)")
    samples = [
        "app/app1/dialogue/messages/s-123",
        "app/app1/dialogue/tool/not-matching",
        "app/app1/dialogue/user-speech/stream/s/c",
        "app/app1/ui/status",
        "app/app1/platform/app/changed/app1",
        "system/platform/module/changed/m1",
        "app/app1/nothing/here",
    ]
    for topic in samples:
        assert table.match(topic) == rx.match(topic), topic
        row(topic, ns_per_op(lambda: table.match(topic), n),
            [("regex", ns_per_op(lambda: rx.match(topic), n // 10))])

    big = TopicTable.from_dict(data)
    for i in range(10_000):
        big.add(f"custom{i}.evt", f"app/:appId/custom{i}/evt/:id")
    topic = "app/app1/dialogue/user-speech/stream/s/c"
    row(f"{topic} (+10k templates)", ns_per_op(lambda: big.match(topic), n),
        [("regex(57)", ns_per_op(lambda: rx.match(topic), n // 10))])

    print("\nFilterTrie.match")
    for nfilters in (100, 10_000, 100_000):
        trie, py = FilterTrie(), TopicMatcher()
        filters = []
        for i in range(nfilters):
            f = f"app/app{i}/dialogue/messages/+"
            filters.append(f)
            trie.add(f, i)
            py[f] = i
        for f in ("app/+/dialogue/#", "$share/workers/app/+/ui/+", "app/app5/#"):
            filters.append(f)
            trie.add(f, f)
            py[f] = f
        topic = "app/app5/dialogue/messages/s1"
        assert sorted(map(str, trie.match(topic))) == sorted(map(str, py.iter_match(topic)))
        anchors = [("py trie", ns_per_op(lambda: list(py.iter_match(topic)), max(n // 20, 1000)))]
        scan_n = max(2, min(2000, 2_000_000 // nfilters))
        anchors.append(("scan", ns_per_op(lambda: [f for f in filters if topic_matches_sub(f, topic)],
                                          scan_n, repeat=3)))
        row(f"{nfilters} filters, 3 matches", ns_per_op(lambda: trie.match(topic), n), anchors)

    trie = FilterTrie()
    t0 = time.perf_counter_ns()
    for i in range(100_000):
        trie.add(f"app/app{i}/dialogue/messages/+", i)
    add_ns = (time.perf_counter_ns() - t0) / 100_000
    t0 = time.perf_counter_ns()
    for i in range(100_000):
        trie.remove(f"app/app{i}/dialogue/messages/+", i)
    rm_ns = (time.perf_counter_ns() - t0) / 100_000
    print(f"\nFilterTrie.add {add_ns:.0f} ns/op, remove {rm_ns:.0f} ns/op (100k filters, incl. f-string)")


if __name__ == "__main__":
    main()
