"""Token rotation without a gap (SermasClient).

The broker takes a new token only at CONNECT, so a token refresh reconnects.
The MQTT 5 session keeps QoS 1 events across the reconnect, but the platform
publishes everything at QoS 0, and mosquitto drops QoS 0 events for a
session that is offline: the reconnect approach loses the platform's events
of the gap (the TypeScript client loses them the same way).

So a refresh is make-before-break:

1. a *bridge* connection opens with the new token and subscribes to the same
   filters (the same MQTT 5 subscription identifiers); what it receives is
   buffered, from a marker posted after its last SUBACK on;
2. the client's own connection reconnects with the new token (its session,
   subscriptions and outbox stay its own).  A marker posted into its queue
   between the disconnect and the new CONNECT splits what it delivers into
   *before* (delivered at once, and remembered) and *after* (held back);
3. the bridge unsubscribes and disconnects, its last messages drained; then,
   on the client's own loop thread, ``fill_gap`` finds what the bridge saw
   that the client did not, delivers that, then the held messages, in order.

What counts: with a kept session (MQTT 5) only QoS 0 deliveries, since the
session holds the rest; without one, everything.  Both connections get the
same events in the same order (one broker, the same filters), so the
bridge's first events are the tail of *before* and what the client got
*after* is a subsequence of the bridge's rest.  Events are compared by topic,
payload and QoS: an event repeated byte for byte inside the swap's overlap
is indistinguishable from its copy, and counted as such (the number of
deliveries stays right).
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Deque, List, Sequence, Tuple

Key = Tuple[bytes, bytes, int]

# how many of the client's own deliveries before the swap are remembered to
# align the bridge's first events with (the overlap is a few RTTs of traffic)
PRE_TAIL = 20000


def key_of(msg: Any) -> Key:
    """What identifies a delivery: the topic as received, payload, QoS."""
    return (bytes(msg._topic), bytes(msg.payload), int(msg.qos))


def fill_gap(bridge: Sequence[Key], before: Sequence[Key], after: Sequence[Key]) -> List[int]:
    """Indices into ``bridge`` of the events the client did not get.

    ``before``: the client's deliveries up to its disconnect (their tail
    overlaps the bridge's head); ``after``: its deliveries after the
    reconnect (a subsequence of the bridge's rest, plus what came after the
    bridge stopped).  All three hold only the events that count."""
    # the longest head of the bridge that is the tail of before
    overlap = 0
    for k in range(min(len(bridge), len(before)), 0, -1):
        if list(bridge[:k]) == list(before[len(before) - k:]):
            overlap = k
            break
    # what the client got after the reconnect, matched in order
    missing = []
    j = 0
    for i in range(overlap, len(bridge)):
        if j < len(after) and bridge[i] == after[j]:
            j += 1
        else:
            missing.append(i)
    return missing


class TokenSwap:
    """One swap's state.  ``hold(msg)`` runs on the client's loop thread for
    every message it delivers; ``mark_disconnected`` and ``finish`` are posted
    into the same queue, so they run there too, in order."""

    def __init__(self, counts: Callable[[Key], bool], deliver: Callable[[Any], None]):
        self._counts = counts
        self._deliver = deliver
        self._lock = threading.Lock()
        self.before: Deque[Key] = collections.deque(maxlen=PRE_TAIL)
        self.after_keys: List[Key] = []
        self.held: List[Any] = []
        self.bridge: List[Tuple[Key, Any]] = []
        self._bridge_on = False
        self._disconnected = False
        self.filled = 0

    # ---- the bridge's thread -------------------------------------------------

    def bridge_ready(self) -> None:
        """Posted into the bridge's queue after its last SUBACK."""
        with self._lock:
            self._bridge_on = True

    def on_bridge(self, msg: Any) -> None:
        with self._lock:
            if not self._bridge_on:
                return      # before every filter was active: the client has these
            key = key_of(msg)
            if self._counts(key):
                self.bridge.append((key, msg))

    # ---- the client's loop thread ---------------------------------------------

    def hold(self, msg: Any) -> bool:
        """True when the message is held back (after the disconnect)."""
        if not self._disconnected:
            key = key_of(msg)
            if self._counts(key):
                self.before.append(key)
            return False
        self.held.append(msg)
        key = key_of(msg)
        if self._counts(key):
            self.after_keys.append(key)
        return True

    def mark_disconnected(self) -> None:
        self._disconnected = True

    def finish(self) -> None:
        """Deliver what only the bridge saw, then what was held, in order."""
        with self._lock:
            bridge = list(self.bridge)
        keys = [k for k, _m in bridge]
        for i in fill_gap(keys, list(self.before), self.after_keys):
            self.filled += 1
            self._deliver(bridge[i][1])
        held, self.held = self.held, []
        for msg in held:
            self._deliver(msg)

    def release(self) -> None:
        """The swap failed half-way: deliver what was held (no gap fill)."""
        held, self.held = self.held, []
        for msg in held:
            self._deliver(msg)


def qos0_only(key: Key) -> bool:
    return key[2] == 0


def everything(key: Key) -> bool:
    return True


def pick_counts(session_kept: bool) -> Callable[[Key], bool]:
    return qos0_only if session_kept else everything


__all__ = ["TokenSwap", "fill_gap", "pick_counts"]
