"""The connection engine: one connection's life-cycle, shared by every face.

``Client`` (paho's face), ``AsyncClient``, ``SermasClient`` and
``AsyncSermasClient`` all drive one ``Engine``.  It owns the state machine and
its policy, and nothing else:

* connect: MQTT 5 first, the fall-back to 3.1.1 (CONNACK code 1, or a socket
  closed after the CONNECT), the version that worked remembered per broker;
  the specific error when nothing works (``_probe`` tells why);
* refusals: raised (``raise_refusals``, SermasClient) or reported the way paho
  does (an event for on_connect/on_disconnect, then retried);
* reconnect: when it is due (``connect_async``, a lost connection, a refused
  attempt), with exponential back-off between ``reconnect_min`` and
  ``reconnect_max``, over the URI list (paho.mqtt.c fails over in order);
* subscriptions: the registry restored after a connect without a session,
  each filter judged on its own; refused filters leave no registration;
* stop: a user's disconnect or close ends reconnecting.

The outbox (publishes made while disconnected) lives in C, in the same
``_core.Connection``: it is flushed by the C core after every connect.

How faces adapt it: the engine reports what happened by posting events into
the C queue (``("connected", info)``, ``("refused", code)``,
``("subscribed", mid, codes)``), which the face's pump hands to its own
callbacks, on the face's thread or event loop.  It calls back into the face
for two things only, through ``FaceHooks``: ``pre_connect()`` (paho's
on_pre_connect) and ``log(level, fmt, *args)``.  When to attempt a
reconnect is the face's choice of thread: a loop thread calls
``attempt_if_due()`` between pumps (``seconds_until_attempt()`` bounds its
wait), asyncio schedules it in an executor.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import socket
import ssl
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

from . import _core, _probe
from ._urls import host_port, uses_tls
from .enums import MQTT_LOG_DEBUG, MQTT_LOG_WARNING
from .errors import (
    ClosedError, ConnectError, ConnectionClosedError, ConnectionLostError, ForkError, NotConnectedError,
    NothingListeningError, ProtocolError, ProtocolVersionError, TLSError, WebSocketUpgradeError,
)
from .matcher import filter_covers
from .properties import Properties

logger = logging.getLogger("sermas_bus")

MQTTv31 = 3
MQTTv311 = 4
MQTTv5 = 5
MQTT_CLEAN_START_FIRST_ONLY = 3

# The MQTT version each broker URI list accepted (the fall-back is paid once
# per process and broker, not on every connect of a one-shot helper or CLI).
_VERSION_THAT_WORKED: Dict[Tuple[str, ...], int] = {}

# Set in a child forked while a connection was open (see client.py's fork hooks).
fork_state = {"inherited": False}


def props_pairs(properties: Optional[Properties]) -> Optional[list]:
    """Properties -> the (id, value) pairs the C core takes."""
    if properties is None:
        return None
    if not isinstance(properties, Properties):
        raise TypeError(f"properties must be sermas_bus.properties.Properties, not {type(properties).__name__}")
    return properties.to_pairs()


def explain_failure(exc: ConnectError, probes: List["_probe.Probe"], timeout: float) -> ConnectError:
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


def is_refusal(exc: BaseException) -> bool:
    """Failures paho reports from the loop, not from connect(): the broker
    answered the CONNECT with a refusal, or closed the connection after it.
    (No server, TLS and websocket-upgrade failures raise, as in paho.)"""
    return isinstance(exc, ConnectionClosedError) or (
        isinstance(exc, ConnectError) and getattr(exc, "reason_code", None) is not None)


def tls_diagnosis(uris: List[str], tls: Optional[Dict[str, Any]]) -> Optional[str]:
    """After a failed TLS connect without a TLS error text (paho checks the
    host name without reporting why): redo the handshake with Python's ssl
    and the same trust settings to say what is wrong.  None if it works."""
    tls = tls or {}
    for uri in uris:
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


@dataclasses.dataclass
class Subscription:
    """One registered filter's options, restored after a reconnect."""
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


Subs = List[Tuple[str, Subscription]]


class FaceHooks(Protocol):
    """What the engine asks of the face it serves."""

    def pre_connect(self) -> None: ...            # paho's on_pre_connect, before every attempt

    def log(self, level: int, fmt: str, *args: Any) -> None: ...   # paho's on_log / enable_logger


