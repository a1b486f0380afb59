"""MQTT control packet type numbers, as used by ``paho.mqtt.packettypes``."""

from __future__ import annotations

from typing import Tuple

__all__ = ["PacketTypes", "packet_name"]


class PacketTypes:
    """Packet type constants (1..15) and their display names.

    ``PacketTypes.Names[PacketTypes.PUBLISH]`` is ``"Publish"``.
    ``WILLMESSAGE`` is not a real packet: it selects the properties that are
    allowed on a will message.
    """

    indexes = range(1, 16)

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15

    WILLMESSAGE = 99

    Names: Tuple[str, ...] = (
        "reserved",
        "Connect", "Connack", "Publish", "Puback", "Pubrec", "Pubrel",
        "Pubcomp", "Subscribe", "Suback", "Unsubscribe", "Unsuback",
        "Pingreq", "Pingresp", "Disconnect", "Auth",
    )


def packet_name(packet_type: int) -> str:
    """Return the display name of a packet type, e.g. ``"Publish"``; never raises."""
    if packet_type == PacketTypes.WILLMESSAGE:
        return "Will message"
    if isinstance(packet_type, int) and 0 <= packet_type < len(PacketTypes.Names):
        return PacketTypes.Names[packet_type]
    return f"Unknown packet type {packet_type!r}"
