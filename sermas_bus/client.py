"""A drop-in for ``paho.mqtt.client`` on a C core.

Swap ``import paho.mqtt.client as mqtt`` for ``import sermas_bus.client as mqtt``.
What differs from paho-mqtt, on purpose:

* MQTT 5 by default (paho defaults to 3.1.1, where ``SubscribeOptions(qos=1,
  noLocal=True)`` is silently dropped); a broker that refuses MQTT 5 makes the
  client fall back to 3.1.1, and then options 3.1.1 cannot express raise
  ``ProtocolError`` instead of being ignored.
* ``connect`` accepts URLs (``http://host:8080/mqtt`` = websockets, as SERMAS
  publishes it) and lists of URLs for fail-over; it is synchronous.  As in
  paho it raises only when the broker cannot be reached (no server, TLS,
  websocket upgrade); a refusal goes to ``on_connect``/``on_disconnect`` and
  the loop retries, the clear exception kept in ``last_connect_error``.
* QoS>0 messages published while disconnected wait in the outbox and go out
  after the reconnect, as in paho; ``flush()`` waits for them.
* Subscriptions are restored automatically after a reconnect.
* ``wait_for_publish(timeout)`` raises on time-out and when closed first.
* Exceptions raised in callbacks are logged (logger ``sermas_bus``) and do not
  stop the loop unless ``suppress_exceptions`` is set to False.

Threading: paho.mqtt.c's threads never run Python.  Callbacks run on the loop
thread (``loop_start``, or the caller of ``loop_forever``/``loop``/``messages``).
``publish`` may be called from any thread, including from callbacks.
"""
from __future__ import annotations

import atexit
import dataclasses
import itertools
import logging
import os
import queue as _queue
import socket
import ssl
import tempfile
import threading
import time
import uuid
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from . import _core
from ._callbacks import Callback
from ._queues import END as _END, drain
from ._urls import broker_uris, host_port, uses_tls
from .enums import (  # noqa: F401  (re-exported, as paho.mqtt.client does)
    MQTT_ERR_AGAIN, MQTT_ERR_ACL_DENIED, MQTT_ERR_AUTH, MQTT_ERR_CONN_LOST, MQTT_ERR_CONN_REFUSED,
    MQTT_ERR_ERRNO, MQTT_ERR_INVAL, MQTT_ERR_KEEPALIVE, MQTT_ERR_NO_CONN, MQTT_ERR_NOMEM,
    MQTT_ERR_NOT_FOUND, MQTT_ERR_NOT_SUPPORTED, MQTT_ERR_PAYLOAD_SIZE, MQTT_ERR_PROTOCOL,
    MQTT_ERR_QUEUE_SIZE, MQTT_ERR_SUCCESS, MQTT_ERR_TLS, MQTT_ERR_UNKNOWN, MQTT_LOG_DEBUG,
    MQTT_LOG_ERR, MQTT_LOG_INFO, MQTT_LOG_NOTICE, MQTT_LOG_WARNING, CONNACK_ACCEPTED,
    CONNACK_REFUSED_BAD_USERNAME_PASSWORD, CONNACK_REFUSED_IDENTIFIER_REJECTED,
    CONNACK_REFUSED_NOT_AUTHORIZED, CONNACK_REFUSED_PROTOCOL_VERSION,
    CONNACK_REFUSED_SERVER_UNAVAILABLE, CallbackAPIVersion, ConnackCode, LogLevel, MQTTErrorCode,
    MQTTProtocolVersion, connack_string, error_string,
)
from . import _probe
from .errors import (
    ClosedError, ConnectError, ConnectionClosedError, ConnectionLostError, ForkError, NotConnectedError,
    NothingListeningError, ProtocolError, ProtocolVersionError, PublishError, TimeoutError, TLSError,
    WebSocketUpgradeError,
)
from .matcher import TopicMatcher, topic_matches_sub, validate_topic_filter  # noqa: F401
from .packettypes import PacketTypes
from .properties import Properties
from .reasoncodes import ReasonCode, reason_code_from_int
from .subscribeoptions import SubscribeOptions

MQTTv31 = 3
MQTTv311 = 4
MQTTv5 = 5
MQTT_CLEAN_START_FIRST_ONLY = 3
MQTTMessage = _core.MQTTMessage

logger = logging.getLogger("sermas_bus")
_core._set_properties_factory(Properties.from_pairs)

_BATCH = 1024          # messages handed to Python per GIL take
_AUTO = object()       # "protocol not given": MQTT 5 with fall-back to 3.1.1
_live_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


@dataclasses.dataclass
class ConnectFlags:
    """on_connect's flags (callback API VERSION2)."""
    session_present: bool


@dataclasses.dataclass
class DisconnectFlags:
    """on_disconnect's flags (callback API VERSION2)."""
    is_disconnect_packet_from_server: bool


class MQTTMessageInfo(_core.PublishInfo):
    """What ``publish`` returns: ``mid``, ``rc``, ``wait_for_publish()``.

    Built in C on the publish path; unpacks like paho's: ``rc, mid = client.publish(...)``.
    """

    __slots__ = ()

    def __iter__(self) -> Iterator[int]:
        return iter((self.rc, self.mid))

    def __getitem__(self, index: int) -> int:
        return (self.rc, self.mid)[index]

    def __repr__(self) -> str:
        return f"<MQTTMessageInfo mid={self.mid} rc={self.rc.name} published={self.is_published()}>"

    def _not_sent(self) -> Exception:
        if self.rc == MQTT_ERR_QUEUE_SIZE:
            return ValueError(f"message mid={self.mid} was not queued: the outbox is full "
                              "(max_queued_messages_set); wait for publishes to complete or raise the bound")
        return NotConnectedError(
            f"QoS 0 message mid={self.mid} to {self._topic!r} was not sent: the client was not connected "
            "(QoS 0 is not kept while disconnected, as in paho-mqtt; use QoS 1, or publish after on_connect)")

    def _state(self, timeout: float) -> Tuple[int, int]:
        # rc NO_CONN with a record: queued for the reconnect (paho's answer
        # for a QoS>0 message it keeps); without one it was dropped
        if self.rc != MQTT_ERR_SUCCESS and (self.rc != MQTT_ERR_NO_CONN or self._conn is None
                                            or not self._queued):
            raise self._not_sent()
        return self._conn.wait_published(self, timeout)

    def wait_for_publish(self, timeout: Optional[float] = None) -> None:
        """Block until the broker acknowledged the message (QoS>0) or it was
        written (QoS 0).  A message published while disconnected waits in the
        outbox and is sent after the reconnect; this waits for that too.
        Raises TimeoutError, ConnectionLostError (the client was closed before
        the broker acknowledged it), PublishError (MQTT 5 refusal),
        ValueError (the outbox was full) or NotConnectedError (a QoS 0
        message published while disconnected: dropped, as in paho-mqtt)."""
        state, reason = self._state(-1.0 if timeout is None else max(0.0, float(timeout)))
        if state == _core.PUB_DONE:
            return
        if state == _core.PUB_FAILED:
            raise PublishError(
                f"the broker refused message mid={self.mid} to {self._topic!r}: "
                f"{_core.reason_string(reason)} (reason code 0x{reason:02X})")
        if state == _core.PUB_LOST:
            raise ConnectionLostError(
                f"the client was closed before the broker acknowledged message mid={self.mid} "
                f"to {self._topic!r}; it may not have been delivered")
        raise TimeoutError(f"message mid={self.mid} not acknowledged within {timeout} s")

    def is_published(self) -> bool:
        if self._conn is None:
            return False
        try:
            return self._state(0.0)[0] == _core.PUB_DONE
        except (ValueError, NotConnectedError):
            return False


_core._set_info_type(MQTTMessageInfo, {int(code): code for code in MQTTErrorCode})


