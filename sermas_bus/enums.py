"""Protocol enumerations and their human-readable texts.

The member names and values match ``paho.mqtt.enums`` (paho-mqtt 2.x) so that
code written against paho keeps working, and the module-level constants match
the ones paho exposes in ``paho.mqtt.client``.
"""

from __future__ import annotations

import enum
from typing import Union

from .reasoncodes import ReasonCode

__all__ = [
    "CallbackAPIVersion",
    "MQTTErrorCode",
    "MQTTProtocolVersion",
    "MessageType",
    "MessageState",
    "ConnackCode",
    "LogLevel",
    "PahoClientMode",
    "error_string",
    "connack_string",
]


class CallbackAPIVersion(enum.Enum):
    """Which signature the user callbacks use (see paho-mqtt 2.x)."""

    VERSION1 = 1
    """paho-mqtt 1.x signatures (deprecated by paho)."""
    VERSION2 = 2
    """Same signatures for MQTT 3.1.1 and 5; reason codes are ``ReasonCode``."""


class MQTTErrorCode(enum.IntEnum):
    """Return codes of the client API (``rc`` values)."""

    MQTT_ERR_AGAIN = -1
    MQTT_ERR_SUCCESS = 0
    MQTT_ERR_NOMEM = 1
    MQTT_ERR_PROTOCOL = 2
    MQTT_ERR_INVAL = 3
    MQTT_ERR_NO_CONN = 4
    MQTT_ERR_CONN_REFUSED = 5
    MQTT_ERR_NOT_FOUND = 6
    MQTT_ERR_CONN_LOST = 7
    MQTT_ERR_TLS = 8
    MQTT_ERR_PAYLOAD_SIZE = 9
    MQTT_ERR_NOT_SUPPORTED = 10
    MQTT_ERR_AUTH = 11
    MQTT_ERR_ACL_DENIED = 12
    MQTT_ERR_UNKNOWN = 13
    MQTT_ERR_ERRNO = 14
    MQTT_ERR_QUEUE_SIZE = 15
    MQTT_ERR_KEEPALIVE = 16


class MQTTProtocolVersion(enum.IntEnum):
    """Protocol level sent in CONNECT."""

    MQTTv31 = 3
    MQTTv311 = 4
    MQTTv5 = 5


class MessageType(enum.IntEnum):
    """Control packet type, already shifted into the fixed-header high nibble."""

    CONNECT = 0x10
    CONNACK = 0x20
    PUBLISH = 0x30
    PUBACK = 0x40
    PUBREC = 0x50
    PUBREL = 0x60
    PUBCOMP = 0x70
    SUBSCRIBE = 0x80
    SUBACK = 0x90
    UNSUBSCRIBE = 0xA0
    UNSUBACK = 0xB0
    PINGREQ = 0xC0
    PINGRESP = 0xD0
    DISCONNECT = 0xE0
    AUTH = 0xF0


class MessageState(enum.IntEnum):
    """Where an in-flight message is in its QoS handshake."""

    MQTT_MS_INVALID = 0
    MQTT_MS_PUBLISH = 1
    MQTT_MS_WAIT_FOR_PUBACK = 2
    MQTT_MS_WAIT_FOR_PUBREC = 3
    MQTT_MS_RESEND_PUBREL = 4
    MQTT_MS_WAIT_FOR_PUBREL = 5
    MQTT_MS_RESEND_PUBCOMP = 6
    MQTT_MS_WAIT_FOR_PUBCOMP = 7
    MQTT_MS_SEND_PUBREC = 8
    MQTT_MS_QUEUED = 9


class ConnackCode(enum.IntEnum):
    """MQTT 3.1/3.1.1 CONNACK return codes."""

    CONNACK_ACCEPTED = 0
    CONNACK_REFUSED_PROTOCOL_VERSION = 1
    CONNACK_REFUSED_IDENTIFIER_REJECTED = 2
    CONNACK_REFUSED_SERVER_UNAVAILABLE = 3
    CONNACK_REFUSED_BAD_USERNAME_PASSWORD = 4
    CONNACK_REFUSED_NOT_AUTHORIZED = 5


