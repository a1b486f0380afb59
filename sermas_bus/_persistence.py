"""The durable outbox (``persistence=``): argument checks and the report.

The store itself is C (csrc/store.c, csrc/outbox_store.c): an append-only log
in the directory that holds every QoS>0 message ``publish()`` accepted until
the broker acknowledged it, and paho.mqtt.c's own session state (messages in
flight, inbound QoS 2).  See docs/reliability.md for what survives what.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Optional

from .errors import PersistenceRecoveryWarning

SYNC_MODES = {"write": 0, "fsync": 1}

#: default bound on what the store holds undelivered
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def open_store(conn: Any, directory: Any, sync: str, max_bytes: Optional[int]) -> Dict[str, Any]:
    """Make conn's outbox durable in directory; returns what was found there
    (restored messages, damage skipped).  Warns when the log was damaged."""
    if not isinstance(directory, (str, bytes, os.PathLike)):
        raise TypeError(f"persistence must be a directory path, not {type(directory).__name__}")
    if sync not in SYNC_MODES:
        raise ValueError(f"persistence_sync must be 'write' (survives a process crash) or 'fsync' "
                         f"(survives power loss), not {sync!r}")
    if max_bytes is None:
        max_bytes = DEFAULT_MAX_BYTES
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 4096:
        raise ValueError(f"persistence_max_bytes must be an int >= 4096, not {max_bytes!r}")
    report: Dict[str, Any] = conn.open_store(os.fspath(directory), SYNC_MODES[sync], max_bytes)
    report["directory"] = os.fspath(directory)
    if report["damaged_bytes"]:
        where = report["damaged_copy"] or "(the damaged file could not be kept)"
        what = "a torn last record (the process stopped while writing it)" if (
            report["torn_tail"] and report["damaged_spans"] == 1) else \
            f"{report['damaged_spans']} damaged span(s)"
        warnings.warn(
            f"persistence directory {report['directory']}: skipped {report['damaged_bytes']} bytes of "
            f"{what}; recovered {report['records']} good records ({report['messages']} undelivered "
            f"messages); the original is kept as {where}",
            PersistenceRecoveryWarning, stacklevel=3)
    return report
