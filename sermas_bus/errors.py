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
     +-- PersistenceError (OSError)              the durable outbox (persistence=) failed
     |    +-- PersistenceLockedError              its directory is another live client's
     |    +-- PersistenceFullError                it holds persistence_max_bytes already
     +-- SubscribeError                          broker refused a subscription
     |    +-- SubscriptionRefusedError            ... with .filter, .reason_code and why
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
    PersistenceError,
    PersistenceFullError,
    PersistenceLockedError,
    ProtocolError,
    ProtocolVersionError,
    PublishError,
    SermasBusError,
    SubscribeError,
    TimeoutError,
    TLSError,
)



class SubscriptionRefusedError(SubscribeError):
    """The broker refused a subscription (SUBACK 0x80 on MQTT 3.1.1, 0x87 Not
    authorized and friends on MQTT 5).  ``filter`` is the refused filter and
    ``reason_code`` the broker's code; the message says what the SERMAS
    platform's rule allows instead when that is why."""

    def __init__(self, message: str, filter: str, reason_code: int):
        super().__init__(message)
        self.filter = filter
        self.reason_code = reason_code


def platform_acl_hint(filter_: str) -> str:
    """Why the SERMAS platform's ACL refuses ``filter_``, and what to ask for
    instead; "" when the rule allows its shape (then the token lacks the
    permission, or the broker has other rules).  The rule: the topic must
    start with ``app/`` or ``user/``, and levels 3-4 are ``<resource>/<scope>``
    for which the token needs the permission ``<resource>:<scope>``."""
    if filter_.startswith("$share/"):
        inner = filter_.split("/", 2)[2] if filter_.count("/") >= 2 else ""
        return (f"the platform refuses shared subscriptions ($share/...): its ACL check sees the "
                f"'$share/' prefix; subscribe to {inner!r} without share=")
    levels = filter_.split("/")
    if levels[0] not in ("app", "user"):
        return ("the platform allows only topics under app/<appId>/... or user/<appId>/... "
                "(system/... needs a superuser token)")
    if len(levels) < 4 or any(lv in ("+", "#") for lv in levels[2:4]):
        app = levels[1] if len(levels) > 1 else "<appId>"
        return (f"the platform grants <resource>:<scope> permissions, so levels 3-4 must be named: "
                f"subscribe to e.g. {levels[0]}/{app}/dialogue/messages/+ instead")
    return f"the token needs the permission {levels[2]}:{levels[3]} in app {levels[1]!r}"


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


class PersistenceRecoveryWarning(UserWarning):
    """Opening a persistence directory found a damaged log (a torn last record
    after a crash, or corruption): every good record was recovered, the
    damaged bytes were skipped and the original kept beside it."""


class OutboxFullError(SermasBusError):
    """The outbox holds its maximum of publishes not yet delivered (the
    client is offline, or the broker is slower than the publisher).  Wait
    (``flush()``) and retry, or raise the bound (``max_queued``)."""


__all__ = [
    "SermasBusError", "ConnectError", "NotAuthorizedError", "TLSError", "ProtocolVersionError",
    "ConnectionLostError", "NotConnectedError", "TimeoutError", "ProtocolError", "PublishError",
    "SubscribeError", "ForkError", "ClosedError", "JSONDecodeError", "OutboxFullError",
    "NothingListeningError", "WebSocketUpgradeError", "ConnectionClosedError",
    "PersistenceError", "PersistenceLockedError", "PersistenceFullError", "PersistenceRecoveryWarning",
]