def _encode_password(password: Union[str, bytes, None]) -> Optional[bytes]:
    if password is None:
        return None
    if isinstance(password, str):
        return password.encode("utf-8")
    if isinstance(password, (bytes, bytearray)):
        return bytes(password)
    raise TypeError(f"password must be str, bytes or None, not {type(password).__name__}")


def _encode_payload(payload: Any) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if isinstance(payload, (int, float)):
        return str(payload).encode("ascii")
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"payload must be bytes, bytearray, memoryview, str, int, float or None, "
                    f"not {type(payload).__name__}")


def _props_pairs(properties: Optional[Properties]) -> Optional[list]:
    if properties is None:
        return None
    if not isinstance(properties, Properties):
        raise TypeError(f"properties must be sermas_bus.properties.Properties, not {type(properties).__name__}")
    return properties.to_pairs()


def _alpn_wire(protocols: Any) -> Optional[bytes]:
    """tls_set(alpn_protocols=["mqtt"]) -> the ALPN wire format OpenSSL takes
    (each name prefixed by its length), or None."""
    if not protocols:
        return None
    if isinstance(protocols, (str, bytes)):
        raise TypeError("alpn_protocols must be a list of protocol names, e.g. ['mqtt']")
    wire = b""
    for name in protocols:
        raw = name.encode("ascii") if isinstance(name, str) else bytes(name)
        if not 0 < len(raw) < 256:
            raise ValueError(f"ALPN protocol name {name!r} must be 1 to 255 bytes")
        wire += bytes([len(raw)]) + raw
    return wire


# paho's convert_connack_rc_to_reason_code: MQTT 3.1.1 CONNACK return codes
# as the MQTT 5 reason codes a VERSION2 on_connect gets
_CONNACK_V311_AS_V5 = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}

# The MQTT version each broker URI list accepted (the fall-back is paid once
# per process and broker, not on every connect of a one-shot helper or CLI).
_VERSION_THAT_WORKED: Dict[Tuple[str, ...], int] = {}


def _explain_failure(exc: ConnectError, probes: List["_probe.Probe"], timeout: float) -> ConnectError:
    """The specific error for a connect paho reported only as a failure."""
    where = ", ".join(p.uri for p in probes)
    kinds = {p.kind for p in probes}
    details = "; ".join(p.detail for p in probes)
    new: ConnectError
    if kinds == {_probe.REFUSED}:
        new = NothingListeningError(f"could not connect to {where}: {details}; is the broker running, and are "
                                    "the host and port right?")
    elif _probe.WS_REFUSED in kinds:
        new = WebSocketUpgradeError(f"could not connect to {where}: the websocket upgrade was refused "
                                    f"({details}); check the path (ws_set_options(path=...), SERMAS: /mqtt) "
                                    "and that the port is the broker's websocket listener")
    else:
        new = ConnectionClosedError(
            f"could not connect to {where}: the server accepted the connection but closed it after the MQTT "
            f"CONNECT (or sent no CONNACK within {timeout:g} s) with MQTT 5 and with 3.1.1; is it an MQTT "
            "listener with this transport (tcp/websockets, TLS or not)?")
    new.rc = getattr(exc, "rc", None)
    new.reason_code = getattr(exc, "reason_code", None)
    return new


@dataclasses.dataclass
class _Subscription:
    qos: int
    no_local: bool
    retain_as_published: bool
    retain_handling: int
    properties: Optional[Properties]
    # MQTT 5-only options are dropped on an MQTT 3.1.1 connection instead of
    # refusing the subscription (SermasClient's noLocal and identifiers)
    degradable: bool = False

    def needs_v5(self) -> bool:
        return bool(self.no_local or self.retain_as_published or self.retain_handling
                    or self.properties is not None)


