"""MQTT 5 properties, compatible with ``paho.mqtt.properties.Properties``.

Properties are set and read as attributes named after the MQTT 5 property
without spaces::

    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "replies/42"
    props.UserProperty = ("tenant", "a")     # accumulates
    props.UserProperty = [("k", "v")]        # -> [("tenant", "a"), ("k", "v")]

A property that is not set is simply absent (``hasattr`` is False).  Values are
checked when assigned: an unknown name or one not allowed in the packet type
raises ``ValueError``, a value of the wrong Python type raises ``TypeError``
and an out-of-range value raises ``ValueError``.

``to_pairs()`` / ``from_pairs()`` convert to and from the flat
``[(identifier, value), ...]`` form that the C core exchanges.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

from .packettypes import PacketTypes

__all__ = ["Properties", "VariableByteIntegers"]

# Value type codes; the index in this list is paho's type number.
_TYPES = ["Byte", "Two Byte Integer", "Four Byte Integer", "Variable Byte Integer",
          "Binary Data", "UTF-8 Encoded String", "UTF-8 String Pair"]
_BYTE, _INT16, _INT32, _VARINT, _BINARY, _STRING, _PAIR = range(7)

_VARINT_MAX = 268_435_455
_UINT32_MAX = 0xFFFF_FFFF
_LEN_MAX = 0xFFFF  # length prefix of strings and binary data


class _Spec(NamedTuple):
    ident: int
    name: str          # with spaces, e.g. "Response Topic"
    key: str           # attribute name, e.g. "ResponseTopic"
    kind: int          # one of _BYTE .. _PAIR
    packets: Tuple[int, ...]
    low: int           # inclusive range for integer kinds
    high: int
    multiple: bool     # may appear more than once (stored as a list)


_P = PacketTypes
_WILL = _P.WILLMESSAGE
_REASON_STRING_PACKETS = (_P.CONNACK, _P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP,
                          _P.SUBACK, _P.UNSUBACK, _P.DISCONNECT, _P.AUTH)
_USER_PROPERTY_PACKETS = (_P.CONNECT, _P.CONNACK, _P.PUBLISH, _P.PUBACK, _P.PUBREC,
                          _P.PUBREL, _P.PUBCOMP, _P.SUBSCRIBE, _P.SUBACK, _P.UNSUBSCRIBE,
                          _P.UNSUBACK, _P.DISCONNECT, _P.AUTH, _WILL)


def _spec(ident: int, name: str, kind: int, packets: Tuple[int, ...],
          low: int = 0, high: Optional[int] = None, multiple: bool = False) -> _Spec:
    if high is None:
        high = {_BYTE: 0xFF, _INT16: 0xFFFF, _INT32: _UINT32_MAX, _VARINT: _VARINT_MAX}.get(kind, 0)
    return _Spec(ident, name, name.replace(" ", ""), kind, packets, low, high, multiple)


# MQTT 5.0 standard, section 2.2.2.2, in identifier order.
_SPECS: Tuple[_Spec, ...] = (
    _spec(1, "Payload Format Indicator", _BYTE, (_P.PUBLISH, _WILL), 0, 1),
    _spec(2, "Message Expiry Interval", _INT32, (_P.PUBLISH, _WILL)),
    _spec(3, "Content Type", _STRING, (_P.PUBLISH, _WILL)),
    _spec(8, "Response Topic", _STRING, (_P.PUBLISH, _WILL)),
    _spec(9, "Correlation Data", _BINARY, (_P.PUBLISH, _WILL)),
    _spec(11, "Subscription Identifier", _VARINT, (_P.PUBLISH, _P.SUBSCRIBE), 1, multiple=True),
    _spec(17, "Session Expiry Interval", _INT32, (_P.CONNECT, _P.CONNACK, _P.DISCONNECT)),
    _spec(18, "Assigned Client Identifier", _STRING, (_P.CONNACK,)),
    _spec(19, "Server Keep Alive", _INT16, (_P.CONNACK,)),
    _spec(21, "Authentication Method", _STRING, (_P.CONNECT, _P.CONNACK, _P.AUTH)),
    _spec(22, "Authentication Data", _BINARY, (_P.CONNECT, _P.CONNACK, _P.AUTH)),
    _spec(23, "Request Problem Information", _BYTE, (_P.CONNECT,), 0, 1),
    _spec(24, "Will Delay Interval", _INT32, (_WILL,)),
    _spec(25, "Request Response Information", _BYTE, (_P.CONNECT,), 0, 1),
    _spec(26, "Response Information", _STRING, (_P.CONNACK,)),
    _spec(28, "Server Reference", _STRING, (_P.CONNACK, _P.DISCONNECT)),
    _spec(31, "Reason String", _STRING, _REASON_STRING_PACKETS),
    _spec(33, "Receive Maximum", _INT16, (_P.CONNECT, _P.CONNACK), 1),
    _spec(34, "Topic Alias Maximum", _INT16, (_P.CONNECT, _P.CONNACK)),
    _spec(35, "Topic Alias", _INT16, (_P.PUBLISH,), 1),
    _spec(36, "Maximum QoS", _BYTE, (_P.CONNACK,), 0, 1),
    _spec(37, "Retain Available", _BYTE, (_P.CONNACK,), 0, 1),
    _spec(38, "User Property", _PAIR, _USER_PROPERTY_PACKETS, multiple=True),
    _spec(39, "Maximum Packet Size", _INT32, (_P.CONNECT, _P.CONNACK), 1),
    _spec(40, "Wildcard Subscription Available", _BYTE, (_P.CONNACK,), 0, 1),
    _spec(41, "Subscription Identifier Available", _BYTE, (_P.CONNACK,), 0, 1),
    _spec(42, "Shared Subscription Available", _BYTE, (_P.CONNACK,), 0, 1),
)

_BY_KEY: Dict[str, _Spec] = {s.key: s for s in _SPECS}
_BY_IDENT: Dict[int, _Spec] = {s.ident: s for s in _SPECS}
# Attributes that are not properties (paho lets these be assigned freely).
_PRIVATE = frozenset(("packetType", "types", "names", "properties"))


def _present(obj: Any) -> List[Tuple[_Spec, Any]]:
    """(spec, stored value) of every property set on ``obj``, in identifier order.

    Reads the instance dict, so it also works on a paho ``Properties`` object.
    """
    found = [(_BY_KEY[k], v) for k, v in vars(obj).items() if k in _BY_KEY]
    found.sort(key=lambda item: item[0].ident)
    return found


def _packet_label(packet_type: Any) -> str:
    if packet_type == PacketTypes.WILLMESSAGE:
        return "Will message"
    if isinstance(packet_type, int) and 0 <= packet_type < len(PacketTypes.Names):
        return PacketTypes.Names[packet_type]
    return f"unknown packet type {packet_type!r}"


def _check_int(spec: _Spec, value: Any) -> int:
    if not isinstance(value, int):
        raise TypeError(f"property {spec.key} takes an int, not {type(value).__name__}")
    if not spec.low <= value <= spec.high:
        raise ValueError(f"property {spec.key} must be in the range {spec.low}-{spec.high}, got {value}")
    return int(value)


def _check_str(what: str, value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what} must be valid UTF-8 ({exc})") from None
    elif not isinstance(value, str):
        raise TypeError(f"{what} takes a str, not {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} cannot be encoded as UTF-8 ({exc})") from None
    if size > _LEN_MAX:
        raise ValueError(f"{what} is {size} bytes in UTF-8; the maximum is {_LEN_MAX}")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain the NUL character (MQTT forbids U+0000 in strings)")
    return str(value)


def _check_binary(spec: _Spec, value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"property {spec.key} takes bytes, not {type(value).__name__}")
    value = bytes(value)
    if len(value) > _LEN_MAX:
        raise ValueError(f"property {spec.key} is {len(value)} bytes; the maximum is {_LEN_MAX}")
    return value


def _check_pair(spec: _Spec, value: Any) -> Tuple[str, str]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"property {spec.key} takes a (name, value) pair of str or a list of "
                        f"such pairs, not {value!r}")
    return (_check_str(f"{spec.key} name", value[0]), _check_str(f"{spec.key} value", value[1]))


def _check_one(spec: _Spec, value: Any) -> Any:
    kind = spec.kind
    if kind == _STRING:
        return _check_str(f"property {spec.key}", value)
    if kind == _BINARY:
        return _check_binary(spec, value)
    if kind == _PAIR:
        return _check_pair(spec, value)
    return _check_int(spec, value)


class Properties:
    """MQTT 5 properties of one packet type (see the module docstring).

    Class attributes ``names`` (spaced name -> identifier), ``properties``
    (identifier -> (type number, allowed packet types)) and ``types`` mirror
    paho's.  Two instances are equal when they have the same packet type and
    the same property values.
    """

    types: List[str] = list(_TYPES)
    names: Dict[str, int] = {s.name: s.ident for s in _SPECS}
    properties: Dict[int, Tuple[int, List[int]]] = {s.ident: (s.kind, list(s.packets)) for s in _SPECS}

    def __init__(self, packetType: int):
        object.__setattr__(self, "packetType", packetType)

    # -- attribute access -------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        key = name.replace(" ", "")
        if key in _PRIVATE:
            object.__setattr__(self, key, value)
            return
        spec = _BY_KEY.get(key)
        if spec is None:
            raise ValueError(f"{name!r} is not an MQTT 5 property name; use one of: "
                             f"{', '.join(_BY_KEY)}")
        if self.packetType not in spec.packets:
            allowed = ", ".join(_packet_label(p) for p in spec.packets)
            raise ValueError(f"property {key} is not allowed in {_packet_label(self.packetType)} "
                             f"packets (it is allowed in: {allowed})")
        if spec.multiple:
            items = value if isinstance(value, list) else [value]
            checked = [_check_one(spec, item) for item in items]
            previous = self.__dict__.get(key)
            if previous is not None:
                checked = list(previous) + checked
            object.__setattr__(self, key, checked)
        else:
            object.__setattr__(self, key, _check_one(spec, value))

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name.replace(" ", ""))

    # -- paho-compatible helpers ----------------------------------------------

    def allowsMultiple(self, compressedName: str) -> bool:
        """True for properties that may repeat (stored as a list)."""
        spec = _BY_KEY.get(compressedName.replace(" ", ""))
        return spec is not None and spec.multiple

    def getIdentFromName(self, compressedName: str) -> int:
        """Identifier of a property name (with or without spaces); -1 if unknown."""
        spec = _BY_KEY.get(compressedName.replace(" ", ""))
        return spec.ident if spec is not None else -1

    def getNameFromIdent(self, identifier: int) -> Optional[str]:
        """Spaced name of a property identifier (``"Response Topic"``); None if unknown."""
        spec = _BY_IDENT.get(identifier)
        return spec.name if spec is not None else None

    def _present(self) -> List[Tuple[_Spec, Any]]:
        return _present(self)

    def isEmpty(self) -> bool:
        """True when no property is set."""
        return not any(k in _BY_KEY for k in self.__dict__)

    def clear(self) -> None:
        """Remove every property (the packet type is kept)."""
        for key in [k for k in self.__dict__ if k in _BY_KEY]:
            del self.__dict__[key]

    def json(self) -> Dict[str, Any]:
        """Dict of the properties set; binary values are given as hex strings."""
        return {spec.key: (value.hex() if spec.kind == _BINARY and isinstance(value, bytes) else value)
                for spec, value in self._present()}

    def __str__(self) -> str:
        return "[" + ", ".join(f"{spec.key} : {value}" for spec, value in self._present()) + "]"

    def __repr__(self) -> str:
        return f"Properties({_packet_label(self.packetType)}, {self})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Properties):
            return NotImplemented
        return self.packetType == other.packetType and self._present() == other._present()

    __hash__ = None  # type: ignore[assignment]  # mutable

    # -- bridge to the C core -------------------------------------------------

    def to_pairs(self) -> List[Tuple[int, Any]]:
        """Flatten to ``[(identifier, value), ...]`` in identifier order.

        Repeating properties give one pair per value; a user property value is
        a ``(name, value)`` tuple of str.  Values are returned as stored (they
        were checked on assignment).
        """
        pairs: List[Tuple[int, Any]] = []
        for spec, value in _present(self):
            if spec.multiple and isinstance(value, list):
                pairs.extend((spec.ident, item) for item in value)
            else:
                pairs.append((spec.ident, value))
        return pairs

    @classmethod
    def from_pairs(cls, packet_type: int, pairs: Iterable[Tuple[int, Any]]) -> "Properties":
        """Build from ``[(identifier, value), ...]`` as decoded from the network.

        The inverse of ``to_pairs()``.  Values are trusted (no range or
        packet-type check); unknown identifiers are skipped, so this does not
        raise on unexpected input from a broker.
        """
        props = cls.__new__(cls)
        store = props.__dict__
        store["packetType"] = packet_type
        for ident, value in pairs:
            spec = _BY_IDENT.get(ident)
            if spec is None:
                continue
            if spec.kind == _PAIR:
                value = tuple(value)
            elif spec.kind == _BINARY and not isinstance(value, bytes):
                value = bytes(value)
            if spec.multiple:
                store.setdefault(spec.key, []).append(value)
            else:
                store[spec.key] = value
        return props

    # -- wire format (paho's pack/unpack) --------------------------------------

    def pack(self) -> bytes:
        """Encode as the MQTT 5 property block (length prefix included)."""
        body = bytearray()
        for ident, value in self.to_pairs():
            spec = _BY_IDENT[ident]
            body += VariableByteIntegers.encode(ident)
            body += _encode_value(spec.kind, value)
        return VariableByteIntegers.encode(len(body)) + bytes(body)

    def unpack(self, buffer: Union[bytes, bytearray, memoryview]) -> Tuple["Properties", int]:
        """Decode a property block into this object; return ``(self, bytes used)``.

        Raises ``ValueError`` for a malformed block (truncated data, unknown
        identifier, a non-repeating property given twice, invalid UTF-8).
        """
        self.clear()
        data = bytes(buffer)
        length, pos = VariableByteIntegers.decode(data)
        end = pos + length
        if end > len(data):
            raise ValueError(f"property block says {length} bytes but only {len(data) - pos} are present")
        seen = set()
        pairs: List[Tuple[int, Any]] = []
        while pos < end:
            ident, used = VariableByteIntegers.decode(data[pos:end])
            pos += used
            spec = _BY_IDENT.get(ident)
            if spec is None:
                raise ValueError(f"unknown property identifier {ident}")
            if ident in seen and not spec.multiple:
                raise ValueError(f"property {spec.key} must not appear more than once")
            seen.add(ident)
            value, pos = _decode_value(spec, data, pos, end)
            pairs.append((ident, value))
        decoded = type(self).from_pairs(self.packetType, pairs)
        self.__dict__.update((k, v) for k, v in decoded.__dict__.items() if k in _BY_KEY)
        return self, end


def _encode_str(value: Union[str, bytes]) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return struct.pack("!H", len(raw)) + raw


def _encode_value(kind: int, value: Any) -> bytes:
    if kind == _BYTE:
        return bytes([value])
    if kind == _INT16:
        return struct.pack("!H", value)
    if kind == _INT32:
        return struct.pack("!L", value)
    if kind == _VARINT:
        return VariableByteIntegers.encode(value)
    if kind == _BINARY:
        return struct.pack("!H", len(value)) + bytes(value)
    if kind == _STRING:
        return _encode_str(value)
    return _encode_str(value[0]) + _encode_str(value[1])


def _take(data: bytes, pos: int, size: int, end: int, what: str) -> bytes:
    if pos + size > end:
        raise ValueError(f"property block truncated while reading {what}")
    return data[pos:pos + size]


def _decode_str(data: bytes, pos: int, end: int, what: str) -> Tuple[str, int]:
    (size,) = struct.unpack("!H", _take(data, pos, 2, end, what))
    raw = _take(data, pos + 2, size, end, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not valid UTF-8 ({exc})") from None
    return text, pos + 2 + size


def _decode_value(spec: _Spec, data: bytes, pos: int, end: int) -> Tuple[Any, int]:
    kind, what = spec.kind, f"property {spec.key}"
    if kind == _BYTE:
        return _take(data, pos, 1, end, what)[0], pos + 1
    if kind == _INT16:
        return struct.unpack("!H", _take(data, pos, 2, end, what))[0], pos + 2
    if kind == _INT32:
        return struct.unpack("!L", _take(data, pos, 4, end, what))[0], pos + 4
    if kind == _VARINT:
        value, used = VariableByteIntegers.decode(data[pos:end])
        return value, pos + used
    if kind == _BINARY:
        (size,) = struct.unpack("!H", _take(data, pos, 2, end, what))
        return _take(data, pos + 2, size, end, what), pos + 2 + size
    if kind == _STRING:
        return _decode_str(data, pos, end, what)
    name, pos = _decode_str(data, pos, end, what + " name")
    value, pos = _decode_str(data, pos, end, what + " value")
    return (name, value), pos


class VariableByteIntegers:
    """MQTT variable byte integer codec (0 .. 268435455, 1 to 4 bytes)."""

    @staticmethod
    def encode(x: int) -> bytes:
        """Encode ``x``; ValueError when it is out of range."""
        if not 0 <= x <= _VARINT_MAX:
            raise ValueError(f"variable byte integer must be in the range 0-{_VARINT_MAX}, got {x}")
        out = bytearray()
        while True:
            digit, x = x & 0x7F, x >> 7
            out.append(digit | 0x80 if x else digit)
            if not x:
                return bytes(out)

    @staticmethod
    def decode(buffer: Union[bytes, bytearray]) -> Tuple[int, int]:
        """Decode from the start of ``buffer``; return ``(value, bytes used)``.

        ValueError when the data ends early or the encoding is longer than 4 bytes.
        """
        value = 0
        for i in range(4):
            if i >= len(buffer):
                raise ValueError("not enough data to decode a variable byte integer")
            digit = buffer[i]
            value |= (digit & 0x7F) << (7 * i)
            if not digit & 0x80:
                return value, i + 1
        raise ValueError("variable byte integer is longer than 4 bytes")
