"""MQTT 5 reason codes, compatible with ``paho.mqtt.reasoncodes.ReasonCode``.

A reason code is a one-byte value whose name depends on the packet it travels
in (0x00 is "Success" in a PUBACK, "Normal disconnection" in a DISCONNECT and
"Granted QoS 0" in a SUBACK).  The table below follows the MQTT 5.0 standard,
section 2.4, with the names spelled the way paho-mqtt spells them.
"""

from __future__ import annotations

import functools
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Tuple, Union

from .packettypes import PacketTypes

__all__ = ["ReasonCode", "ReasonCodes", "ReasonCodeError", "reason_code_from_int"]

_CONNACK = PacketTypes.CONNACK
_PUBACK = PacketTypes.PUBACK
_PUBREC = PacketTypes.PUBREC
_PUBREL = PacketTypes.PUBREL
_PUBCOMP = PacketTypes.PUBCOMP
_SUBACK = PacketTypes.SUBACK
_UNSUBACK = PacketTypes.UNSUBACK
_DISCONNECT = PacketTypes.DISCONNECT
_AUTH = PacketTypes.AUTH

# (value, name, packet types in which the value has that name)
_TABLE: Tuple[Tuple[int, str, Tuple[int, ...]], ...] = (
    (0x00, "Success", (_CONNACK, _PUBACK, _PUBREC, _PUBREL, _PUBCOMP, _UNSUBACK, _AUTH)),
    (0x00, "Normal disconnection", (_DISCONNECT,)),
    (0x00, "Granted QoS 0", (_SUBACK,)),
    (0x01, "Granted QoS 1", (_SUBACK,)),
    (0x02, "Granted QoS 2", (_SUBACK,)),
    (0x04, "Disconnect with will message", (_DISCONNECT,)),
    (0x10, "No matching subscribers", (_PUBACK, _PUBREC)),
    (0x11, "No subscription found", (_UNSUBACK,)),
    (0x18, "Continue authentication", (_AUTH,)),
    (0x19, "Re-authenticate", (_AUTH,)),
    (0x80, "Unspecified error", (_CONNACK, _PUBACK, _PUBREC, _SUBACK, _UNSUBACK, _DISCONNECT)),
    (0x81, "Malformed packet", (_CONNACK, _DISCONNECT)),
    (0x82, "Protocol error", (_CONNACK, _DISCONNECT)),
    (0x83, "Implementation specific error", (_CONNACK, _PUBACK, _PUBREC, _SUBACK, _UNSUBACK, _DISCONNECT)),
    (0x84, "Unsupported protocol version", (_CONNACK,)),
    (0x85, "Client identifier not valid", (_CONNACK,)),
    (0x86, "Bad user name or password", (_CONNACK,)),
    (0x87, "Not authorized", (_CONNACK, _PUBACK, _PUBREC, _SUBACK, _UNSUBACK, _DISCONNECT)),
    (0x88, "Server unavailable", (_CONNACK,)),
    (0x89, "Server busy", (_CONNACK, _DISCONNECT)),
    (0x8A, "Banned", (_CONNACK,)),
    (0x8B, "Server shutting down", (_DISCONNECT,)),
    (0x8C, "Bad authentication method", (_CONNACK, _DISCONNECT)),
    (0x8D, "Keep alive timeout", (_DISCONNECT,)),
    (0x8E, "Session taken over", (_DISCONNECT,)),
    (0x8F, "Topic filter invalid", (_SUBACK, _UNSUBACK, _DISCONNECT)),
    (0x90, "Topic name invalid", (_CONNACK, _PUBACK, _PUBREC, _DISCONNECT)),
    (0x91, "Packet identifier in use", (_PUBACK, _PUBREC, _SUBACK, _UNSUBACK)),
    (0x92, "Packet identifier not found", (_PUBREL, _PUBCOMP)),
    (0x93, "Receive maximum exceeded", (_DISCONNECT,)),
    (0x94, "Topic alias invalid", (_DISCONNECT,)),
    (0x95, "Packet too large", (_CONNACK, _DISCONNECT)),
    (0x96, "Message rate too high", (_DISCONNECT,)),
    (0x97, "Quota exceeded", (_CONNACK, _PUBACK, _PUBREC, _SUBACK, _DISCONNECT)),
    (0x98, "Administrative action", (_DISCONNECT,)),
    # The standard also allows 0x99 in CONNACK (will payload format); paho omits it.
    (0x99, "Payload format invalid", (_CONNACK, _PUBACK, _PUBREC, _DISCONNECT)),
    (0x9A, "Retain not supported", (_CONNACK, _DISCONNECT)),
    (0x9B, "QoS not supported", (_CONNACK, _DISCONNECT)),
    (0x9C, "Use another server", (_CONNACK, _DISCONNECT)),
    (0x9D, "Server moved", (_CONNACK, _DISCONNECT)),
    (0x9E, "Shared subscription not supported", (_SUBACK, _DISCONNECT)),
    (0x9F, "Connection rate exceeded", (_CONNACK, _DISCONNECT)),
    (0xA0, "Maximum connect time", (_DISCONNECT,)),
    (0xA1, "Subscription identifiers not supported", (_SUBACK, _DISCONNECT)),
    (0xA2, "Wildcard subscription not supported", (_SUBACK, _DISCONNECT)),
)

