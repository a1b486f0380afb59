"""MQTT topic filter matching and validation.

``topic_matches_sub`` and ``TopicMatcher`` follow paho-mqtt's semantics (a
filter is split on ``/``; ``+`` matches exactly one level, possibly empty;
a final ``#`` matches the parent level and everything below it; a filter
starting with a wildcard does not match topics starting with ``$``), plus one
extension: a shared subscription ``$share/<group>/<filter>`` matches like its
``<filter>``.  Malformed filters are not rejected by the matchers, they just
match literally as in paho; use ``validate_topic_filter`` /
``validate_topic_name`` to reject them with a clear error.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Generic, Iterator, List, Optional, Tuple, TypeVar, Union

__all__ = [
    "filter_covers",
    "topic_matches_sub",
    "validate_topic_filter",
    "validate_topic_name",
    "TopicMatcher",
    "MQTTMatcher",
]

_MAX_TOPIC_BYTES = 65535
_SHARE_PREFIX = "$share/"

V = TypeVar("V")


def _as_text(value: Union[str, bytes, bytearray], what: str) -> str:
    """Return ``value`` as str, decoding UTF-8 bytes; TypeError/ValueError otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what} {bytes(value)!r} is not valid UTF-8 ({exc})") from None
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def _strip_share(sub: str) -> str:
    """``$share/<group>/<filter>`` -> ``<filter>``; anything else unchanged."""
    if sub.startswith(_SHARE_PREFIX):
        parts = sub.split("/", 2)
        if len(parts) == 3:
            return parts[2]
    return sub


def topic_matches_sub(sub: Union[str, bytes], topic: Union[str, bytes]) -> bool:
    """Return True if the topic name ``topic`` matches the subscription filter ``sub``.

    ``"foo/bar"`` matches ``"foo/#"``, ``"+/bar"`` and ``"foo/bar"``;
    ``"$SYS/x"`` does not match ``"#"`` or ``"+/x"``.
    """
    sub_levels = _strip_share(_as_text(sub, "topic filter")).split("/")
    topic_text = _as_text(topic, "topic")
    topic_levels = topic_text.split("/")
    if topic_text.startswith("$") and sub_levels[0] in ("+", "#"):
        return False
    last = len(sub_levels) - 1
    n_topic = len(topic_levels)
    for i, level in enumerate(sub_levels):
        if level == "#" and i == last:
            return True  # also matches the parent level: "a/#" matches "a"
        if i >= n_topic:
            return False
        if level != "+" and level != topic_levels[i]:
            return False
    return len(sub_levels) == n_topic


def _check_common(text: str, what: str) -> None:
    if not text:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in text:
        raise ValueError(f"{what} {text!r} contains a NUL character, which MQTT forbids")
    bad = next((c for c in text if "\x01" <= c <= "\x1f" or "\x7f" <= c <= "\x9f"), None)
    if bad is not None:
        raise ValueError(f"{what} {text!r} contains the control character U+{ord(bad):04X}, which MQTT "
                         "topics should not hold (mosquitto drops the connection of a client that sends one)")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} {text!r} cannot be encoded as UTF-8 ({exc})") from None
    if size > _MAX_TOPIC_BYTES:
        raise ValueError(f"{what} is {size} bytes in UTF-8; the maximum is {_MAX_TOPIC_BYTES}")


def validate_topic_name(topic: Union[str, bytes]) -> str:
    """Check a topic name to publish to and return it as str.

    Raises ValueError if it is empty, contains ``+`` or ``#``, contains NUL or
    is longer than 65535 UTF-8 bytes; TypeError if it is not str or bytes.
    """
    text = _as_text(topic, "topic")
    _check_common(text, "topic")
    if "+" in text or "#" in text:
        raise ValueError(f"topic {text!r} contains a wildcard ('+' or '#'); wildcards are only "
                         "allowed in subscription filters, not in topics you publish to")
    return text


def _check_filter_levels(levels: List[str], shown: str) -> None:
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level:
            if level != "#":
                raise ValueError(f"topic filter {shown!r}: '#' must occupy a whole level "
                                 f"(found {level!r}); write e.g. 'a/#'")
            if i != last:
                raise ValueError(f"topic filter {shown!r}: '#' is only allowed as the last level")
        elif "+" in level and level != "+":
            raise ValueError(f"topic filter {shown!r}: '+' must occupy a whole level "
                             f"(found {level!r}); write e.g. 'a/+/b'")


def validate_topic_filter(sub: Union[str, bytes]) -> str:
    """Check a subscription filter and return it as str.

    Raises ValueError if it is empty, has a ``+`` or ``#`` that is not a whole
    level, has ``#`` anywhere but the last level, contains NUL, is longer than
    65535 UTF-8 bytes, or is a malformed ``$share/<group>/<filter>``; TypeError
    if it is not str or bytes.
    """
    text = _as_text(sub, "topic filter")
    _check_common(text, "topic filter")
    if text.startswith(_SHARE_PREFIX) or text == "$share":
        parts = text.split("/", 2)
        if len(parts) < 3 or not parts[1]:
            raise ValueError(f"shared subscription {text!r} must have the form "
                             "'$share/<group>/<filter>' with a non-empty group")
        if "+" in parts[1] or "#" in parts[1]:
            raise ValueError(f"shared subscription {text!r}: the group name must not contain '+' or '#'")
        if not parts[2]:
            raise ValueError(f"shared subscription {text!r} has an empty topic filter after the group")
        _check_filter_levels(parts[2].split("/"), text)
    else:
        _check_filter_levels(text.split("/"), text)
    return text


