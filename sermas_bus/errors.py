"""The sermas_bus exception hierarchy (defined in the C core, re-exported here)::

    SermasBusError
     +-- ConnectError (also ConnectionError)     the connection could not be made
     |    +-- NotAuthorizedError                  bad/expired token, not authorised
     |    +-- TLSError (also ssl.SSLError)        handshake / certificate failure
     |    +-- ProtocolVersionError                broker refused the MQTT version
     |    +-- NothingListeningError (also ConnectionRefusedError)  no server at the address
     |    +-- WebSocketUpgradeError               the server refused the websocket upgrade
     |    +-- ConnectionClosedError               accepted TCP, then closed/silent after CONNECT
     +-- ConnectionLostError (ConnectionError)   lost before an operation completed
     +-- NotConnectedError (ConnectionError)     operation needs a connection
     +-- TimeoutError (builtins.TimeoutError)    did not complete in time
     +-- ProtocolError (ValueError)              option impossible in this MQTT version
     +-- PublishError                            broker refused a publish (reason code)
     +-- OutboxFullError                         too many publishes wait for the broker
     +-- SubscribeError                          broker refused a subscription
     +-- ForkError (RuntimeError)                client used in a forked child
     +-- ClosedError (RuntimeError)              client already closed
     +-- JSONDecodeError (ValueError)            payload is not UTF-8 JSON (sermas_bus.json)

Bad arguments raise ValueError / TypeError naming the argument, as in paho-mqtt.
Connect errors carry ``rc`` (paho.mqtt.c return code) and ``reason_code``
(the CONNACK code, or None when the broker never answered).
"""
from ._core import (  # noqa: F401
    ClosedError,
    ConnectError,
    ConnectionLostError,
    ForkError,
    JSONDecodeError,
    NotAuthorizedError,
    NotConnectedError,
    ProtocolError,
    ProtocolVersionError,
    PublishError,
    SermasBusError,
    SubscribeError,
    TimeoutError,
    TLSError,
)



class NothingListeningError(ConnectError, ConnectionRefusedError):
    """Nothing accepts connections at the broker address (or the host name
    does not resolve): wrong host/port, or the broker is not running."""


class WebSocketUpgradeError(ConnectError):
    """The server accepted the TCP connection but refused the websocket
    upgrade (its HTTP status is in the message): wrong path or not a
    websocket listener."""


class ConnectionClosedError(ConnectError):
    """The server accepted the connection, then closed it (or said nothing)
    after the MQTT CONNECT: not an MQTT listener, a TLS port spoken to in
    plain text, or a broker that accepts none of MQTT 5 and 3.1.1."""


class OutboxFullError(SermasBusError):
    """The outbox holds its maximum of publishes not yet delivered (the
    client is offline, or the broker is slower than the publisher).  Wait
    (``flush()``) and retry, or raise the bound (``max_queued``)."""


__all__ = [
    "SermasBusError", "ConnectError", "NotAuthorizedError", "TLSError", "ProtocolVersionError",
    "ConnectionLostError", "NotConnectedError", "TimeoutError", "ProtocolError", "PublishError",
    "SubscribeError", "ForkError", "ClosedError", "JSONDecodeError", "OutboxFullError",
    "NothingListeningError", "WebSocketUpgradeError", "ConnectionClosedError",
]