# (packet type, value) -> name, and (packet type, name) -> value
_NAME_OF: Dict[Tuple[int, int], str] = {}
_VALUE_OF: Dict[Tuple[int, str], int] = {}
# paho's layout: value -> {name: [packet types]}
_NAMES: Dict[int, Dict[str, List[int]]] = {}
for _value, _name, _packets in _TABLE:
    for _packet in _packets:
        _NAME_OF[(_packet, _value)] = _name
        _VALUE_OF[(_packet, _name)] = _value
    _NAMES.setdefault(_value, {})[_name] = list(_packets)
del _value, _name, _packets, _packet


def _packet_label(packet_type: Any) -> str:
    """Display name of a packet type, "Unknown" when it has none (as paho prints)."""
    if isinstance(packet_type, int) and 0 <= packet_type < len(PacketTypes.Names):
        return PacketTypes.Names[packet_type]
    return "Unknown"


def _hex(value: int) -> str:
    return f"0x{value:02X}" if value >= 0 else str(value)


class ReasonCodeError(KeyError, ValueError):
    """A reason code value or name is not valid for the given packet type.

    It is both a ``KeyError`` and a ``ValueError`` because paho raises one or
    the other depending on the case, and callers may catch either.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@functools.total_ordering
class ReasonCode:
    """An MQTT 5 reason code: a value plus the packet type that gives it its name.

    ``ReasonCode(PacketTypes.PUBACK, "Not authorized")`` or
    ``ReasonCode(PacketTypes.PUBACK, identifier=0x87)``.  Compares equal to its
    integer value and to its name; ``str()`` is the name.  Instances are
    mutable (``set()``, ``unpack()``), like paho's, so do not change one that is
    used as a dict key.
    """

    __slots__ = ("packetType", "value")

    names: Mapping[int, Dict[str, List[int]]] = MappingProxyType(_NAMES)
    """value -> {name: [packet types]}, as in paho."""

    def __init__(self, packetType: int, aName: str = "Success", identifier: int = -1):
        """Create from a name (``aName``) or, when given, a numeric ``identifier``.

        Raises ``ReasonCodeError`` (a KeyError and ValueError) when the name or
        value does not exist for ``packetType``.
        """
        self.packetType = packetType
        if identifier == -1:
            if packetType == PacketTypes.DISCONNECT and aName == "Success":
                aName = "Normal disconnection"
            self.value = self.getId(aName)
        else:
            self.value = _checked_value(packetType, identifier)

    def getId(self, name: str) -> int:
        """Return the value that ``name`` has in this reason code's packet type."""
        value = _VALUE_OF.get((self.packetType, name))
        if value is None:
            valid = sorted(n for (p, n) in _VALUE_OF if p == self.packetType)
            raise ReasonCodeError(
                f"{name!r} is not a reason code name for {_packet_label(self.packetType)} "
                f"packets; valid names are: {', '.join(valid) if valid else 'none'}"
            )
        return value

    def set(self, name: str) -> None:
        """Change the value to the one named ``name`` (same packet type)."""
        self.value = self.getId(name)

    def getName(self) -> str:
        """Return the name of the value for this packet type.

        Never raises: a value that the standard does not define for this packet
        type is named ``"Unknown reason code 0x.."``.
        """
        name = _NAME_OF.get((self.packetType, self.value))
        if name is None:
            return f"Unknown reason code {_hex(self.value)}"
        return name

    def unpack(self, buffer: Union[bytes, bytearray]) -> int:
        """Read the value from the first byte of ``buffer``; return bytes used (1)."""
        self.value = _checked_value(self.packetType, buffer[0])
        return 1

    def pack(self) -> bytearray:
        """Return the value as one byte."""
        return bytearray([self.value])

    def json(self) -> str:
        """JSON representation: the name."""
        return self.getName()

    @property
    def is_failure(self) -> bool:
        """True for error codes (value 0x80 or more)."""
        return self.value >= 0x80

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ReasonCode):
            return self.value == other.value
        if isinstance(other, int):
            return self.value == other
        if isinstance(other, str):
            return other == self.getName()
        return NotImplemented

    def __lt__(self, other: Any) -> bool:
        if isinstance(other, ReasonCode):
            return self.value < other.value
        if isinstance(other, int):
            return self.value < other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.value)

    def __int__(self) -> int:
        return int(self.value)

    def __str__(self) -> str:
        return self.getName()

    def __repr__(self) -> str:
        return f"ReasonCode({_packet_label(self.packetType)}, {self.getName()!r})"


def _checked_value(packet_type: int, value: int) -> int:
    """Return ``int(value)`` if it names a reason code in ``packet_type``, else raise."""
    value = int(value)
    if (packet_type, value) not in _NAME_OF:
        if value in _NAMES:
            valid = ", ".join(_packet_label(p) for p in sorted({p for ps in _NAMES[value].values() for p in ps}))
            raise ReasonCodeError(
                f"reason code {_hex(value)} is not allowed in {_packet_label(packet_type)} "
                f"packets (it is used in: {valid})"
            )
        raise ReasonCodeError(f"{_hex(value)} is not an MQTT 5 reason code")
    return value


def reason_code_from_int(packet_type: int, value: int) -> ReasonCode:
    """Build a ``ReasonCode`` for a value received from the network; never raises.

    Values the standard does not define for ``packet_type`` are kept as they
    are and named ``"Unknown reason code 0x.."``.
    """
    rc = ReasonCode.__new__(ReasonCode)
    rc.packetType = packet_type
    rc.value = int(value)
    return rc


ReasonCodes = ReasonCode
"""paho-mqtt 1.x name of ``ReasonCode``."""