def filter_covers(wide: str, narrow: str) -> bool:
    """True when every topic matching filter ``narrow`` also matches filter
    ``wide`` (both valid, neither a ``$share/...`` filter).  ``a/#`` covers
    ``a``, ``a/+`` and ``a/b/#``; ``+/b`` covers ``a/b``; wildcards in the
    first level do not cover ``$``-topics."""
    if narrow.startswith("$") and wide[:1] in ("+", "#"):
        return False
    w, n = wide.split("/"), narrow.split("/")
    for i, level in enumerate(w):
        if level == "#":
            return True
        if i >= len(n) or n[i] == "#":
            return False
        if level != "+" and (n[i] == "+" or n[i] != level):
            return False
    return len(w) == len(n)


class _Node:
    """A trie level: children by level string, and the values of filters ending here."""

    __slots__ = ("children", "entries")

    def __init__(self) -> None:
        self.children: Dict[str, _Node] = {}
        self.entries: Dict[str, Any] = {}  # full filter string -> value


class TopicMatcher(Generic[V]):
    """A mapping from topic filters to values, with fast matching of a topic.

    ``m["a/+/c"] = v`` stores a value; ``m.iter_match("a/b/c")`` yields the
    value of every stored filter that matches the topic, with the same rules as
    ``topic_matches_sub`` (so ``$share/<group>/<filter>`` keys match like
    ``<filter>``).  Matching walks a trie of levels, so its cost depends on the
    topic depth and the wildcards on the way, not on the number of filters.

    Thread safety: every operation, including the matching done by
    ``iter_match``, runs under one re-entrant lock; ``iter_match`` collects the
    matching values under the lock and returns an iterator over that snapshot,
    so callers may add or remove filters (from any thread, or while iterating)
    without affecting an iteration already started.
    """

    def __init__(self) -> None:
        self._root = _Node()
        self._count = 0
        self._lock = threading.RLock()

    @staticmethod
    def _levels(key: str) -> List[str]:
        if not isinstance(key, str):
            raise TypeError(f"topic filter must be str, not {type(key).__name__}")
        return _strip_share(key).split("/")

    def _find(self, key: str) -> Optional[_Node]:
        node = self._root
        for level in self._levels(key):
            node = node.children.get(level)  # type: ignore[assignment]
            if node is None:
                return None
        return node

    def __setitem__(self, key: str, value: V) -> None:
        """Store ``value`` for the filter ``key`` (replacing any previous value)."""
        levels = self._levels(key)
        with self._lock:
            node = self._root
            for level in levels:
                child = node.children.get(level)
                if child is None:
                    child = node.children[level] = _Node()
                node = child
            old = node.entries.get(key, _MISSING)
            if old is _MISSING:
                self._count += 1
            node.entries[key] = value
        del old  # drop the replaced value outside the lock

    def __getitem__(self, key: str) -> V:
        """The value stored for exactly the filter ``key``; KeyError if none."""
        with self._lock:
            node = self._find(key)
            if node is not None and key in node.entries:
                return node.entries[key]
        raise KeyError(key)

    def get(self, key: str, default: Optional[V] = None) -> Optional[V]:
        """The value stored for ``key``, or ``default``."""
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._lock:
            node = self._find(key)
            return node is not None and key in node.entries

    def __delitem__(self, key: str) -> None:
        """Remove the filter ``key``; KeyError if it is not stored."""
        levels = self._levels(key)
        with self._lock:
            path: List[Tuple[_Node, str]] = []
            node = self._root
            for level in levels:
                child = node.children.get(level)
                if child is None:
                    raise KeyError(key)
                path.append((node, level))
                node = child
            if key not in node.entries:
                raise KeyError(key)
            old = node.entries.pop(key)
            self._count -= 1
            # prune levels that no longer lead to any filter
            for parent, level in reversed(path):
                child = parent.children[level]
                if child.children or child.entries:
                    break
                del parent.children[level]
        del old  # drop the removed value outside the lock

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def keys(self) -> List[str]:
        """All stored filters (a snapshot)."""
        with self._lock:
            found: List[str] = []
            stack = [self._root]
            while stack:
                node = stack.pop()
                found.extend(node.entries)
                stack.extend(node.children.values())
        return found

    def iter_match(self, topic: Union[str, bytes]) -> Iterator[V]:
        """Iterate over the values of all stored filters matching ``topic``.

        Each stored filter is reported at most once.
        """
        levels = _as_text(topic, "topic").split("/")
        dollar = levels[0].startswith("$")
        n = len(levels)
        matched: List[Any] = []
        reported: set = set()  # ids of nodes whose values are already in `matched`

        def report(node: _Node) -> None:
            if node.entries and id(node) not in reported:
                reported.add(id(node))
                matched.extend(node.entries.values())

        with self._lock:
            # Depth-first walk, in paho's order: literal level, then '+', then '#'.
            # Items are (node, index of the next topic level), or (node, -1) to
            # report the values of a '#' node.  No recursion: topics may be deep.
            stack: List[Tuple[_Node, int]] = [(self._root, 0)]
            while stack:
                node, i = stack.pop()
                if i < 0:
                    report(node)
                    continue
                children = node.children
                wild_ok = i > 0 or not dollar  # no leading wildcard for "$..." topics
                hash_child = children.get("#") if wild_ok else None
                if i == n:
                    report(node)
                    if hash_child is not None:
                        report(hash_child)  # "a/#" matches "a"
                    continue
                if hash_child is not None and hash_child.entries:
                    stack.append((hash_child, -1))
                if wild_ok:
                    plus = children.get("+")
                    if plus is not None:
                        stack.append((plus, i + 1))
                level = levels[i]
                if not (wild_ok and level == "+"):  # else the same node as above
                    child = children.get(level)
                    if child is not None:
                        stack.append((child, i + 1))
        return iter(matched)


_MISSING: Any = object()

MQTTMatcher = TopicMatcher
"""paho's name for the filter trie."""