class Engine:
    """One connection's state machine.  Thread-safe where faces need it:
    ``publish`` goes straight to ``conn`` from any thread; subscriptions are
    guarded by ``subs_lock``; connects of one engine are serialised by the
    face's single loop (or executor job) plus ``reauth_lock``."""

    def __init__(self, conn: Any, hooks: FaceHooks, client_id: str, protocol: Optional[int],
                 reconnect_on_failure: bool, clean_session: bool):
        self.conn = conn
        self.hooks = hooks
        self.client_id = client_id
        self.protocol_auto = protocol is None
        self.protocol = MQTTv5 if protocol is None else protocol    # the version to try first
        self.mqtt_version = self.protocol                           # the version in use
        self.reconnect_on_failure = reconnect_on_failure
        #: raise refused connects (SermasClient) instead of reporting them as paho does
        self.raise_refusals = False
        # what to connect to and how (set by the face's paho-style setters)
        self.uris: Optional[List[str]] = None
        self.keepalive = 60
        self.clean_session = clean_session
        self.clean_start: Any = MQTT_CLEAN_START_FIRST_ONLY
        self.connect_props: Optional[Properties] = None
        self.username: Optional[str] = None
        self.password: Optional[bytes] = None
        self.will: Optional[Tuple[str, bytes, int, bool]] = None
        self.will_props: Optional[Properties] = None
        self.tls: Optional[Dict[str, Any]] = None
        self.ws_headers: Optional[List[Tuple[str, str]]] = None
        self.connect_timeout = 10.0
        self.max_inflight = 20
        self.reconnect_min = 1.0
        self.reconnect_max = 120.0
        # where it stands
        self.connected_once = False
        self.session: Dict[str, Any] = {}
        #: the clear exception of the last refused connect (None after a success)
        self.last_connect_error: Optional[ConnectError] = None
        self.user_disconnect = False
        self.want_connect = False           # connect_async, lost or refused: an attempt is due
        self.next_attempt = 0.0
        self.delay = self.reconnect_min
        self.subscriptions: Dict[str, Subscription] = {}
        # registered but not acknowledged by the broker (made while offline, or
        # the connection went before the SUBACK): sent after the next connect
        # even when the broker kept the session
        self.unsent: Dict[str, Subscription] = {}
        #: MQTT 3.1.1 has no subscription identifiers, and a broker may send one
        #: copy per matching filter: with this set (SermasClient) a filter that
        #: another registered one covers is not sent to the broker at all
        self.dedupe_overlaps = False
        self.at_broker: set = set()         # filters the broker has (only while deduplicating)
        self.subs_lock = threading.RLock()
        self.reauth_lock = threading.Lock()
        self._mid = itertools.count(1)

    def after_fork(self) -> None:
        """Fresh locks in a forked child (a parent's thread may have held them)."""
        self.subs_lock = threading.RLock()
        self.reauth_lock = threading.Lock()

    def next_mid(self) -> int:
        return next(self._mid) % 65536 or next(self._mid)

    # ---- settings -------------------------------------------------------------

    def set_reconnect_delay(self, min_delay: float, max_delay: float) -> None:
        if min_delay <= 0 or max_delay < min_delay:
            raise ValueError("reconnect delays must satisfy 0 < min_delay <= max_delay")
        self.reconnect_min, self.reconnect_max = float(min_delay), float(max_delay)
        self.delay = self.reconnect_min

    def set_target(self, uris: List[str], keepalive: int, clean_start: Any,
                   properties: Optional[Properties]) -> None:
        if keepalive < 0:
            raise ValueError("keepalive must be >= 0")
        if properties is not None and self.protocol != MQTTv5:
            raise ProtocolError("connect properties need protocol=MQTTv5")
        self.uris = uris
        self.keepalive = keepalive
        self.clean_start = clean_start
        self.connect_props = properties

    # ---- the user's verbs ---------------------------------------------------------

    def connect(self) -> None:
        """Connect now (blocking); refusals raised or reported (see class doc)."""
        self.user_disconnect = False
        try:
            self.connect_now()
        except ConnectError as exc:
            if self.raise_refusals or not is_refusal(exc):
                raise
            self._report_refusal(exc)

    def connect_async(self) -> None:
        """Let the face's loop connect (retrying with back-off until it works)."""
        self.user_disconnect = False
        self.want_connect = True
        self.next_attempt = 0.0
        self.conn.post(("wake",))

    def reconnect(self) -> None:
        if self.uris is None:
            raise ValueError("reconnect() before connect(): call connect() first")
        if self.conn.is_connected():
            self.conn.disconnect(0.0, 0, None)   # paho's reconnect() drops the connection first
        self.connect()

    def reauthenticate(self, timeout: float, between: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
        """Reconnect with the credentials now set, keeping the session.
        ``between`` is posted to the face's loop after the disconnect and
        before the new CONNECT: it runs after everything the old connection
        delivered and before anything of the new one."""
        if self.uris is None:
            raise ValueError("reauthenticate() before connect(): call connect() first")
        with self.reauth_lock:
            self.conn.disconnect(timeout, 0, None)
            if between is not None:
                self.conn.post(("call", between))
            self.user_disconnect = False
            return self.connect_now()

    def stop(self) -> None:
        """The user disconnects or closes: no more (re)connect attempts."""
        self.user_disconnect = True
        self.want_connect = False

    def retry_first_connection(self) -> None:
        if self.uris is not None and not self.connected_once:
            self.want_connect = True

    # ---- when to (re)connect -----------------------------------------------------

    def seconds_until_attempt(self) -> Optional[float]:
        """None when no attempt is wanted, else how long until one is due."""
        if not self.want_connect or self.user_disconnect or self.uris is None:
            return None
        return max(0.0, self.next_attempt - time.monotonic())

    def connection_lost(self) -> None:
        """The C core reported a lost connection: schedule the reconnect."""
        if self.reconnect_on_failure and not self.user_disconnect:
            self.want_connect = True
            self.next_attempt = time.monotonic() + self.delay

    def attempt_if_due(self) -> None:
        """One (re)connect attempt if one is wanted and due; a failure sets
        the next attempt's time (back-off).  Never raises for the broker."""
        wait = self.seconds_until_attempt()
        if wait is None or wait > 0:
            return
        try:
            self.connect_now()
        except ClosedError:
            return                             # closed meanwhile: the loop is ending
        except ConnectError as exc:
            if is_refusal(exc) and not self.raise_refusals:
                self._report_refusal(exc)      # on_connect(reason) + on_disconnect, as paho
                if not self.reconnect_on_failure:
                    self.want_connect = False
                return
            self.hooks.log(MQTT_LOG_WARNING, "Connect to %s failed: %s; retrying in %.1f s",
                           ", ".join(self.uris or []), exc, self.delay)
            self.conn.post(("connect_failed",))
            self._back_off()

    def _back_off(self) -> None:
        self.next_attempt = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, self.reconnect_max)

    def _report_refusal(self, exc: ConnectError) -> None:
        """As paho: on_connect gets the CONNACK's reason code (if there was
        one), on_disconnect follows, and the loop tries again with back-off
        (unless reconnect_on_failure=False)."""
        self.last_connect_error = exc
        self.hooks.log(MQTT_LOG_WARNING, "%s", exc)
        if self.reconnect_on_failure:
            self.want_connect = True
            self._back_off()
        self.conn.post(("refused", getattr(exc, "reason_code", None)))

    # ---- one connect ---------------------------------------------------------------

    def clean_flag(self) -> bool:
        if self.mqtt_version != MQTTv5:
            return self.clean_session
        if self.clean_start == MQTT_CLEAN_START_FIRST_ONLY:
            return not self.connected_once
        return bool(self.clean_start)

    def _connect_once(self, version: int) -> Dict[str, Any]:
        self.mqtt_version = version
        v5 = version == MQTTv5
        return self.conn.connect(
            self.uris, mqtt_version=version, keepalive=self.keepalive, clean=self.clean_flag(),
            username=self.username, password=self.password, will=self.will,
            will_props=props_pairs(self.will_props) if v5 else None,
            props=props_pairs(self.connect_props) if v5 else None,
            tls=self.tls, http_headers=self.ws_headers, timeout=self.connect_timeout,
            max_inflight=self.max_inflight)

    def _fall_back(self, why: str) -> Dict[str, Any]:
        logger.warning("broker %s %s; falling back to MQTT 3.1.1 (noLocal, retainAsPublished, "
                       "retainHandling and properties become unavailable)", ", ".join(self.uris or []), why)
        self.protocol = MQTTv311
        try:
            return self._connect_once(MQTTv311)
        except ConnectError:
            self.protocol = MQTTv5            # 3.1.1 did not help: try MQTT 5 first next time
            raise

    def _connect_with_fall_back(self) -> Dict[str, Any]:
        """One connect: MQTT 5 first (unless fixed), 3.1.1 when the broker
        refuses MQTT 5 -- by CONNACK code 1, or by closing the socket (or
        staying silent) after the CONNECT, as RabbitMQ 3.10 and amqtt do."""
        may_fall_back = self.protocol_auto and self.protocol == MQTTv5
        try:
            return self._connect_once(self.protocol)
        except ProtocolVersionError:
            if not may_fall_back:
                raise
            return self._fall_back("refused MQTT 5 (CONNACK code 1)")
        except ConnectError as exc:
            if type(exc) is not ConnectError:
                raise                          # refused with a reason, TLS: nothing to retry
            if uses_tls(self.uris or []):
                why = tls_diagnosis(self.uris or [], self.tls)
                if why is not None:
                    raise TLSError(f"TLS handshake failed: {why}; check the CA (tls_set(ca_certs=...) or the "
                                   "system store, SSL_CERT_FILE), the host name in the broker's certificate, "
                                   "or use tls_insecure_set(True) for tests") from None
            probes = [_probe.probe(u) for u in self.uris or []]
            failure = exc
            if may_fall_back and any(p.kind == _probe.ANSWERS for p in probes):
                try:
                    return self._fall_back("closed the connection after an MQTT 5 CONNECT without a CONNACK")
                except ConnectError as again:
                    if type(again) is not ConnectError:
                        raise
                    failure = again
            raise explain_failure(failure, probes, self.connect_timeout) from None

    def connect_now(self) -> Dict[str, Any]:
        """Connect (blocking), fall back to 3.1.1 if allowed, restore
        subscriptions, and post "connected" for the face's loop."""
        if fork_state["inherited"]:
            raise ForkError(
                "cannot connect in this process: it was forked while an MQTT connection was open, and "
                "paho.mqtt.c's process-wide state (its receive thread and locks) does not survive fork(); "
                "fork before connecting, or use multiprocessing with the 'spawn' or 'forkserver' start method")
        self.hooks.pre_connect()
        self.hooks.log(MQTT_LOG_DEBUG, "Connecting to %s as %s", ", ".join(self.uris or []), self.client_id)
        key = tuple(self.uris or ())
        if self.protocol_auto and _VERSION_THAT_WORKED.get(key) == MQTTv311:
            self.protocol = MQTTv311          # this broker fell back before: no MQTT 5 attempt
        info = self._connect_with_fall_back()
        if self.protocol_auto:
            _VERSION_THAT_WORKED[key] = self.protocol
        self.mqtt_version = info["mqtt_version"]
        self.session = info
        first = not self.connected_once
        self.connected_once = True
        self.last_connect_error = None
        self.delay = self.reconnect_min
        self.want_connect = False
        if not info["session_present"] or first:
            self.restore_subscriptions()
        else:
            self.restore_subscriptions(only_unsent=True)
        self.conn.post(("connected", info))
        return info

    # ---- subscriptions ------------------------------------------------------------------

    def check_version_can(self, subs: Subs) -> None:
        """ProtocolError for MQTT 5-only options on a 3.1.1 connection
        (unless the subscription may drop them)."""
        if self.mqtt_version == MQTTv5:
            return
        for t, s in subs:
            if s.needs_v5() and not s.degradable:
                raise ProtocolError(
                    f"subscribe {t!r}: noLocal / retainAsPublished / retainHandling / properties need "
                    f"MQTT 5, but this connection uses MQTT {'3.1.1' if self.mqtt_version == 4 else '3.1'}"
                    " (the broker refused MQTT 5 or protocol=MQTTv311 was given); "
                    "drop the option or use an MQTT 5 broker")

    def register(self, subs: Subs) -> None:
        """Remember subscriptions (sent now if connected, restored later)."""
        if not self.protocol_auto or self.connected_once:
            self.check_version_can(subs)
        with self.subs_lock:
            for t, s in subs:
                self.subscriptions[t] = s
                self.unsent[t] = s

    def forget(self, topics: List[str]) -> None:
        with self.subs_lock:
            for t in topics:
                self.subscriptions.pop(t, None)
                self.unsent.pop(t, None)

    def _items(self, subs: Subs, restoring: bool) -> List[Tuple[str, int, bool, bool, int]]:
        """The C core's subscribe items.  A restore on MQTT 5 asks for retained
        messages only if the subscription is new to the broker (retain
        handling 1): paho.mqtt.c never reports "session present" on MQTT 5
        (MQTTClient.c reads the flag for 3.1.1 only), so every reconnect
        restores, and the broker must not resend retained messages to a
        subscription it kept."""
        v5 = self.mqtt_version == MQTTv5

        def handling(s: Subscription) -> int:
            if not v5:
                return 0
            return 1 if restoring and s.retain_handling == 0 else s.retain_handling

        return [(t, s.qos, s.no_local and v5, s.retain_as_published and v5, handling(s)) for t, s in subs]

    def _answered(self, subs: Subs, codes: List[int]) -> None:
        """The broker answered: a refused filter is not restored after a
        reconnect (no phantom), a granted one is no longer unsent."""
        reducing = self._reducing()
        with self.subs_lock:
            for (t, s), code in zip(subs, codes):
                if self.unsent.get(t) is s:
                    del self.unsent[t]
                if code >= 0x80 and self.subscriptions.get(t) is s:
                    del self.subscriptions[t]
                elif code < 0x80 and reducing:
                    self.at_broker.add(t)

    # ---- overlapping filters on MQTT 3.1.1 (dedupe_overlaps) ----

    def _reducing(self) -> bool:
        return self.dedupe_overlaps and self.mqtt_version != MQTTv5

    def _broker_set(self) -> Dict[str, Subscription]:
        """The registered filters no other registered filter covers (with at
        least its QoS): what the broker needs so each event comes once.
        Partial overlaps (a/+/c and a/b/+) cannot be reduced: documented."""
        with self.subs_lock:
            reg = dict(self.subscriptions)
        plain = [(t, s) for t, s in reg.items() if not t.startswith("$share/")]

        def covered(t: str, s: Subscription) -> bool:
            return any(u != t and v.qos >= s.qos and filter_covers(u, t) for u, v in plain)

        return {t: s for t, s in reg.items() if t.startswith("$share/") or not covered(t, s)}

    def _served(self, subs: Subs) -> None:
        """Covered filters need no SUBSCRIBE: no longer unsent."""
        with self.subs_lock:
            for t, s in subs:
                if self.unsent.get(t) is s:
                    del self.unsent[t]

    def _drop_redundant(self, wanted: Dict[str, Subscription]) -> None:
        """UNSUBSCRIBE what the broker has that a wider filter now covers
        (after the wider one's SUBACK: no gap)."""
        with self.subs_lock:
            redundant = [t for t in self.at_broker if t not in wanted and t in self.subscriptions]
            self.at_broker.difference_update(redundant)
        if not redundant:
            return
        try:
            self.conn.unsubscribe(redundant, None)
        except (ConnectionLostError, NotConnectedError):
            pass               # gone with the connection; the restore sends the reduced set

    def _subscribe_reduced(self, subs: Subs, properties: Optional[Properties]) -> Tuple[int, List[int]]:
        wanted = self._broker_set()
        send = [(t, s) for t, s in subs if t in wanted]
        self._served([(t, s) for t, s in subs if t not in wanted])
        codes_of = {t: s.qos for t, s in subs}          # covered: granted through the wider filter
        mid = self.next_mid()
        if send:
            mid, codes = self.send_subscribe(send, properties, notify=False, quiet=True)
            codes_of.update(zip([t for t, _ in send], codes))
        self._drop_redundant(wanted)
        codes = [codes_of[t] for t, _ in subs]
        self.conn.post(("subscribed", mid, codes))
        return mid, codes

    def _unsubscribe_reduced(self, topics: List[str]) -> List[str]:
        """Before unsubscribing: subscribe what the removed filters covered;
        then only what the broker has is unsubscribed."""
        wanted = self._broker_set()
        with self.subs_lock:
            missing = [(t, s) for t, s in wanted.items() if t not in self.at_broker]
        if missing:
            self.send_subscribe(missing, None, notify=False)
        with self.subs_lock:
            held = [t for t in topics if t in self.at_broker]
            self.at_broker.difference_update(held)
        return held

    def send_subscribe(self, subs: Subs, properties: Optional[Properties],
                       notify: bool = True, restoring: bool = False,
                       quiet: bool = False) -> Tuple[int, List[int]]:
        """SUBSCRIBE and wait for the SUBACK; (mid, reason codes).  Posts
        "subscribed" for on_subscribe (always when one was refused, never
        when quiet)."""
        self.check_version_can(subs)
        props = props_pairs(properties) if self.mqtt_version == MQTTv5 else None
        codes = self.conn.subscribe(self._items(subs, restoring), props)
        mid = self.next_mid()
        for (t, s), code in zip(subs, codes):
            if code >= 0x80:
                logger.warning("broker refused subscription to %r (code 0x%02X: %s)", t, code,
                               _core.reason_string(code))
            elif code < s.qos:
                logger.warning("broker granted QoS %d for %r, less than the %d asked for", code, t, s.qos)
        self._answered(subs, codes)
        if not quiet and (notify or any(code >= 0x80 for code in codes)):
            self.conn.post(("subscribed", mid, codes))
        return mid, codes

    def subscribe(self, subs: Subs, properties: Optional[Properties]) -> Optional[Tuple[int, List[int]]]:
        """Register, and send when connected: (mid, codes), or None while
        the subscription waits for the connect."""
        self.register(subs)
        if not self.conn.is_connected():
            return None
        try:
            if self._reducing():
                return self._subscribe_reduced(subs, properties)
            return self.send_subscribe(subs, properties)
        except (ConnectionLostError, NotConnectedError):
            return None      # still unsent: goes out after the reconnect

    def unsubscribe(self, topics: List[str], properties: Optional[Properties]) -> Optional[int]:
        """Forget, and send when connected: the mid, or None when not connected."""
        self.forget(topics)
        if not self.conn.is_connected():
            return None
        props = props_pairs(properties) if self.mqtt_version == MQTTv5 else None
        try:
            if self._reducing():
                topics = self._unsubscribe_reduced(topics)
            codes = self.conn.unsubscribe(topics, props) if topics else []
        except (ConnectionLostError, NotConnectedError):
            return None      # forgotten: not restored after the reconnect
        mid = self.next_mid()
        self.conn.post(("unsubscribed", mid, codes))
        return mid

    def restore_subscriptions(self, only_unsent: bool = False) -> None:
        """Subscribe again after a connect without a session (or, when the
        broker kept it, send what it never acknowledged).  One SUBSCRIBE per
        set of properties; each filter is judged on its own: one the
        connection cannot carry, or the broker refuses, is reported (log and
        on_subscribe with its code) and dropped, the others stay."""
        with self.subs_lock:
            subs = list((self.unsent if only_unsent else self.subscriptions).items())
        if self._reducing():
            if not only_unsent:
                with self.subs_lock:
                    self.at_broker.clear()
            wanted = self._broker_set()
            self._served([(t, s) for t, s in subs if t not in wanted])
            subs = [(t, s) for t, s in subs if t in wanted]
        groups: Dict[int, Subs] = {}
        for t, s in subs:
            if self.mqtt_version != MQTTv5 and s.needs_v5() and not s.degradable:
                logger.error("cannot restore the subscription to %r: its MQTT 5 options do not exist in "
                             "MQTT 3.1.1 (the broker fell back); dropped", t)
                with self.subs_lock:
                    if self.subscriptions.get(t) is s:
                        del self.subscriptions[t]
                    self.unsent.pop(t, None)
                self.conn.post(("subscribed", self.next_mid(), [0x80]))
                continue
            groups.setdefault(id(s.properties), []).append((t, s))
        for group in groups.values():
            props = group[0][1].properties if self.mqtt_version == MQTTv5 else None
            try:
                _mid, codes = self.send_subscribe(group, props, notify=False, restoring=not only_unsent)
            except Exception as exc:   # the loop must survive; the user hears about it
                logger.error("restoring %d subscription(s) after reconnect failed: %s", len(group), exc)
                continue
            for (t, _s), code in zip(group, codes):
                if code >= 0x80:
                    logger.error("the broker refused to restore the subscription to %r (code 0x%02X: %s)",
                                 t, code, _core.reason_string(code))