class LogLevel(enum.IntEnum):
    """Levels passed to ``on_log``."""

    MQTT_LOG_INFO = 0x01
    MQTT_LOG_NOTICE = 0x02
    MQTT_LOG_WARNING = 0x04
    MQTT_LOG_ERR = 0x08
    MQTT_LOG_DEBUG = 0x10


class PahoClientMode(enum.IntEnum):
    """Whether the client acts as a normal client or as a bridge."""

    MQTT_CLIENT = 0
    MQTT_BRIDGE = 1


# Module-level aliases, named as in paho.mqtt.client.
MQTT_ERR_AGAIN = MQTTErrorCode.MQTT_ERR_AGAIN
MQTT_ERR_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
MQTT_ERR_NOMEM = MQTTErrorCode.MQTT_ERR_NOMEM
MQTT_ERR_PROTOCOL = MQTTErrorCode.MQTT_ERR_PROTOCOL
MQTT_ERR_INVAL = MQTTErrorCode.MQTT_ERR_INVAL
MQTT_ERR_NO_CONN = MQTTErrorCode.MQTT_ERR_NO_CONN
MQTT_ERR_CONN_REFUSED = MQTTErrorCode.MQTT_ERR_CONN_REFUSED
MQTT_ERR_NOT_FOUND = MQTTErrorCode.MQTT_ERR_NOT_FOUND
MQTT_ERR_CONN_LOST = MQTTErrorCode.MQTT_ERR_CONN_LOST
MQTT_ERR_TLS = MQTTErrorCode.MQTT_ERR_TLS
MQTT_ERR_PAYLOAD_SIZE = MQTTErrorCode.MQTT_ERR_PAYLOAD_SIZE
MQTT_ERR_NOT_SUPPORTED = MQTTErrorCode.MQTT_ERR_NOT_SUPPORTED
MQTT_ERR_AUTH = MQTTErrorCode.MQTT_ERR_AUTH
MQTT_ERR_ACL_DENIED = MQTTErrorCode.MQTT_ERR_ACL_DENIED
MQTT_ERR_UNKNOWN = MQTTErrorCode.MQTT_ERR_UNKNOWN
MQTT_ERR_ERRNO = MQTTErrorCode.MQTT_ERR_ERRNO
MQTT_ERR_QUEUE_SIZE = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
MQTT_ERR_KEEPALIVE = MQTTErrorCode.MQTT_ERR_KEEPALIVE

MQTTv31 = MQTTProtocolVersion.MQTTv31
MQTTv311 = MQTTProtocolVersion.MQTTv311
MQTTv5 = MQTTProtocolVersion.MQTTv5

CONNACK_ACCEPTED = ConnackCode.CONNACK_ACCEPTED
CONNACK_REFUSED_PROTOCOL_VERSION = ConnackCode.CONNACK_REFUSED_PROTOCOL_VERSION
CONNACK_REFUSED_IDENTIFIER_REJECTED = ConnackCode.CONNACK_REFUSED_IDENTIFIER_REJECTED
CONNACK_REFUSED_SERVER_UNAVAILABLE = ConnackCode.CONNACK_REFUSED_SERVER_UNAVAILABLE
CONNACK_REFUSED_BAD_USERNAME_PASSWORD = ConnackCode.CONNACK_REFUSED_BAD_USERNAME_PASSWORD
CONNACK_REFUSED_NOT_AUTHORIZED = ConnackCode.CONNACK_REFUSED_NOT_AUTHORIZED

MQTT_LOG_INFO = LogLevel.MQTT_LOG_INFO
MQTT_LOG_NOTICE = LogLevel.MQTT_LOG_NOTICE
MQTT_LOG_WARNING = LogLevel.MQTT_LOG_WARNING
MQTT_LOG_ERR = LogLevel.MQTT_LOG_ERR
MQTT_LOG_DEBUG = LogLevel.MQTT_LOG_DEBUG

