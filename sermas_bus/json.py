"""Fast JSON for SERMAS event payloads (encoder and decoder in C, ``sermas_bus._core``).

``dumps(obj) -> bytes``
    Compact UTF-8 JSON, byte-for-byte what
    ``json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()`` gives for
    everything both accept (floats written as ``repr()`` writes them, int/float/str
    subclasses as json writes them, the same escapes). In addition it encodes

    - ``datetime.datetime``: aware UTC (``utcoffset()`` zero) like JavaScript's
      ``Date.toISOString()``, ``2024-05-01T12:00:00.123Z`` (always milliseconds,
      microseconds truncated); other offsets as ``isoformat()``,
      ``2024-05-01T14:00:00+02:00``; naive datetimes as ``isoformat()`` without any
      zone, ``2024-05-01T12:00:00.123456`` (no zone is invented: a JavaScript reader
      takes such a string as local time);
    - ``datetime.date`` as ``2024-05-01``;
    - ``enum.Enum`` members as their value (encoded in turn);
    - dataclass instances as objects of their fields (``dataclasses.fields()`` order).

    Refused, with the place named (``payload["llm"]["temperature"]``):
    NaN and infinities (ValueError), dict keys that are not str (TypeError: json.dumps
    would coerce them, we do not), circular references (ValueError), str with lone
    surrogates (ValueError), nesting deeper than ``MAX_DEPTH`` (ValueError),
    bytes/bytearray/memoryview (TypeError: bytes are sent raw, as the payload itself),
    and any other type (TypeError naming it).

``loads(data) -> object``
    ``data`` is UTF-8 JSON as bytes, bytearray, memoryview or str. Integers stay
    ints, exact, up to the interpreter's limit for integer/string conversion
    (``sys.get_int_max_str_digits()``, 4,300 digits by default): longer ones
    raise ``JSONDecodeError``, as ``json.loads`` raises ValueError (the guard
    against quadratic-time conversion; ``sys.set_int_max_str_digits()`` raises
    it, and ``dumps`` follows the same limit). Numbers with a fraction or exponent become floats
    rounded exactly as ``float()`` rounds them (so ``1e400`` is ``inf``), strings
    become str (all JSON escapes; an escaped lone surrogate is kept, as json.loads
    keeps it), the last of duplicate keys wins. Invalid JSON, invalid UTF-8, a
    byte-order mark, NaN/Infinity literals or nesting deeper than ``MAX_DEPTH``
    raise ``JSONDecodeError`` (a ValueError) with ``pos`` and ``path``; the message
    layer then hands the payload over as bytes.

Both run with the GIL held (events are small) and are safe to call from any thread.
"""
from ._core import JSON_MAX_DEPTH as MAX_DEPTH
from ._core import JSONDecodeError
from ._core import json_dumps as dumps
from ._core import json_loads as loads

__all__ = ["dumps", "loads", "JSONDecodeError", "MAX_DEPTH"]
