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
import logging
import os
import queue as _queue
import ssl
import tempfile
import threading
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from . import _core, _persistence
from ._callbacks import Callback
from ._engine import (  # noqa: F401  (MQTTv31 & co are paho.mqtt.client's names)
    MQTT_CLEAN_START_FIRST_ONLY, MQTTv31, MQTTv311, MQTTv5, Engine, fork_state,
    props_pairs as _props_pairs, Subscription as _Subscription,
)
from ._queues import END as _END, drain
from ._urls import broker_uris
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
from .errors import (
    ConnectError, ConnectionLostError, NotConnectedError,
    ProtocolError, PublishError, TimeoutError,
)
from .matcher import TopicMatcher, topic_matches_sub, validate_topic_filter, validate_topic_name  # noqa: F401
from .packettypes import PacketTypes
from .properties import Properties
from .reasoncodes import ReasonCode, reason_code_from_int
from .subscribeoptions import SubscribeOptions

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

class Client:
    """paho-mqtt compatible MQTT client.  See the module docstring for what differs."""

    suppress_exceptions = True

    def __init__(self, callback_api_version: Any = CallbackAPIVersion.VERSION1, client_id: Optional[str] = "",
                 clean_session: Optional[bool] = None, userdata: Any = None, protocol: Any = _AUTO,
                 transport: str = "tcp", reconnect_on_failure: bool = True, manual_ack: bool = False,
                 *, queue_max: int = 10000, spin_us: int = 50, tcp_nodelay: bool = True,
                 persistence: Any = None, persistence_sync: str = "write",
                 persistence_max_bytes: Optional[int] = None):
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
        self._userdata = userdata
        self._transport = transport
        self._conn = _core.Connection(self._client_id, queue_max=queue_max)
        #: what opening ``persistence`` found (restored messages, damage skipped); None without it
        self.persistence_report: Optional[Dict[str, Any]] = None
        if persistence is not None:
            if client_id == "":
                raise ValueError("persistence needs a client_id: the store and the broker's session "
                                 "belong to one client id, the same at every start")
            self.persistence_report = _persistence.open_store(self._conn, persistence, persistence_sync,
                                                              persistence_max_bytes)
        # poll briefly before sleeping for the next message: measured RTT p50
        # 86 -> 61 us (TCP), 98 -> 60 us (websockets); costs <= spin_us of CPU per batch
        self._conn.set_options(spin_us=spin_us)
        # TCP_NODELAY (default): no ~40 ms Nagle stalls on QoS 1 windows and event
        # tails; False trades that latency for ~1.5x QoS 0 flood throughput
        self._conn.set_options(nodelay=bool(tcp_nodelay))
        #: the connection life-cycle (connect, fall-back, reconnect, subscriptions)
        self._engine = Engine(self._conn, _PahoHooks(self), client_id, None if protocol is _AUTO else protocol,
                              reconnect_on_failure, True if clean_session is None else bool(clean_session))
        self._tls_tempfile: Optional[str] = None
        self._ws_path = "/mqtt"
        self._handlers = TopicMatcher()
        self._handler_count = 0
        self._callbacks: Dict[str, Optional[Callback]] = {}
        self._logger: Optional[logging.Logger] = None
        self._pump_lock = threading.RLock()
        self._looping = 0                   # loops delivering right now (any thread)
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._taps: List["_queue.SimpleQueue[Any]"] = []
        self._closed = False
        _live_clients.add(self)

    @property
    def last_connect_error(self) -> Optional[ConnectError]:
        """The clear exception of the last refused connect (None after a success)."""
        return self._engine.last_connect_error

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
        return self._engine.mqtt_version

    @property
    def client_id(self) -> str:
        return self._client_id

    def username_pw_set(self, username: Optional[str], password: Union[str, bytes, None] = None) -> None:
        if username is not None and not isinstance(username, str):
            raise TypeError(f"username must be str or None, not {type(username).__name__}")
        self._engine.username = username
        self._engine.password = _encode_password(password)

    def enable_logger(self, logger_: Optional[logging.Logger] = None) -> None:
        self._logger = logger_ or logger

    def disable_logger(self) -> None:
        self._logger = None

    def will_set(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False,
                 properties: Optional[Properties] = None) -> None:
        if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic:
            raise ValueError(f"invalid will topic {topic!r}: must be a non-empty topic without wildcards")
        validate_topic_name(topic)     # NUL, control characters, length
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid will QoS {qos!r}: must be 0, 1 or 2")
        self._engine.will = (topic, _encode_payload(payload), qos, bool(retain))
        self._engine.will_props = properties

    def will_clear(self) -> None:
        self._engine.will = None
        self._engine.will_props = None

    def reconnect_delay_set(self, min_delay: float = 1, max_delay: float = 120) -> None:
        self._engine.set_reconnect_delay(min_delay, max_delay)

    def max_inflight_messages_set(self, inflight: int) -> None:
        """QoS>0 messages awaiting acknowledgement (0 = as many as the broker allows)."""
        if inflight < 0:
            raise ValueError("inflight must be >= 0")
        self._engine.max_inflight = inflight or 65535

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
        self._engine.connect_timeout = float(timeout)

    @property
    def connect_timeout(self) -> float:
        return self._engine.connect_timeout

    @connect_timeout.setter
    def connect_timeout(self, value: float) -> None:
        self._engine.connect_timeout = float(value)

    def ws_set_options(self, path: str = "/mqtt", headers: Any = None) -> None:
        self._ws_path = path if path.startswith("/") else "/" + path
        if callable(headers):
            headers = headers({})
        if headers is None:
            self._engine.ws_headers = None
        elif isinstance(headers, dict):
            self._engine.ws_headers = [(str(k), str(v)) for k, v in headers.items()]
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
        self._engine.tls = {"ca_certs": ca_certs, "certfile": certfile, "keyfile": keyfile,
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
        self._engine.tls = {"ca_certs": ca_file, "verify": verify, "check_hostname": verify and context.check_hostname}

    def tls_insecure_set(self, value: bool) -> None:
        """True: do not check the server's host name (for tests only)."""
        if self._engine.tls is None:
            raise ValueError("call tls_set() or tls_set_context() before tls_insecure_set()")
        # paho's meaning: skip the host-name check (the chain is still verified)
        self._engine.tls["check_hostname"] = not value

    def _drop_tls_tempfile(self) -> None:
        if self._tls_tempfile:
            try:
                os.unlink(self._tls_tempfile)
            except OSError:
                pass
            self._tls_tempfile = None

    def proxy_set(self, **proxy_args: Any) -> None:
        raise ProtocolError("proxy_set is not supported by this client")

    # ---- connecting: the engine's verbs, with paho's arguments ---------------

    def _set_target(self, host: Any, port: int, keepalive: int, clean_start: Any,
                    properties: Optional[Properties], bind_address: str = "", bind_port: int = 0) -> None:
        if bind_address or bind_port:
            raise ProtocolError("bind_address/bind_port are not supported by paho.mqtt.c")
        uris = broker_uris(host, port, self._transport, self._engine.tls is not None, self._ws_path)
        self._engine.set_target(uris, keepalive, clean_start, properties)

    def connect(self, host: Any = "localhost", port: int = 1883, keepalive: int = 60, bind_address: str = "",
                bind_port: int = 0, clean_start: Any = MQTT_CLEAN_START_FIRST_ONLY,
                properties: Optional[Properties] = None) -> MQTTErrorCode:
        """Connect now (blocking).  ``host`` may be a name, a URL or a list of
        them (fail-over).  Raises a ``sermas_bus.errors.ConnectError`` subclass
        when the broker cannot be reached (no server, TLS, websocket upgrade);
        a refusal goes to on_connect/on_disconnect and the loop retries."""
        self._set_target(host, port, keepalive, clean_start, properties, bind_address, bind_port)
        self._engine.connect()
        return MQTT_ERR_SUCCESS

    def connect_async(self, host: Any = "localhost", port: int = 1883, keepalive: int = 60,
                      bind_address: str = "", bind_port: int = 0, clean_start: Any = MQTT_CLEAN_START_FIRST_ONLY,
                      properties: Optional[Properties] = None) -> MQTTErrorCode:
        """Connect from the loop thread (retrying with back-off until it works)."""
        self._set_target(host, port, keepalive, clean_start, properties, bind_address, bind_port)
        self._engine.connect_async()
        return MQTT_ERR_SUCCESS

    def connect_srv(self, *args: Any, **kwargs: Any) -> None:
        raise ProtocolError("connect_srv (DNS SRV lookup) is not supported; pass the broker URL")

    def reconnect(self) -> MQTTErrorCode:
        self._engine.reconnect()
        return MQTT_ERR_SUCCESS

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

    def subscribe(self, topic: Any, qos: int = 0, options: Optional[SubscribeOptions] = None,
                  properties: Optional[Properties] = None) -> Tuple[MQTTErrorCode, Optional[int]]:
        """Subscribe and remember it (restored after every reconnect).

        Blocks until the broker's SUBACK when connected; returns (rc, mid).
        When not connected the subscription is kept and sent on connect, and
        (MQTT_ERR_NO_CONN, None) is returned, as paho does."""
        if qos not in (0, 1, 2) and options is None and isinstance(topic, (str, bytes)):
            raise ValueError(f"invalid QoS {qos!r}: must be 0, 1 or 2")
        if properties is not None and self._engine.protocol != MQTTv5:
            raise ProtocolError("subscribe properties need MQTT 5")
        subs = self._normalise_subscriptions(topic, qos, options, properties)
        sent = self._engine.subscribe(subs, properties)
        if sent is None:
            return MQTT_ERR_NO_CONN, None
        return MQTT_ERR_SUCCESS, sent[0]

    def unsubscribe(self, topic: Union[str, List[str]],
                    properties: Optional[Properties] = None) -> Tuple[MQTTErrorCode, Optional[int]]:
        topics = [topic] if isinstance(topic, str) else list(topic)
        if not topics or not all(isinstance(t, str) for t in topics):
            raise ValueError("unsubscribe: topic must be a str or a non-empty list of str")
        for t in topics:
            validate_topic_filter(t)
        mid = self._engine.unsubscribe(topics, properties)
        if mid is None:
            return MQTT_ERR_NO_CONN, None
        return MQTT_ERR_SUCCESS, mid

    # ---- disconnect / close ---------------------------------------------------

    def disconnect(self, reasoncode: Optional[ReasonCode] = None, properties: Optional[Properties] = None,
                   timeout: float = 5.0) -> MQTTErrorCode:
        """Disconnect cleanly: waits up to ``timeout`` s for in-flight QoS>0
        publishes, sends DISCONNECT, and stops reconnecting.  The loop delivers
        what had arrived before, calls on_disconnect, and loop_forever returns."""
        self._engine.stop()
        reason = int(reasoncode) if reasoncode is not None else 0
        props = _props_pairs(properties) if self._engine.mqtt_version == MQTTv5 else None
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
        if self._engine.uris is None:
            raise ValueError("reauthenticate() before connect(): call connect() first")
        self.username_pw_set(username, password)
        return self._engine.reauthenticate(timeout)

    def is_connected(self) -> bool:
        return bool(self._conn.is_connected())

    def close(self) -> None:
        """Disconnect, stop the loop thread and release the connection."""
        if self._closed:
            return
        self._closed = True
        self._engine.stop()
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
        return f"<sermas_bus.client.Client id={self._client_id!r} {state} mqtt={self._engine.mqtt_version}>"

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
        elif kind == "connect_failed":
            self._call("on_connect_fail", (self, self._userdata))
        elif kind == "call":
            ev[1]()     # a function posted to run on the loop thread, in queue order

    def _on_refused(self, code: Optional[int]) -> None:
        v5 = self._engine.mqtt_version == MQTTv5
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
        v5 = self._engine.mqtt_version == MQTTv5
        rc_int = MQTT_ERR_CONN_LOST if lost else MQTT_ERR_SUCCESS
        rc = ReasonCode(PacketTypes.DISCONNECT, identifier=0x80 if lost else 0)
        props = Properties(PacketTypes.DISCONNECT)
        v2 = (self, self._userdata, DisconnectFlags(False), rc, props)
        v1 = (self, self._userdata, rc, props) if v5 else (self, self._userdata, rc_int)
        if lost:
            self._log(MQTT_LOG_WARNING, "Connection lost")
            self._engine.connection_lost()
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
        v1 = (self, self._userdata, mid, rcs, props) if self._engine.mqtt_version == MQTTv5 else \
            (self, self._userdata, mid, tuple(codes))
        self._dispatch_version("on_subscribe", v1, v2)

    def _on_unsubscribed(self, mid: int, codes: List[int]) -> None:
        # MQTT 3.1.1's UNSUBACK carries no reason codes: paho passes []
        rcs = [reason_code_from_int(PacketTypes.UNSUBACK, c) for c in codes] \
            if self._engine.mqtt_version == MQTTv5 else []
        props = Properties(PacketTypes.UNSUBACK)
        v2 = (self, self._userdata, mid, rcs, props)
        v1 = (self, self._userdata, mid, props, rcs) if self._engine.mqtt_version == MQTTv5 else \
            (self, self._userdata, mid)
        self._dispatch_version("on_unsubscribe", v1, v2)

    def _maybe_connect(self) -> None:
        """(Re)connect when connect_async asked for it or the connection was lost."""
        self._engine.attempt_if_due()

    def _pump_once(self, timeout: float) -> List[Any]:
        due = self._engine.seconds_until_attempt()
        if due is not None:
            timeout = min(timeout, due)
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
        if retry_first_connection:
            self._engine.retry_first_connection()
        while not self._stop.is_set():
            self._maybe_connect()
            events = self._pump_once(timeout)
            kinds = {ev[0] for ev in events if isinstance(ev, tuple)}
            if "disconnected" in kinds or ("refused" in kinds and not self._engine.reconnect_on_failure):
                break
            if self._engine.user_disconnect and not self._conn.is_connected() and not events:
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


class _PahoHooks:
    """What the engine asks of paho's face: on_pre_connect, and logging
    through on_log / enable_logger.  Holds the client weakly (the client
    owns the engine)."""

    __slots__ = ("_client",)

    def __init__(self, client: Client):
        self._client = weakref.ref(client)

    def pre_connect(self) -> None:
        c = self._client()
        if c is not None and c._callbacks.get("on_pre_connect") is not None:
            c._call("on_pre_connect", (c, c._userdata))

    def log(self, level: int, fmt: str, *args: Any) -> None:
        c = self._client()
        if c is not None:
            c._log(level, fmt, *args)


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
    # this process is a child of such a fork: the engine refuses to connect
    fork_state["inherited"] = fork_state["inherited"] or _paho_busy_at_fork
    for c in list(_live_clients):
        c._conn.forget()
        c._thread = None
        c._closed = True
        c._pump_lock = threading.RLock()
        c._looping = 0
        c._engine.after_fork()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_forget_all_after_fork)