class Client:
    """paho-mqtt compatible MQTT client.  See the module docstring for what differs."""

    suppress_exceptions = True

    def __init__(self, callback_api_version: Any = CallbackAPIVersion.VERSION1, client_id: Optional[str] = "",
                 clean_session: Optional[bool] = None, userdata: Any = None, protocol: Any = _AUTO,
                 transport: str = "tcp", reconnect_on_failure: bool = True, manual_ack: bool = False,
                 *, queue_max: int = 10000, spin_us: int = 50, tcp_nodelay: bool = True):
        if isinstance(callback_api_version, str):
            # paho 1.x style: Client("my-id", ...)
            callback_api_version, client_id = CallbackAPIVersion.VERSION1, callback_api_version
        if not isinstance(callback_api_version, CallbackAPIVersion):
            raise ValueError(f"callback_api_version must be CallbackAPIVersion.VERSION1 or VERSION2, "
                             f"not {callback_api_version!r}")
        if protocol is not _AUTO and protocol not in (MQTTv31, MQTTv311, MQTTv5):
            raise ValueError(f"protocol must be MQTTv31, MQTTv311 or MQTTv5, not {protocol!r}")
        if transport not in ("tcp", "websockets"):
            raise ValueError(f"transport must be 'tcp' or 'websockets', not {transport!r} "
                             "('unix' sockets are not supported by paho.mqtt.c)")
        if manual_ack:
            raise ProtocolError("manual_ack is not supported: paho.mqtt.c acknowledges on receipt")
        if client_id is None:
            client_id = ""
        if isinstance(client_id, bytes):
            client_id = client_id.decode("utf-8")
        if not isinstance(client_id, str):
            raise TypeError(f"client_id must be str, not {type(client_id).__name__}")
        if protocol == MQTTv5 and clean_session is not None:
            raise ValueError("clean_session is not used with MQTTv5; pass clean_start to connect()")
        if client_id == "" and clean_session is False:
            raise ValueError("a client_id must be given when clean_session is False")
        self._callback_api_version = callback_api_version
        # "" is sent empty, as paho does: the broker assigns an id (a clean
        # session is required for it, checked above)
        self._client_id = client_id
        self._clean_session = True if clean_session is None else bool(clean_session)
        self._userdata = userdata
        self._protocol_auto = protocol is _AUTO
        self._protocol = MQTTv5 if protocol is _AUTO else protocol
        self._transport = transport
        self._reconnect_on_failure = reconnect_on_failure
        self._conn = _core.Connection(self._client_id, queue_max=queue_max)
        # poll briefly before sleeping for the next message: measured RTT p50
        # 86 -> 61 us (TCP), 98 -> 60 us (websockets); costs <= spin_us of CPU per batch
        self._conn.set_options(spin_us=spin_us)
        # TCP_NODELAY (default): no ~40 ms Nagle stalls on QoS 1 windows and event
        # tails; False trades that latency for ~1.5x QoS 0 flood throughput
        self._conn.set_options(nodelay=bool(tcp_nodelay))
        self._username: Optional[str] = None
        self._password: Optional[bytes] = None
        self._tls: Optional[Dict[str, Any]] = None
        self._tls_tempfile: Optional[str] = None
        self._ws_path = "/mqtt"
        self._ws_headers: Optional[List[Tuple[str, str]]] = None
        self._will: Optional[Tuple[str, bytes, int, bool]] = None
        self._will_props: Optional[Properties] = None
        self._keepalive = 60
        self._connect_timeout = 10.0
        self._max_inflight = 20
        self._reconnect_min = 1.0
        self._reconnect_max = 120.0
        self._uris: Optional[List[str]] = None
        self._clean_start: Any = MQTT_CLEAN_START_FIRST_ONLY
        self._connect_props: Optional[Properties] = None
        self._connected_once = False
        self._mqtt_version = self._protocol
        self._session: Dict[str, Any] = {}
        self._subscriptions: Dict[str, _Subscription] = {}
        self._subs_lock = threading.RLock()
        self._handlers = TopicMatcher()
        self._handler_count = 0
        self._mid = itertools.count(1)
        self._callbacks: Dict[str, Optional[Callback]] = {}
        self._logger: Optional[logging.Logger] = None
        self._pump_lock = threading.RLock()
        self._looping = 0                   # loops delivering right now (any thread)
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._user_disconnect = False
        self._want_connect = False          # connect_async or lost: the loop connects
        self._next_attempt = 0.0
        self._delay = self._reconnect_min
        self._taps: List["_queue.SimpleQueue[Any]"] = []
        self._closed = False
        self._reauth_lock = threading.Lock()
        # paho reports a refused or dropped CONNECT through on_connect /
        # on_disconnect and the loop retries; SermasClient wants it raised
        self._raise_refusals = False
        #: the clear exception of the last refused connect (None after a success)
        self.last_connect_error: Optional[ConnectError] = None
        _live_clients.add(self)

    # ---- callbacks (properties, as in paho) -------------------------------

    def _get_cb(self, name: str) -> Optional[Callable[..., Any]]:
        cb = self._callbacks.get(name)
        return cb.func if cb else None

    def _set_cb(self, name: str, func: Optional[Callable[..., Any]]) -> None:
        self._callbacks[name] = None if func is None else Callback(name, func)
        if name == "on_publish":
            self._conn.set_options(want_published=func is not None)
        if name == "on_message":
            self._routing_changed()

    def _routing_changed(self) -> None:
        """Make the loop pick the new message target for the next message:
        a posted event ends the batch being waited for."""
        self._conn.post(("wake",))

    on_connect = property(lambda s: s._get_cb("on_connect"), lambda s, f: s._set_cb("on_connect", f))
    on_connect_fail = property(lambda s: s._get_cb("on_connect_fail"), lambda s, f: s._set_cb("on_connect_fail", f))
    on_disconnect = property(lambda s: s._get_cb("on_disconnect"), lambda s, f: s._set_cb("on_disconnect", f))
    on_message = property(lambda s: s._get_cb("on_message"), lambda s, f: s._set_cb("on_message", f))
    on_publish = property(lambda s: s._get_cb("on_publish"), lambda s, f: s._set_cb("on_publish", f))
    on_subscribe = property(lambda s: s._get_cb("on_subscribe"), lambda s, f: s._set_cb("on_subscribe", f))
    on_unsubscribe = property(lambda s: s._get_cb("on_unsubscribe"), lambda s, f: s._set_cb("on_unsubscribe", f))
    on_log = property(lambda s: s._get_cb("on_log"), lambda s, f: s._set_cb("on_log", f))
    on_pre_connect = property(lambda s: s._get_cb("on_pre_connect"), lambda s, f: s._set_cb("on_pre_connect", f))

    # ---- paho 2.x callback decorators ----
    # ``@client.connect_callback()`` etc.: each assigns the matching on_* callback
    # (checked like an assignment) and returns the function unchanged, as in paho.

    def _callback_decorator(self, attr: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            setattr(self, attr, func)
            return func
        return decorator

    def connect_callback(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@client.connect_callback()`` sets ``on_connect``."""
        return self._callback_decorator("on_connect")

    def connect_fail_callback(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@client.connect_fail_callback()`` sets ``on_connect_fail``."""
        return self._callback_decorator("on_connect_fail")

    def disconnect_callback(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@client.disconnect_callback()`` sets ``on_disconnect``."""
        return self._callback_decorator("on_disconnect")

    def message_callback(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@client.message_callback()`` sets ``on_message``."""
        return self._callback_decorator("on_message")

    def publish_callback(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@client.publish_callback()`` sets ``on_publish``."""
        return self._callback_decorator("on_publish")

    def subscribe_callback(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@client.subscribe_callback()`` sets ``on_subscribe``."""
        return self._callback_decorator("on_subscribe")

    def unsubscribe_callback(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@client.unsubscribe_callback()`` sets ``on_unsubscribe``."""
        return self._callback_decorator("on_unsubscribe")

    def log_callback(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@client.log_callback()`` sets ``on_log``."""
        return self._callback_decorator("on_log")

    def pre_connect_callback(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@client.pre_connect_callback()`` sets ``on_pre_connect``."""
        return self._callback_decorator("on_pre_connect")

    # The socket is paho.mqtt.c's, read and written by its own thread: there is
    # no socket to hand to an external event loop.  A program that registers
    # on_socket_open / on_socket_close does so to add_reader() the socket and
    # would silently never receive anything, so those decorators raise.  The
    # write-side ones are honoured by never being needed: want_write() is
    # always False, so on_socket_register_write has nothing to announce.

    def _socket_lifecycle_unsupported(self, name: str) -> ProtocolError:
        return ProtocolError(
            f"{name}() is not supported: the socket belongs to paho.mqtt.c's network thread, so "
            f"on_{name[:-len('_callback')]} would never be called; for an external event loop, "
            "after connect() add_reader(client.socket(), client.loop_read) (its fileno() is readable "
            "while received events wait) and call loop_misc() periodically, or use sermas_bus.aio")

    def socket_open_callback(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Raises ``ProtocolError``: the socket is paho.mqtt.c's (use ``socket()``)."""
        raise self._socket_lifecycle_unsupported("socket_open_callback")

    def socket_close_callback(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Raises ``ProtocolError``: the socket is paho.mqtt.c's (use ``socket()``)."""
        raise self._socket_lifecycle_unsupported("socket_close_callback")

    def socket_register_write_callback(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: sets ``on_socket_register_write``, which is never called:
        paho.mqtt.c's thread writes, ``want_write()`` is always False."""
        return self._callback_decorator("on_socket_register_write")

    def socket_unregister_write_callback(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: sets ``on_socket_unregister_write``, which is never called
        (nothing is ever registered for writing)."""
        return self._callback_decorator("on_socket_unregister_write")

    # ---- end of paho 2.x callback decorators ----

    def message_callback_add(self, sub: str, callback: Callable[..., Any]) -> None:
        """Route messages matching ``sub`` to ``callback`` instead of on_message."""
        validate_topic_filter(sub)
        if sub not in self._handlers:
            self._handler_count += 1
        self._handlers[sub] = Callback("on_message", callback)
        self._routing_changed()

    def message_callback_remove(self, sub: str) -> None:
        try:
            del self._handlers[sub]
            self._handler_count = max(0, self._handler_count - 1)
            self._routing_changed()
        except KeyError:
            pass

    def topic_callback(self, sub: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            self.message_callback_add(sub, func)
            return func
        return decorator

    def _call(self, name: str, primary: Sequence[Any], alternative: Optional[Sequence[Any]] = None) -> None:
        cb = self._callbacks.get(name)
        if cb is None:
            return
        try:
            cb.call(primary, alternative)
        except Exception as exc:
            self._callback_failed(name, exc)

    def _callback_failed(self, name: str, exc: BaseException) -> None:
        logger.error("Caught exception in %s: %s", name, exc, exc_info=exc)
        if not self.suppress_exceptions:
            raise exc

    def _on_message_error(self, exc: BaseException) -> None:
        self._callback_failed("on_message", exc)

    def _log(self, level: int, fmt: str, *args: Any) -> None:
        if self._logger is not None:
            self._logger.log(_PY_LEVELS.get(level, logging.DEBUG), fmt, *args)
        cb = self._callbacks.get("on_log")
        if cb is not None:
            try:
                cb.call((self, self._userdata, level, fmt % args if args else fmt))
            except Exception as exc:
                self._callback_failed("on_log", exc)

    # ---- configuration ------------------------------------------------------

    def user_data_set(self, userdata: Any) -> None:
        self._userdata = userdata

    def user_data_get(self) -> Any:
        return self._userdata

    @property
    def protocol(self) -> int:
        """The MQTT version in use (after any fall-back) or requested."""
        return self._mqtt_version

    @property
    def client_id(self) -> str:
        return self._client_id

    def username_pw_set(self, username: Optional[str], password: Union[str, bytes, None] = None) -> None:
        if username is not None and not isinstance(username, str):
            raise TypeError(f"username must be str or None, not {type(username).__name__}")
        self._username = username
        self._password = _encode_password(password)

    def enable_logger(self, logger_: Optional[logging.Logger] = None) -> None:
        self._logger = logger_ or logger

    def disable_logger(self) -> None:
        self._logger = None

    def will_set(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False,
                 properties: Optional[Properties] = None) -> None:
        if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic:
            raise ValueError(f"invalid will topic {topic!r}: must be a non-empty topic without wildcards")
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid will QoS {qos!r}: must be 0, 1 or 2")
        self._will = (topic, _encode_payload(payload), qos, bool(retain))
        self._will_props = properties

    def will_clear(self) -> None:
        self._will = None
        self._will_props = None

    def reconnect_delay_set(self, min_delay: float = 1, max_delay: float = 120) -> None:
        if min_delay <= 0 or max_delay < min_delay:
            raise ValueError("reconnect delays must satisfy 0 < min_delay <= max_delay")
        self._reconnect_min, self._reconnect_max = float(min_delay), float(max_delay)
        self._delay = self._reconnect_min

    def max_inflight_messages_set(self, inflight: int) -> None:
        """QoS>0 messages awaiting acknowledgement (0 = as many as the broker allows)."""
        if inflight < 0:
            raise ValueError("inflight must be >= 0")
        self._max_inflight = inflight or 65535

    def max_queued_messages_set(self, queue_size: int) -> "Client":
        """Bound on outgoing QoS>0 messages not yet acknowledged (queued while
        disconnected, or in flight), as in paho: past it ``publish`` answers
        ``MQTT_ERR_QUEUE_SIZE``.  0 (the default) means no bound.  The inbound
        queue is bounded by ``Client(queue_max=...)``."""
        if not isinstance(queue_size, int) or queue_size < 0:
            raise ValueError("queue_size must be an int >= 0")
        self._conn.set_options(max_queued=queue_size)
        return self

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every message ``publish`` accepted is acknowledged
        (QoS>0) or written (QoS 0), including those queued while
        disconnected.  Returns False if ``timeout`` s passed first."""
        return self._conn.flush(-1.0 if timeout is None else max(0.0, float(timeout)))

    def message_retry_set(self, retry: int) -> None:
        """Deprecated in paho too; retries are the library's business."""

    def connect_timeout_set(self, timeout: float) -> None:
        self._connect_timeout = float(timeout)

    @property
    def connect_timeout(self) -> float:
        return self._connect_timeout

    @connect_timeout.setter
    def connect_timeout(self, value: float) -> None:
        self._connect_timeout = float(value)

    def ws_set_options(self, path: str = "/mqtt", headers: Any = None) -> None:
        self._ws_path = path if path.startswith("/") else "/" + path
        if callable(headers):
            headers = headers({})
        if headers is None:
            self._ws_headers = None
        elif isinstance(headers, dict):
            self._ws_headers = [(str(k), str(v)) for k, v in headers.items()]
        else:
            raise TypeError("headers must be a dict, a callable returning one, or None")

    def tls_set(self, ca_certs: Optional[str] = None, certfile: Optional[str] = None,
                keyfile: Optional[str] = None, cert_reqs: Any = ssl.CERT_REQUIRED, tls_version: Any = None,
                ciphers: Optional[str] = None, keyfile_password: Optional[str] = None,
                alpn_protocols: Any = None) -> None:
        """TLS with certificate verification (system trust store unless ca_certs)."""
        if tls_version not in (None, getattr(ssl, "PROTOCOL_TLS", None), ssl.PROTOCOL_TLS_CLIENT):
            raise ProtocolError("tls_version: only the default (negotiate the best TLS version) is "
                                "supported by paho.mqtt.c here; leave it unset")
        alpn = _alpn_wire(alpn_protocols)
        for name, path in (("ca_certs", ca_certs), ("certfile", certfile), ("keyfile", keyfile)):
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(f"tls_set: {name} {path!r} does not exist")
        self._tls = {"ca_certs": ca_certs, "certfile": certfile, "keyfile": keyfile,
                     "keyfile_password": keyfile_password, "ciphers": ciphers,
                     "verify": cert_reqs != ssl.CERT_NONE, "check_hostname": cert_reqs != ssl.CERT_NONE,
                     "alpn": alpn}

    def tls_set_context(self, context: Optional[ssl.SSLContext] = None) -> None:
        """Use an ``ssl.SSLContext``'s trust settings (default: system store,
        which honours SSL_CERT_FILE / SSL_CERT_DIR)."""
        if context is None:
            context = ssl.create_default_context()
        if not isinstance(context, ssl.SSLContext):
            raise TypeError("context must be an ssl.SSLContext")
        ca_file = None
        cas = context.get_ca_certs(binary_form=True)
        if cas:
            # hand the context's loaded CAs to paho.mqtt.c's OpenSSL as a file
            fd, ca_file = tempfile.mkstemp(prefix="sermas-bus-ca-", suffix=".pem")
            with os.fdopen(fd, "w") as f:
                for der in cas:
                    f.write(ssl.DER_cert_to_PEM_cert(der))
            self._drop_tls_tempfile()
            self._tls_tempfile = ca_file
        verify = context.verify_mode != ssl.CERT_NONE
        self._tls = {"ca_certs": ca_file, "verify": verify, "check_hostname": verify and context.check_hostname}

    def tls_insecure_set(self, value: bool) -> None:
        """True: do not check the server's host name (for tests only)."""
        if self._tls is None:
            raise ValueError("call tls_set() or tls_set_context() before tls_insecure_set()")
        # paho's meaning: skip the host-name check (the chain is still verified)
        self._tls["check_hostname"] = not value

    def _drop_tls_tempfile(self) -> None:
        if self._tls_tempfile:
            try:
                os.unlink(self._tls_tempfile)
            except OSError:
                pass
            self._tls_tempfile = None

    def proxy_set(self, **proxy_args: Any) -> None:
        raise ProtocolError("proxy_set is not supported by this client")

    # ---- connecting -----------------------------------------------------------

    def _set_target(self, host: Any, port: int, keepalive: int, clean_start: Any,
                    properties: Optional[Properties]) -> None:
        if keepalive < 0:
            raise ValueError("keepalive must be >= 0")
        if properties is not None and self._protocol != MQTTv5:
            raise ProtocolError("connect properties need protocol=MQTTv5")
        self._uris = broker_uris(host, port, self._transport, self._tls is not None, self._ws_path)
        self._keepalive = keepalive
        self._clean_start = clean_start
        self._connect_props = properties

    def connect(self, host: Any = "localhost", port: int = 1883, keepalive: int = 60, bind_address: str = "",
                bind_port: int = 0, clean_start: Any = MQTT_CLEAN_START_FIRST_ONLY,
                properties: Optional[Properties] = None) -> MQTTErrorCode:
        """Connect now (blocking).  ``host`` may be a name, a URL or a list of
        them (fail-over).  Raises a ``sermas_bus.errors.ConnectError`` subclass
        when the broker cannot be reached or refuses."""
        if bind_address or bind_port:
            raise ProtocolError("bind_address/bind_port are not supported by paho.mqtt.c")
        self._set_target(host, port, keepalive, clean_start, properties)
        self._user_disconnect = False
        self._connect_or_report()
        return MQTT_ERR_SUCCESS

    def connect_async(self, host: Any = "localhost", port: int = 1883, keepalive: int = 60,
                      bind_address: str = "", bind_port: int = 0, clean_start: Any = MQTT_CLEAN_START_FIRST_ONLY,
                      properties: Optional[Properties] = None) -> MQTTErrorCode:
        """Connect from the loop thread (retrying with back-off until it works)."""
        if bind_address or bind_port:
            raise ProtocolError("bind_address/bind_port are not supported by paho.mqtt.c")
        self._set_target(host, port, keepalive, clean_start, properties)
        self._user_disconnect = False
        self._want_connect = True
        self._next_attempt = 0.0
        self._conn.post(("wake",))
        return MQTT_ERR_SUCCESS

    def connect_srv(self, *args: Any, **kwargs: Any) -> None:
        raise ProtocolError("connect_srv (DNS SRV lookup) is not supported; pass the broker URL")

    def reconnect(self) -> MQTTErrorCode:
        if self._uris is None:
            raise ValueError("reconnect() before connect(): call connect() first")
        self._user_disconnect = False
        if self._conn.is_connected():
            self._conn.disconnect(0.0, 0, None)   # paho's reconnect() drops the connection first
        self._connect_or_report()
        return MQTT_ERR_SUCCESS

    @staticmethod
    def _is_refusal(exc: BaseException) -> bool:
        """Failures paho reports from the loop, not from connect(): the broker
        answered the CONNECT with a refusal, or closed the connection after it.
        (No server, TLS and websocket-upgrade failures raise, as in paho.)"""
        return isinstance(exc, ConnectionClosedError) or (
            isinstance(exc, ConnectError) and getattr(exc, "reason_code", None) is not None)

    def _connect_or_report(self) -> None:
        try:
            self._connect_now()
        except ConnectError as exc:
            if self._raise_refusals or not self._is_refusal(exc):
                raise
            self._report_refusal(exc)

    def _report_refusal(self, exc: ConnectError) -> None:
        """As paho: on_connect gets the CONNACK's reason code (if there was
        one), on_disconnect follows, and the loop tries again with back-off
        (unless reconnect_on_failure=False)."""
        self.last_connect_error = exc
        self._log(MQTT_LOG_WARNING, "%s", exc)
        if self._reconnect_on_failure:
            self._want_connect = True
            self._next_attempt = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, self._reconnect_max)
        self._conn.post(("refused", getattr(exc, "reason_code", None)))

    def _clean_flag(self) -> bool:
        if self._mqtt_version != MQTTv5:
            return self._clean_session
        if self._clean_start == MQTT_CLEAN_START_FIRST_ONLY:
            return not self._connected_once
        return bool(self._clean_start)

    def _tls_diagnosis(self) -> Optional[str]:
        """After a failed TLS connect without a TLS error text (paho checks the
        host name without reporting why): redo the handshake with Python's ssl
        and the same trust settings to say what is wrong.  None if it works."""
        tls = self._tls or {}
        for uri in self._uris or []:
            if not uri.startswith(("ssl://", "wss://")):
                continue
            host, port = host_port(uri)
            ctx = ssl.create_default_context(cafile=tls.get("ca_certs"), capath=tls.get("ca_path"))
            ctx.check_hostname = bool(tls.get("check_hostname", True))
            ctx.verify_mode = ssl.CERT_REQUIRED if tls.get("verify", True) else ssl.CERT_NONE
            try:
                with socket.create_connection((host, port), timeout=3) as raw:
                    with ctx.wrap_socket(raw, server_hostname=host):
                        pass
            except ssl.SSLCertVerificationError as exc:
                return f"{uri}: certificate verification failed: {exc.verify_message or exc}"
            except ssl.SSLError as exc:
                return f"{uri}: {exc.reason or exc}"
            except OSError:
                continue
        return None

    def _connect_once(self, version: int) -> Dict[str, Any]:
        self._mqtt_version = version
        v5 = version == MQTTv5
        will = self._will
        return self._conn.connect(
            self._uris, mqtt_version=version, keepalive=self._keepalive, clean=self._clean_flag(),
            username=self._username, password=self._password, will=will,
            will_props=_props_pairs(self._will_props) if v5 else None,
            props=_props_pairs(self._connect_props) if v5 else None,
            tls=self._tls, http_headers=self._ws_headers, timeout=self._connect_timeout,
            max_inflight=self._max_inflight)

    def _fall_back(self, why: str) -> Dict[str, Any]:
        logger.warning("broker %s %s; falling back to MQTT 3.1.1 (noLocal, retainAsPublished, "
                       "retainHandling and properties become unavailable)", ", ".join(self._uris or []), why)
        self._protocol = MQTTv311
        try:
            return self._connect_once(MQTTv311)
        except ConnectError:
            self._protocol = MQTTv5            # 3.1.1 did not help: try MQTT 5 first next time
            raise

    def _connect_with_fall_back(self) -> Dict[str, Any]:
        """One connect: MQTT 5 first (unless fixed), 3.1.1 when the broker
        refuses MQTT 5 -- by CONNACK code 1, or by closing the socket (or
        staying silent) after the CONNECT, as RabbitMQ 3.10 and amqtt do."""
        may_fall_back = self._protocol_auto and self._protocol == MQTTv5
        try:
            return self._connect_once(self._protocol)
        except ProtocolVersionError:
            if not may_fall_back:
                raise
            return self._fall_back("refused MQTT 5 (CONNACK code 1)")
        except ConnectError as exc:
            if type(exc) is not ConnectError:
                raise                          # refused with a reason, TLS: nothing to retry
            if uses_tls(self._uris or []):
                why = self._tls_diagnosis()
                if why is not None:
                    raise TLSError(f"TLS handshake failed: {why}; check the CA (tls_set(ca_certs=...) or the "
                                   "system store, SSL_CERT_FILE), the host name in the broker's certificate, "
                                   "or use tls_insecure_set(True) for tests") from None
            probes = [_probe.probe(u) for u in self._uris or []]
            failure = exc
            if may_fall_back and any(p.kind == _probe.ANSWERS for p in probes):
                try:
                    return self._fall_back("closed the connection after an MQTT 5 CONNECT without a CONNACK")
                except ConnectError as again:
                    if type(again) is not ConnectError:
                        raise
                    failure = again
            raise _explain_failure(failure, probes, self._connect_timeout) from None

    def _connect_now(self) -> Dict[str, Any]:
        """Connect (blocking), fall back to 3.1.1 if allowed, restore
        subscriptions, and queue on_connect for the loop thread."""
        if _inherited_paho_state:
            raise ForkError(
                "cannot connect in this process: it was forked while an MQTT connection was open, and "
                "paho.mqtt.c's process-wide state (its receive thread and locks) does not survive fork(); "
                "fork before connecting, or use multiprocessing with the 'spawn' or 'forkserver' start method")
        cb = self._callbacks.get("on_pre_connect")
        if cb is not None:
            self._call("on_pre_connect", (self, self._userdata))
        self._log(MQTT_LOG_DEBUG, "Connecting to %s as %s", ", ".join(self._uris or []), self._client_id)
        key = tuple(self._uris or ())
        if self._protocol_auto and _VERSION_THAT_WORKED.get(key) == MQTTv311:
            self._protocol = MQTTv311          # this broker fell back before: no MQTT 5 attempt
        info = self._connect_with_fall_back()
        if self._protocol_auto:
            _VERSION_THAT_WORKED[key] = self._protocol
        self._mqtt_version = info["mqtt_version"]
        self._session = info
        first = not self._connected_once
        self._connected_once = True
        self.last_connect_error = None
        self._delay = self._reconnect_min
        self._want_connect = False
        if not info["session_present"] or first:
            self._restore_subscriptions()
        self._conn.post(("connected", info))
        return info

    def _restore_subscriptions(self) -> None:
        """Subscribe again after a connect without a session.  One SUBSCRIBE
        per set of properties; each filter is judged on its own: one the
        connection cannot carry, or the broker refuses, is reported (log and
        on_subscribe with its code) and dropped, the others stay."""
        with self._subs_lock:
            subs = list(self._subscriptions.items())
        groups: Dict[int, List[Tuple[str, _Subscription]]] = {}
        for t, s in subs:
            if self._mqtt_version != MQTTv5 and s.needs_v5() and not s.degradable:
                logger.error("cannot restore the subscription to %r: its MQTT 5 options do not exist in "
                             "MQTT 3.1.1 (the broker fell back); dropped", t)
                with self._subs_lock:
                    if self._subscriptions.get(t) is s:
                        del self._subscriptions[t]
                self._conn.post(("subscribed", next(self._mid) % 65536 or 1, [0x80]))
                continue
            groups.setdefault(id(s.properties), []).append((t, s))
        for group in groups.values():
            props = group[0][1].properties if self._mqtt_version == MQTTv5 else None
            try:
                _mid, codes = self._send_subscribe(group, props, notify=False)
            except Exception as exc:   # the loop must survive; the user hears about it
                logger.error("restoring %d subscription(s) after reconnect failed: %s", len(group), exc)
                continue
            for (t, _s), code in zip(group, codes):
                if code >= 0x80:
                    logger.error("the broker refused to restore the subscription to %r (code 0x%02X: %s)",
                                 t, code, _core.reason_string(code))

    # ---- publish ------------------------------------------------------------

    def publish(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False,
                properties: Optional[Properties] = None) -> MQTTMessageInfo:
        """Publish; safe from any thread and from callbacks.  ``payload``:
        bytes-like, str (UTF-8), int/float (as text) or None."""
        # one C call: validation, encoding, window, send, and the info object
        return self._conn.publish(topic, payload, qos, retain, properties)

    send = publish   # the SERMAS documentation's example calls client.send(...)

    # ---- subscribe ----------------------------------------------------------

    def _normalise_subscriptions(self, topic: Any, qos: int, options: Optional[SubscribeOptions],
                                 properties: Optional[Properties]) -> List[Tuple[str, _Subscription]]:
        def one(t: Any, q: Any) -> Tuple[str, _Subscription]:
            if isinstance(t, bytes):
                t = t.decode("utf-8")
            if not isinstance(t, str):
                raise TypeError(f"topic filter must be str, not {type(t).__name__}")
            validate_topic_filter(t)
            if isinstance(q, SubscribeOptions):
                o = q
            elif options is not None:
                o = options
            else:
                if not isinstance(q, int) or q not in (0, 1, 2):
                    raise ValueError(f"invalid QoS {q!r} for {t!r}: must be 0, 1 or 2")
                o = SubscribeOptions(qos=q)
            return t, _Subscription(o.QoS, bool(o.noLocal), bool(o.retainAsPublished),
                                    int(o.retainHandling), properties)

        if isinstance(topic, (str, bytes)):
            return [one(topic, qos)]
        if isinstance(topic, tuple) and len(topic) == 2 and isinstance(topic[0], (str, bytes)):
            return [one(topic[0], topic[1])]
        if isinstance(topic, list):
            if not topic:
                raise ValueError("subscribe: the topic list is empty")
            out = []
            for item in topic:
                if not (isinstance(item, tuple) and len(item) == 2):
                    raise ValueError("subscribe: list items must be (topic, qos) or (topic, SubscribeOptions)")
                out.append(one(item[0], item[1]))
            return out
        raise TypeError("subscribe: topic must be a str, a (topic, qos) tuple or a list of them")

    def _check_version_can(self, subs: List[Tuple[str, _Subscription]]) -> None:
        if self._mqtt_version == MQTTv5:
            return
        for t, s in subs:
            if s.needs_v5() and not s.degradable:
                raise ProtocolError(
                    f"subscribe {t!r}: noLocal / retainAsPublished / retainHandling / properties need "
                    f"MQTT 5, but this connection uses MQTT {'3.1.1' if self._mqtt_version == 4 else '3.1'}"
                    " (the broker refused MQTT 5 or protocol=MQTTv311 was given); "
                    "drop the option or use an MQTT 5 broker")

    def _subscribe_items(self, subs: List[Tuple[str, _Subscription]]) -> List[Tuple[str, int, bool, bool, int]]:
        v5 = self._mqtt_version == MQTTv5
        return [(t, s.qos, s.no_local and v5, s.retain_as_published and v5, s.retain_handling if v5 else 0)
                for t, s in subs]

    def _forget_refused(self, subs: List[Tuple[str, _Subscription]], codes: List[int]) -> None:
        """A refused filter is not restored after a reconnect (no phantom)."""
        with self._subs_lock:
            for (t, s), code in zip(subs, codes):
                if code >= 0x80 and self._subscriptions.get(t) is s:
                    del self._subscriptions[t]

    def _send_subscribe(self, subs: List[Tuple[str, _Subscription]], properties: Optional[Properties],
                        notify: bool = True) -> Tuple[int, List[int]]:
        self._check_version_can(subs)
        props = _props_pairs(properties) if self._mqtt_version == MQTTv5 else None
        codes = self._conn.subscribe(self._subscribe_items(subs), props)
        mid = next(self._mid) % 65536 or next(self._mid)
        for (t, s), code in zip(subs, codes):
            if code >= 0x80:
                logger.warning("broker refused subscription to %r (code 0x%02X: %s)", t, code,
                               _core.reason_string(code))
            elif code < s.qos:
                logger.warning("broker granted QoS %d for %r, less than the %d asked for", code, t, s.qos)
        self._forget_refused(subs, codes)
        if notify or any(code >= 0x80 for code in codes):
            self._conn.post(("subscribed", mid, codes))
        return mid, codes

    def _subscribe_now(self, topic: Any, options: SubscribeOptions, properties: Optional[Properties],
                       degradable: bool) -> Optional[List[int]]:
        """Register and (when connected) send one subscription; the broker's
        reason codes, or None when it waits for the connect (SermasClient)."""
        subs = self._normalise_subscriptions(topic, 0, options, properties)
        for _t, s in subs:
            s.degradable = degradable
        if not self._protocol_auto or self._connected_once:
            self._check_version_can(subs)
        with self._subs_lock:
            for t, s in subs:
                self._subscriptions[t] = s
        if not self._conn.is_connected():
            return None
        return self._send_subscribe(subs, properties)[1]

    def subscribe(self, topic: Any, qos: int = 0, options: Optional[SubscribeOptions] = None,
                  properties: Optional[Properties] = None) -> Tuple[MQTTErrorCode, Optional[int]]:
        """Subscribe and remember it (restored after every reconnect).

        Blocks until the broker's SUBACK when connected; returns (rc, mid).
        When not connected the subscription is kept and sent on connect, and
        (MQTT_ERR_NO_CONN, None) is returned, as paho does."""
        if qos not in (0, 1, 2) and options is None and isinstance(topic, (str, bytes)):
            raise ValueError(f"invalid QoS {qos!r}: must be 0, 1 or 2")
        if properties is not None and self._protocol != MQTTv5:
            raise ProtocolError("subscribe properties need MQTT 5")
        subs = self._normalise_subscriptions(topic, qos, options, properties)
        if not self._protocol_auto or self._connected_once:
            self._check_version_can(subs)
        with self._subs_lock:
            for t, s in subs:
                self._subscriptions[t] = s
        if not self._conn.is_connected():
            return MQTT_ERR_NO_CONN, None
        mid, _codes = self._send_subscribe(subs, properties)
        return MQTT_ERR_SUCCESS, mid

    def unsubscribe(self, topic: Union[str, List[str]],
                    properties: Optional[Properties] = None) -> Tuple[MQTTErrorCode, Optional[int]]:
        topics = [topic] if isinstance(topic, str) else list(topic)
        if not topics or not all(isinstance(t, str) for t in topics):
            raise ValueError("unsubscribe: topic must be a str or a non-empty list of str")
        for t in topics:
            validate_topic_filter(t)
        with self._subs_lock:
            for t in topics:
                self._subscriptions.pop(t, None)
        if not self._conn.is_connected():
            return MQTT_ERR_NO_CONN, None
        props = _props_pairs(properties) if self._mqtt_version == MQTTv5 else None
        codes = self._conn.unsubscribe(topics, props)
        mid = next(self._mid) % 65536 or next(self._mid)
        self._conn.post(("unsubscribed", mid, codes))
        return MQTT_ERR_SUCCESS, mid

    # ---- disconnect / close ---------------------------------------------------

    def disconnect(self, reasoncode: Optional[ReasonCode] = None, properties: Optional[Properties] = None,
                   timeout: float = 5.0) -> MQTTErrorCode:
        """Disconnect cleanly: waits up to ``timeout`` s for in-flight QoS>0
        publishes, sends DISCONNECT, and stops reconnecting.  The loop delivers
        what had arrived before, calls on_disconnect, and loop_forever returns."""
        self._user_disconnect = True
        self._want_connect = False
        reason = int(reasoncode) if reasoncode is not None else 0
        props = _props_pairs(properties) if self._mqtt_version == MQTTv5 else None
        was = self._conn.disconnect(timeout, reason, props)
        if self._thread is not None or self._looping:
            self._conn.post(("disconnected", was))   # the running loop reports it, in order
        else:
            self._on_disconnected(False, True)
        return MQTT_ERR_SUCCESS if was else MQTT_ERR_NO_CONN

    def reauthenticate(self, username: Optional[str], password: Union[str, bytes, None] = None,
                       timeout: float = 5.0) -> Dict[str, Any]:
        """Reconnect with new credentials, keeping the session.

        For token-based brokers (SERMAS: the JWT is the username): waits up to
        ``timeout`` for in-flight publishes, disconnects, and connects again
        without a clean start, so the broker keeps subscriptions and queues
        QoS>0 messages meanwhile (MQTT 5 needs a SessionExpiryInterval > 0 in
        the connect properties; 3.1.1 needs clean_session=False)."""
        if self._uris is None:
            raise ValueError("reauthenticate() before connect(): call connect() first")
        self.username_pw_set(username, password)
        with self._reauth_lock:
            self._conn.disconnect(timeout, 0, None)
            self._user_disconnect = False
            return self._connect_now()

    def is_connected(self) -> bool:
        return bool(self._conn.is_connected())

    def close(self) -> None:
        """Disconnect, stop the loop thread and release the connection."""
        if self._closed:
            return
        self._closed = True
        self._user_disconnect = True
        try:
            if self._conn.is_connected():
                self._conn.disconnect(1.0, 0, None)
        finally:
            self.loop_stop()
            self._conn.close()
            self._drop_tls_tempfile()
            for tap in list(self._taps):
                tap.put(_END)             # messages() iterators end

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self.is_connected() else "disconnected"
        return f"<sermas_bus.client.Client id={self._client_id!r} {state} mqtt={self._mqtt_version}>"

    # ---- the loop -----------------------------------------------------------

    def _message_target(self) -> Tuple[Any, Tuple[Any, ...]]:
        """What the C pump calls per message: the user's on_message directly
        (fast path) unless per-topic callbacks or taps need routing."""
        if self._handler_count or self._taps:
            return self._dispatch_message, ()
        cb = self._callbacks.get("on_message")
        if cb is None:
            return self._drop_message, ()
        return cb.func, cb.message_prefix(self, self._userdata)

    @staticmethod
    def _drop_message(msg: Any) -> None:
        pass

    def _dispatch_message(self, msg: Any) -> None:
        for tap in self._taps:
            tap.put(msg)
        matched = False
        if self._handler_count:
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = None
            if topic is not None:
                for cb in self._handlers.iter_match(topic):
                    matched = True
                    try:
                        cb.call((self, self._userdata, msg))
                    except Exception as exc:
                        self._callback_failed("on_message", exc)
        if not matched:
            cb = self._callbacks.get("on_message")
            if cb is not None:
                try:
                    cb.call((self, self._userdata, msg))
                except Exception as exc:
                    self._callback_failed("on_message", exc)

    def _handle_event(self, ev: Any) -> None:
        kind = ev[0]
        if kind == "published":
            self._on_published(ev[1], ev[2])
        elif kind == "lost":
            self._on_disconnected(True, False)
        elif kind == "connected":
            self._on_connected(ev[1])
        elif kind == "subscribed":
            self._on_subscribed(ev[1], ev[2])
        elif kind == "unsubscribed":
            self._on_unsubscribed(ev[1], ev[2])
        elif kind == "disconnected":
            self._on_disconnected(False, ev[1])
        elif kind == "refused":
            self._on_refused(ev[1])

    def _on_refused(self, code: Optional[int]) -> None:
        v5 = self._mqtt_version == MQTTv5
        if code is not None:
            # paho's on_connect gets MQTT 5 reason codes for 3.1.1 refusals too
            v5_code = code if v5 else _CONNACK_V311_AS_V5.get(code, 0x80)
            rc = reason_code_from_int(PacketTypes.CONNACK, v5_code)
            props = Properties(PacketTypes.CONNACK)
            v2 = (self, self._userdata, ConnectFlags(False), rc, props)
            v1 = (self, self._userdata, {"session present": 0}, rc, props) if v5 else \
                (self, self._userdata, {"session present": 0}, code)
            self._dispatch_version("on_connect", v1, v2)
        rc_int = MQTT_ERR_CONN_REFUSED if code is not None else MQTT_ERR_CONN_LOST
        drc = ReasonCode(PacketTypes.DISCONNECT, identifier=0x80)
        dprops = Properties(PacketTypes.DISCONNECT)
        v2d = (self, self._userdata, DisconnectFlags(False), drc, dprops)
        v1d = (self, self._userdata, drc, dprops) if v5 else (self, self._userdata, rc_int)
        self._dispatch_version("on_disconnect", v1d, v2d)

    def _on_connected(self, info: Dict[str, Any]) -> None:
        v5 = info["mqtt_version"] == MQTTv5
        sp = bool(info["session_present"])
        rc = ReasonCode(PacketTypes.CONNACK, identifier=0)
        props = info["properties"] if isinstance(info["properties"], Properties) else Properties(PacketTypes.CONNACK)
        v2 = (self, self._userdata, ConnectFlags(sp), rc, props)
        v1 = (self, self._userdata, {"session present": int(sp)}, rc, props) if v5 else \
            (self, self._userdata, {"session present": int(sp)}, 0)
        self._log(MQTT_LOG_INFO, "Connected to %s (MQTT %s)", info["server_uri"], "5" if v5 else "3.1.1")
        self._dispatch_version("on_connect", v1, v2)

    def _dispatch_version(self, name: str, v1: Sequence[Any], v2: Sequence[Any]) -> None:
        if self._callback_api_version == CallbackAPIVersion.VERSION2:
            self._call(name, v2, v1)
        else:
            self._call(name, v1, v2)

    def _on_disconnected(self, lost: bool, was_connected: bool) -> None:
        v5 = self._mqtt_version == MQTTv5
        rc_int = MQTT_ERR_CONN_LOST if lost else MQTT_ERR_SUCCESS
        rc = ReasonCode(PacketTypes.DISCONNECT, identifier=0x80 if lost else 0)
        props = Properties(PacketTypes.DISCONNECT)
        v2 = (self, self._userdata, DisconnectFlags(False), rc, props)
        v1 = (self, self._userdata, rc, props) if v5 else (self, self._userdata, rc_int)
        if lost:
            self._log(MQTT_LOG_WARNING, "Connection lost")
            if self._reconnect_on_failure and not self._user_disconnect:
                self._want_connect = True
                self._next_attempt = time.monotonic() + self._delay
        self._dispatch_version("on_disconnect", v1, v2)

    def _on_published(self, mid: int, reason: int) -> None:
        rc = reason_code_from_int(PacketTypes.PUBACK, reason)
        v2 = (self, self._userdata, mid, rc, Properties(PacketTypes.PUBACK))
        v1 = (self, self._userdata, mid)
        self._dispatch_version("on_publish", v1, v2)

    def _on_subscribed(self, mid: int, codes: List[int]) -> None:
        rcs = [reason_code_from_int(PacketTypes.SUBACK, c) for c in codes]
        props = Properties(PacketTypes.SUBACK)
        v2 = (self, self._userdata, mid, rcs, props)
        v1 = (self, self._userdata, mid, rcs, props) if self._mqtt_version == MQTTv5 else \
            (self, self._userdata, mid, tuple(codes))
        self._dispatch_version("on_subscribe", v1, v2)

    def _on_unsubscribed(self, mid: int, codes: List[int]) -> None:
        # MQTT 3.1.1's UNSUBACK carries no reason codes: paho passes []
        rcs = [reason_code_from_int(PacketTypes.UNSUBACK, c) for c in codes] \
            if self._mqtt_version == MQTTv5 else []
        props = Properties(PacketTypes.UNSUBACK)
        v2 = (self, self._userdata, mid, rcs, props)
        v1 = (self, self._userdata, mid, props, rcs) if self._mqtt_version == MQTTv5 else \
            (self, self._userdata, mid)
        self._dispatch_version("on_unsubscribe", v1, v2)

    def _maybe_connect(self) -> None:
        """(Re)connect when connect_async asked for it or the connection was lost."""
        if not self._want_connect or self._user_disconnect or self._uris is None:
            return
        if time.monotonic() < self._next_attempt:
            return
        try:
            self._connect_now()
        except ClosedError:
            return                             # closed meanwhile: the loop is ending
        except ConnectError as exc:
            if self._is_refusal(exc) and not self._raise_refusals:
                self._report_refusal(exc)      # on_connect(reason) + on_disconnect, as paho
                if not self._reconnect_on_failure:
                    self._want_connect = False
                return
            self._log(MQTT_LOG_WARNING, "Connect to %s failed: %s; retrying in %.1f s",
                      ", ".join(self._uris), exc, self._delay)
            self._call("on_connect_fail", (self, self._userdata))
            self._next_attempt = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, self._reconnect_max)

    def _pump_once(self, timeout: float) -> List[Any]:
        if self._want_connect and not self._user_disconnect:
            timeout = max(0.0, min(timeout, self._next_attempt - time.monotonic()))
        cb, args = self._message_target()
        with self._pump_lock:
            self._looping += 1      # a loop is delivering: disconnect() posts to it
            try:
                events = self._conn.pump(cb, args, self._on_message_error, timeout, _BATCH)
                for ev in events:
                    self._handle_event(ev)
            finally:
                self._looping -= 1
        return events

    def loop(self, timeout: float = 1.0) -> MQTTErrorCode:
        """Run one round: (re)connect if due, wait up to timeout, dispatch."""
        self._maybe_connect()
        self._pump_once(timeout)
        return MQTT_ERR_SUCCESS if self._conn.is_connected() else MQTT_ERR_NO_CONN

    def loop_forever(self, timeout: float = 1.0, retry_first_connection: bool = False) -> MQTTErrorCode:
        """Dispatch on this thread until disconnect() (or loop_stop())."""
        if retry_first_connection and self._uris is not None and not self._connected_once:
            self._want_connect = True
        while not self._stop.is_set():
            self._maybe_connect()
            events = self._pump_once(timeout)
            kinds = {ev[0] for ev in events if isinstance(ev, tuple)}
            if "disconnected" in kinds or ("refused" in kinds and not self._reconnect_on_failure):
                break
            if self._user_disconnect and not self._conn.is_connected() and not events:
                break
        return MQTT_ERR_SUCCESS

    def loop_start(self) -> MQTTErrorCode:
        """Run the loop on a background thread (daemon), like paho."""
        if self._thread is not None and self._thread.is_alive():
            return MQTT_ERR_INVAL
        self._stop.clear()
        self._thread = threading.Thread(target=self._thread_main, name=f"sermas_bus-loop-{self._client_id or id(self)}",
                                        daemon=True)
        self._thread.start()
        return MQTT_ERR_SUCCESS

    def _thread_main(self) -> None:
        try:
            while not self._stop.is_set():
                self._maybe_connect()
                self._pump_once(1.0)
        except Exception:
            logger.exception("sermas_bus loop thread stopped by an exception")

    def loop_stop(self, force: bool = False) -> MQTTErrorCode:
        """Stop the loop thread started by loop_start (delivering nothing more)."""
        t = self._thread
        if t is None:
            return MQTT_ERR_INVAL
        self._stop.set()
        self._conn.interrupt()   # returns after the callback in progress; the rest stays queued
        if t is not threading.current_thread():
            t.join()
        self._thread = None
        return MQTT_ERR_SUCCESS

    # paho's external-loop API, mapped onto the queue's eventfd
    def socket(self) -> Any:
        """An object whose fileno() is readable while events wait (for select/asyncio)."""
        return _EventSocket(self._conn.fileno())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        self._pump_once(0.0)
        return MQTT_ERR_SUCCESS

    def loop_write(self) -> MQTTErrorCode:
        return MQTT_ERR_SUCCESS

    def loop_misc(self) -> MQTTErrorCode:
        self._maybe_connect()
        return MQTT_ERR_SUCCESS

    def want_write(self) -> bool:
        return False

    # ---- iterator for notebooks and scripts ------------------------------------

    def messages(self, timeout: Optional[float] = None, max_messages: Optional[int] = None) -> Iterator[Any]:
        """Yield received messages.  Stops after ``timeout`` s without a
        message (None: never) or after ``max_messages``.  Works with or
        without loop_start(); without it, this drives the loop itself."""
        count = 0
        if self._thread is not None and self._thread.is_alive():
            tap: "_queue.SimpleQueue[Any]" = _queue.SimpleQueue()
            self._taps.append(tap)
            self._routing_changed()
            try:
                yield from drain(tap, timeout, max_messages)
            finally:
                self._taps.remove(tap)
                self._routing_changed()
            return
        # one message per pump: whatever this iterator does not yield stays
        # queued for the loop or the next messages() call
        while (max_messages is None or count < max_messages) and not self._closed:
            self._maybe_connect()
            wait = 3600.0 if timeout is None else timeout
            with self._pump_lock:
                self._looping += 1
                try:
                    events = self._conn.pump(None, (), None, wait, 1)
                    for ev in events:
                        if isinstance(ev, tuple):
                            self._handle_event(ev)
                finally:
                    self._looping -= 1
            if not events:
                if timeout is not None or self._closed:
                    return            # closed: pump returns at once, so this must not spin
                continue
            for ev in events:
                if not isinstance(ev, tuple):
                    count += 1
                    yield ev

    def stats(self) -> Dict[str, Any]:
        """Counters of the C core (received, queued, in flight, back-pressure waits)."""
        return self._conn.stats()


class _EventSocket:
    __slots__ = ("_fd",)

    def __init__(self, fd: int):
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


_PY_LEVELS = {MQTT_LOG_DEBUG: logging.DEBUG, MQTT_LOG_INFO: logging.INFO, MQTT_LOG_NOTICE: logging.INFO,
              MQTT_LOG_WARNING: logging.WARNING, MQTT_LOG_ERR: logging.ERROR}


def _close_all_at_exit() -> None:
    """Close clients before interpreter finalization, so paho's threads are
    gone before Python's objects are."""
    for c in list(_live_clients):
        try:
            c.close()
        except Exception:   # pragma: no cover - best effort at exit
            pass


_paho_busy_at_fork = False     # a connection was live in the parent when it forked
_inherited_paho_state = False  # this process is a child of such a fork


def _before_fork() -> None:
    global _paho_busy_at_fork
    busy = False
    for c in list(_live_clients):
        try:
            busy = busy or (not c._closed and c._conn.is_connected())
        except Exception:   # a client that is itself inherited: count it as busy
            busy = True
    _paho_busy_at_fork = busy
    if not busy:
        _core._keeper_park()   # the connect keeper holds paho's thread: let it stop


def _forget_all_after_fork() -> None:
    """In a forked child paho's threads do not exist: abandon inherited
    handles, and give the Python side fresh locks (a parent's thread may
    have held them at fork time)."""
    global _inherited_paho_state
    _inherited_paho_state = _inherited_paho_state or _paho_busy_at_fork
    for c in list(_live_clients):
        c._conn.forget()
        c._thread = None
        c._closed = True
        c._pump_lock = threading.RLock()
        c._looping = 0
        c._subs_lock = threading.RLock()
        c._reauth_lock = threading.Lock()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_forget_all_after_fork)
