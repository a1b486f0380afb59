"""Calling user callbacks with the signature they were written for.

paho-mqtt has two callback API versions (VERSION1 and VERSION2) and, for
VERSION1, different argument lists under MQTT 3.1.1 and MQTT 5.  Programs in
the wild mix them (the SERMAS docs even use ``def on_message(msg)``).  We look
at how many positional parameters a callback takes when it is assigned and
call it with the argument list that fits: the declared version first, then the
other one, then a prefix (``on_message(msg)`` gets just the message).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Sequence, Tuple

# name -> (accepted lengths, in a readable form for errors)
_SIGNATURES = {
    "on_connect": "(client, userdata, flags, reason_code, properties) or (client, userdata, flags, rc)",
    "on_disconnect": "(client, userdata, disconnect_flags, reason_code, properties) or (client, userdata, rc)",
    "on_subscribe": "(client, userdata, mid, reason_code_list, properties) or (client, userdata, mid, granted_qos)",
    "on_unsubscribe": "(client, userdata, mid, reason_code_list, properties) or (client, userdata, mid)",
    "on_publish": "(client, userdata, mid, reason_code, properties) or (client, userdata, mid)",
    "on_message": "(client, userdata, message) or (message)",
    "on_log": "(client, userdata, level, buf)",
    "on_connect_fail": "(client, userdata)",
    "on_pre_connect": "(client, userdata)",
}
_MAX_ARGS = 5


def positional_arity(func: Callable[..., Any]) -> Optional[int]:
    """How many positional arguments func accepts; None if any number."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    n = 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
    return n


class Callback:
    """A user callable with its arity, ready to be called with the right args."""

    __slots__ = ("func", "name", "arity")

    def __init__(self, name: str, func: Callable[..., Any]):
        if not callable(func):
            raise TypeError(f"{name} must be callable or None, not {type(func).__name__}")
        self.func = func
        self.name = name
        self.arity = positional_arity(func)
        if self.arity is not None and (self.arity > _MAX_ARGS or self.arity == 0):
            raise TypeError(
                f"{name} takes {self.arity} positional arguments; expected {_SIGNATURES.get(name, '')}")
        if name == "on_message" and self.arity not in (None, 1, 3):
            raise TypeError(f"on_message takes {self.arity} positional arguments; expected {_SIGNATURES[name]}")

    def call(self, primary: Sequence[Any], alternative: Optional[Sequence[Any]] = None) -> Any:
        """Call with ``primary`` (the declared API version's arguments) if it
        fits, else ``alternative`` (the other version's), else a prefix."""
        n = self.arity
        if n is None or n == len(primary):
            return self.func(*primary)
        if alternative is not None and n == len(alternative):
            return self.func(*alternative)
        if self.name == "on_message" and n == 1:
            return self.func(primary[-1])
        if n < len(primary):
            return self.func(*primary[:n])
        raise TypeError(f"{self.name} takes {n} arguments; expected {_SIGNATURES.get(self.name, '')}")

    def message_prefix(self, client: Any, userdata: Any) -> Tuple[Any, ...]:
        """Leading arguments for the C fast path, which calls func(*prefix, msg)."""
        if self.arity == 1:
            return ()
        return (client, userdata)
