"""Iterating a queue.SimpleQueue with an idle time-out and a count limit."""
from __future__ import annotations

import queue
from typing import Any, Iterator, Optional


#: put into a queue being drained to end the iteration (the client closed)
END = object()


def drain(q: "queue.SimpleQueue[Any]", timeout: Optional[float], limit: Optional[int]) -> Iterator[Any]:
    """Yield items from q until ``timeout`` s pass without one (None: never),
    ``limit`` items were yielded (None: no limit) or END arrives."""
    count = 0
    while limit is None or count < limit:
        try:
            item = q.get(timeout=timeout)
        except queue.Empty:
            return
        if item is END:
            return
        count += 1
        yield item