MQTT_CLIENT = PahoClientMode.MQTT_CLIENT
MQTT_BRIDGE = PahoClientMode.MQTT_BRIDGE


# The texts are kept identical to paho's wherever paho has one, because
# applications log them and sometimes compare them.
_ERROR_TEXTS = {
    MQTTErrorCode.MQTT_ERR_AGAIN: "Operation would block; try again later.",
    MQTTErrorCode.MQTT_ERR_SUCCESS: "No error.",
    MQTTErrorCode.MQTT_ERR_NOMEM: "Out of memory.",
    MQTTErrorCode.MQTT_ERR_PROTOCOL: "A network protocol error occurred when communicating with the broker.",
    MQTTErrorCode.MQTT_ERR_INVAL: "Invalid function arguments provided.",
    MQTTErrorCode.MQTT_ERR_NO_CONN: "The client is not currently connected.",
    MQTTErrorCode.MQTT_ERR_CONN_REFUSED: "The connection was refused.",
    MQTTErrorCode.MQTT_ERR_NOT_FOUND: "Message not found (internal error).",
    MQTTErrorCode.MQTT_ERR_CONN_LOST: "The connection was lost.",
    MQTTErrorCode.MQTT_ERR_TLS: "A TLS error occurred.",
    MQTTErrorCode.MQTT_ERR_PAYLOAD_SIZE: "Payload too large.",
    MQTTErrorCode.MQTT_ERR_NOT_SUPPORTED: "This feature is not supported.",
    MQTTErrorCode.MQTT_ERR_AUTH: "Authorisation failed.",
    MQTTErrorCode.MQTT_ERR_ACL_DENIED: "Access denied by ACL.",
    MQTTErrorCode.MQTT_ERR_UNKNOWN: "Unknown error.",
    MQTTErrorCode.MQTT_ERR_ERRNO: "Error defined by errno.",
    MQTTErrorCode.MQTT_ERR_QUEUE_SIZE: "Message queue full.",
    MQTTErrorCode.MQTT_ERR_KEEPALIVE: "Client or broker did not communicate in the keepalive interval.",
}

_CONNACK_TEXTS = {
    ConnackCode.CONNACK_ACCEPTED: "Connection Accepted.",
    ConnackCode.CONNACK_REFUSED_PROTOCOL_VERSION: "Connection Refused: unacceptable protocol version.",
    ConnackCode.CONNACK_REFUSED_IDENTIFIER_REJECTED: "Connection Refused: identifier rejected.",
    ConnackCode.CONNACK_REFUSED_SERVER_UNAVAILABLE: "Connection Refused: broker unavailable.",
    ConnackCode.CONNACK_REFUSED_BAD_USERNAME_PASSWORD: "Connection Refused: bad user name or password.",
    ConnackCode.CONNACK_REFUSED_NOT_AUTHORIZED: "Connection Refused: not authorised.",
}


def _as_int(value: object) -> Union[int, None]:
    """Return ``value`` as an int if it is a plain integer code, else None."""
    if isinstance(value, int):
        return int(value)
    return None


def error_string(mqtt_errno: Union[MQTTErrorCode, int]) -> str:
    """Return the text describing a client return code (``MQTT_ERR_*``)."""
    code = _as_int(mqtt_errno)
    if code is None:
        return "Unknown error."
    return _ERROR_TEXTS.get(code, "Unknown error.")  # type: ignore[call-overload]


def connack_string(connack_code: Union[int, ReasonCode]) -> str:
    """Return the text for a MQTT 3.x CONNACK code, or the name of a ``ReasonCode``."""
    if isinstance(connack_code, ReasonCode):
        return str(connack_code)
    code = _as_int(connack_code)
    if code is None:
        return "Connection Refused: unknown reason."
    return _CONNACK_TEXTS.get(code, "Connection Refused: unknown reason.")  # type: ignore[call-overload]
