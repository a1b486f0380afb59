"""MQTT 5 subscription options, compatible with ``paho.mqtt.subscribeoptions``."""

from __future__ import annotations

from typing import Any, Dict, List, Union

__all__ = ["SubscribeOptions"]


def _check_level(field: str, value: Any) -> int:
    """Return ``value`` as an int if it is 0, 1 or 2, else raise ValueError naming ``field``."""
    if isinstance(value, int) and 0 <= value <= 2:
        return int(value)
    raise ValueError(f"SubscribeOptions.{field} must be 0, 1 or 2, got {value!r}")


class SubscribeOptions:
    """Options of one MQTT 5 subscription.

    ``qos`` (also readable and writable as ``QoS``, paho's attribute name):
    maximum QoS 0-2.  ``noLocal``: do not receive our own publications.
    ``retainAsPublished``: keep the publisher's retain flag.
    ``retainHandling``: when the broker sends retained messages, one of
    ``RETAIN_SEND_ON_SUBSCRIBE`` (default), ``RETAIN_SEND_IF_NEW_SUB``,
    ``RETAIN_DO_NOT_SEND``.  Invalid values raise ValueError.
    """

    RETAIN_SEND_ON_SUBSCRIBE = 0
    RETAIN_SEND_IF_NEW_SUB = 1
    RETAIN_DO_NOT_SEND = 2

    names: List[str] = ["QoS", "noLocal", "retainAsPublished", "retainHandling"]

    __slots__ = ("_qos", "_no_local", "_retain_as_published", "_retain_handling")

    def __init__(self, qos: int = 0, noLocal: bool = False, retainAsPublished: bool = False,
                 retainHandling: int = RETAIN_SEND_ON_SUBSCRIBE):
        self.QoS = qos
        self.noLocal = noLocal
        self.retainAsPublished = retainAsPublished
        self.retainHandling = retainHandling

    @property
    def QoS(self) -> int:
        """Maximum QoS of the subscription (0, 1 or 2)."""
        return self._qos

    @QoS.setter
    def QoS(self, value: int) -> None:
        self._qos = _check_level("qos", value)

    qos = QoS

    @property
    def noLocal(self) -> bool:
        """Do not deliver messages published by this client back to it."""
        return self._no_local

    @noLocal.setter
    def noLocal(self, value: Any) -> None:
        self._no_local = bool(value)

    @property
    def retainAsPublished(self) -> bool:
        """Keep the retain flag as the publisher set it."""
        return self._retain_as_published

    @retainAsPublished.setter
    def retainAsPublished(self, value: Any) -> None:
        self._retain_as_published = bool(value)

    @property
    def retainHandling(self) -> int:
        """0: send retained on subscribe; 1: only for a new subscription; 2: never."""
        return self._retain_handling

    @retainHandling.setter
    def retainHandling(self, value: int) -> None:
        self._retain_handling = _check_level("retainHandling", value)

    def pack(self) -> bytes:
        """The subscription options byte."""
        return bytes([(self._retain_handling << 4) | (self._retain_as_published << 3)
                      | (self._no_local << 2) | self._qos])

    def unpack(self, buffer: Union[bytes, bytearray]) -> int:
        """Read the options byte at the start of ``buffer``; return bytes used (1)."""
        b = buffer[0]
        if b & 0xC0:
            raise ValueError(f"subscription options byte 0x{b:02X} has reserved bits set")
        self.QoS = b & 0x03
        self.noLocal = bool(b & 0x04)
        self.retainAsPublished = bool(b & 0x08)
        self.retainHandling = (b >> 4) & 0x03
        return 1

    def json(self) -> Dict[str, Any]:
        """The options as a dict keyed by paho's attribute names."""
        return {"QoS": self._qos, "noLocal": self._no_local,
                "retainAsPublished": self._retain_as_published,
                "retainHandling": self._retain_handling}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SubscribeOptions):
            return NotImplemented
        return self.json() == other.json()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __str__(self) -> str:
        return (f"{{QoS={self._qos}, noLocal={self._no_local}, "
                f"retainAsPublished={self._retain_as_published}, "
                f"retainHandling={self._retain_handling}}}")

    __repr__ = __str__
