"""SermasClient: the SERMAS-aware face of the bus.

Knows the platform's topics by name (``"dialogue.messages"``), fills topic
parameters from keyword arguments, the payload and the app id, encodes and
decodes JSON in C, and keeps its JWT access token fresh, swapping the broker
connection to the new token without losing an event (QoS 0 included: see
``sermas_bus._swap``)::

    with SermasClient("http://localhost:8080", app_id="myapp",
                      client_id="my-service", client_secret="...") as bus:
        @bus.on("dialogue.messages", sessionId="s1")
        def said(event, msg):
            print(msg.params["sessionId"], event["text"])

        bus.publish("dialogue.messages", {"sessionId": "s1", "actor": "agent", "text": "hi"})
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import queue as _queue
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

from . import client as mqtt
from . import json as sbjson
from . import topics as _topics
from ._queues import drain
from .auth import ClientCredentials, ProviderToken, StaticToken, Token, TokenSource, UserLogin
from . import _core
from .errors import OutboxFullError, SubscriptionRefusedError, TimeoutError, platform_acl_hint
from ._core import FilterTrie
from .packettypes import PacketTypes
from .properties import Properties
from ._engine import Subscription as EngineSubscription
from ._swap import TokenSwap, pick_counts
from . import _discovery
from .matcher import validate_topic_filter

logger = logging.getLogger("sermas_bus")
PASSWORD_PLACEHOLDER = "sermas"   # the broker ignores the password; it must not be empty


def broker_url_for(base_url: str) -> str:
    """The broker URL the platform serves for an API base URL:
    ``ws[s]://<host>[:<port>]/mqtt`` (as the TypeScript client derives it)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be http(s)://host[:port], not {base_url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    return f"{'wss' if parts.scheme == 'https' else 'ws'}://{host}{port}/mqtt"


def _fields_of(payload: Any) -> Optional[Dict[str, Any]]:
    """What topic parameters are read from: a dict as it is, a dataclass
    instance as the dict it is encoded as (nested dataclasses too: record,
    task), anything else nothing."""
    if isinstance(payload, dict):
        return payload
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        return dataclasses.asdict(payload)
    return None


class Message:
    """What a SermasClient callback gets besides the decoded event."""

    __slots__ = ("topic", "name", "params", "qos", "retain", "properties", "raw", "is_json")

    def __init__(self, msg: Any, name: Optional[str], params: Dict[str, str], is_json: bool):
        self.topic = msg.topic
        self.name = name
        self.params = params
        self.qos = msg.qos
        self.retain = msg.retain
        self.properties = msg.properties
        self.raw = msg.payload
        self.is_json = is_json

    def __repr__(self) -> str:
        return f"<sermas_bus.Message {self.name or self.topic} params={self.params} qos={self.qos}>"


class _EchoFilter:
    """noLocal for MQTT 3.1.1, client-side: the broker sends our own events
    back; remember what we published lately (topic + payload digest, bounded)
    and hold a matching copy back from noLocal subscriptions.  An identical
    event published by another client within the window is held back too."""

    LIMIT = 10000

    def __init__(self) -> None:
        self.active = False
        self._seen: "collections.Counter[Tuple[str, int]]" = collections.Counter()
        self._order: "collections.deque[Tuple[str, int]]" = collections.deque()
        self._lock = threading.Lock()
        self._warned = False

    def enable(self) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("the broker speaks MQTT 3.1.1, which has no noLocal: sermas_bus filters out "
                           "the copies of this client's own events (same topic and payload) instead")
        self.active = True

    def sent(self, topic: str, data: Any) -> None:
        raw = b"" if data is None else data.encode() if isinstance(data, str) else bytes(data)
        key = (topic, hash(raw))
        with self._lock:
            self._seen[key] += 1
            self._order.append(key)
            if len(self._order) > self.LIMIT:
                old = self._order.popleft()
                self._seen[old] -= 1
                if self._seen[old] <= 0:
                    del self._seen[old]

    def is_echo(self, topic: str, payload: bytes) -> bool:
        key = (topic, hash(payload))
        with self._lock:
            if self._seen.get(key, 0) <= 0:
                return False
            self._seen[key] -= 1
            if self._seen[key] <= 0:
                del self._seen[key]
            return True


class Subscription:
    """Handle returned by ``subscribe``; ``unsubscribe()`` removes the callback
    (and the broker subscription once no callback needs it)."""

    def __init__(self, bus: "SermasClient", filter_: str, route: str, callback: Callable[..., Any]):
        self._bus, self.filter, self._route, self.callback = bus, filter_, route, callback
        self._sid = 0
        self.active = True
        self.no_local = False

    def unsubscribe(self) -> None:
        if self.active:
            self.active = False
            self._bus._remove(self)

    def __repr__(self) -> str:
        return f"<Subscription {self.filter} active={self.active}>"


class SermasClient:
    """A SERMAS event-bus client (see the module docstring).

    Credentials, in order of precedence: ``token_provider`` (callable returning
    a token or token answer), ``token`` (+ ``refresh_token``), ``username`` +
    ``password`` (user login; ``client_id`` is then the login's client, default
    ``<appId>-application``), ``client_id`` + ``client_secret`` (app client).
    With none, it connects anonymously (local development brokers)."""

    def __init__(self, base_url: str = "http://localhost:8080", app_id: Optional[str] = None,
                 client_id: Optional[str] = None, client_secret: Optional[str] = None, *,
                 token: Optional[str] = None, refresh_token: Optional[str] = None,
                 username: Optional[str] = None, password: Optional[str] = None,
                 token_provider: Optional[Callable[[], Any]] = None, mqtt_url: Any = None,
                 mqtt_client_id: Optional[str] = None, tls_context: Any = None,
                 refresh_margin: float = 30.0, session_expiry: int = 3600, start_loop: bool = True,
                 connect_timeout: float = 10.0, max_inflight: int = 100, max_queued: int = 10000,
                 protocol: Optional[int] = None, token_swap: str = "overlap",
                 persistence: Any = None, persistence_sync: str = "write",
                 persistence_max_bytes: Optional[int] = None):
        if not app_id:
            raise ValueError("app_id is required: every SERMAS topic starts with app/<appId>/")
        self.base_url = base_url.rstrip("/")
        self.app_id = app_id
        self.mqtt_url = mqtt_url or broker_url_for(self.base_url)
        self.refresh_margin = float(refresh_margin)
        self.connect_timeout = float(connect_timeout)
        self._start_loop = start_loop
        self._source = self._token_source(client_id, client_secret, token, refresh_token, username,
                                          password, token_provider)
        self._token: Optional[Token] = None
        self._defaults = {"appId": app_id}
        if protocol not in (None, mqtt.MQTTv311, mqtt.MQTTv5):
            raise ValueError(f"protocol must be None (MQTT 5, falling back to 3.1.1), MQTTv311 or MQTTv5, "
                             f"not {protocol!r}")
        # A session that outlives a connection only for a client id the user
        # chose: a random id would leave a session on the broker at every run
        self._stable_id = mqtt_client_id is not None
        if persistence is not None and not self._stable_id:
            raise ValueError("persistence needs mqtt_client_id=: the store and the broker's session "
                             "belong to one client id, the same at every start")
        #: with a store, every start resumes the session (clean start off): a
        #: message in flight when the last run died is completed, not re-sent
        self._resume_session = persistence is not None
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=mqtt_client_id or f"sermas-{app_id}-{uuid.uuid4().hex[:12]}",
                                   persistence=persistence, persistence_sync=persistence_sync,
                                   persistence_max_bytes=persistence_max_bytes,
                                   **({} if protocol is None else {"protocol": protocol}))
        # the connection life-cycle under the paho face (sermas_bus._engine)
        self._engine = self._client._engine
        self._engine.clean_session = not self._stable_id   # used if the connection is MQTT 3.1.1
        self._engine.raise_refusals = True     # connect() raises NotAuthorizedError & co (not paho's face)
        # MQTT 3.1.1: no subscription identifiers, so overlapping filters would
        # bring the broker's extra copies to every callback: send only the widest
        self._engine.dedupe_overlaps = True
        self._client.max_inflight_messages_set(max_inflight)
        # the outbox: events published while offline (any QoS: a SERMAS event
        # should still go out after the reconnect) wait, bounded, in C
        if not isinstance(max_queued, int) or max_queued < 1:
            raise ValueError("max_queued must be an int >= 1")
        self.max_queued = max_queued
        self._client.max_queued_messages_set(max_queued)
        self._engine.conn.set_options(queue_qos0=True)
        self._client.connect_timeout_set(connect_timeout)
        if tls_context is not None:
            self._client.tls_set_context(tls_context)
        # MQTT 5: the session survives a token-swap reconnect; with a random
        # id, close() ends it (SessionExpiryInterval 0 on DISCONNECT)
        self._session_props: Optional[Properties] = None
        if protocol != mqtt.MQTTv311:
            self._session_props = Properties(PacketTypes.CONNECT)
            self._session_props.SessionExpiryInterval = int(session_expiry)
        self._echo = _EchoFilter()
        self._client.on_message = self._dispatch
        self._routes = FilterTrie()                 # route filter -> Subscription (multimap, C)
        self._filter_ids: Dict[str, int] = {}       # broker filter -> its Subscription Identifier
        self._by_sid: Dict[int, List[Subscription]] = {}   # identifier -> callbacks
        self._next_sid = itertools.count(1)
        self._lock = threading.RLock()
        self._refresh_thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._reauth_done = threading.Condition()
        self._refreshes = 0
        if token_swap not in ("overlap", "reconnect"):
            raise ValueError(f"token_swap must be 'overlap' or 'reconnect', not {token_swap!r}")
        #: "overlap": a token refresh opens the new connection before the old
        #: one goes (no QoS 0 event lost); "reconnect": just reconnect
        self.token_swap = token_swap
        self._swap: Optional[TokenSwap] = None
        self._swaps = 0

    def _token_source(self, client_id, client_secret, token, refresh_token, username, password,
                      provider) -> Optional[TokenSource]:
        if provider is not None:
            return ProviderToken(provider)
        if token is not None:
            return StaticToken(token, refresh_token, self.base_url, self.app_id, client_id, client_secret)
        if username is not None:
            if password is None:
                raise ValueError("username needs a password")
            # client_id here: the login's client (default <appId>-application)
            return UserLogin(self.base_url, self.app_id, username, password, client_id=client_id)
        if client_id is not None:
            if client_secret is None:
                raise ValueError("client_id needs a client_secret")
            return ClientCredentials(self.base_url, self.app_id, client_id, client_secret)
        return None

    @property
    def persistence_report(self) -> Optional[Dict[str, Any]]:
        """What opening ``persistence`` found (restored messages, damage
        skipped); None without persistence."""
        return self._client.persistence_report

    # ---- lifecycle ------------------------------------------------------------

    def connect(self) -> "SermasClient":
        """Fetch a token (if credentials were given), connect, start the loop
        thread (unless start_loop=False) and the token refresher."""
        self._connect_blocking()
        if self._start_loop:
            self._client.loop_start()
        if self._token is not None and self._token.expires_at is not None:
            self._refresh_thread = threading.Thread(target=self._refresh_loop, daemon=True,
                                                    name=f"sermas_bus-token-{self.app_id}")
            self._refresh_thread.start()
        return self

    def _connect_blocking(self) -> None:
        """Fetch a token (if credentials were given) and connect; no threads."""
        if self._source is not None:
            self._token = self._source.fetch()
            self._client.username_pw_set(self._token.access_token, PASSWORD_PLACEHOLDER)
        if self._resume_session:
            self._client.connect(self.mqtt_url, properties=self._session_props, clean_start=False)
        else:
            self._client.connect(self.mqtt_url, properties=self._session_props)

    def close(self) -> None:
        self._stop.set()
        if not self._stable_id and self._client.is_connected() and self._client.protocol == mqtt.MQTTv5:
            end = Properties(PacketTypes.DISCONNECT)
            end.SessionExpiryInterval = 0       # nobody will resume a random id's session
            try:
                self._client.disconnect(properties=end, timeout=1.0)
            except Exception as exc:   # closing must go on
                logger.debug("disconnect before close failed: %s", exc)
        self._client.close()
        t = self._refresh_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)

    def __enter__(self) -> "SermasClient":
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def client(self) -> mqtt.Client:
        """The underlying paho-compatible client."""
        return self._client

    @property
    def token(self) -> Optional[Token]:
        return self._token

    @property
    def refreshes(self) -> int:
        """How many times the token was refreshed (and the broker reconnected)."""
        return self._refreshes

    def is_connected(self) -> bool:
        return self._client.is_connected()

    # ---- tokens -----------------------------------------------------------------

    def _refresh_loop(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            left = self._token.seconds_left() if self._token else None
            if left is None:
                return
            if self._stop.wait(max(0.0, left - self.refresh_margin)):
                return
            try:
                self.refresh_token()
                delay = 1.0
            except Exception as exc:   # keep trying: the broker cuts us off at exp otherwise
                logger.warning("token refresh failed: %s; retrying in %.0f s", exc, delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 60.0)

    def refresh_token(self) -> Token:
        """Refresh now and reconnect with the new token as username, keeping
        the session; with ``token_swap="overlap"`` (the default) a bridge
        connection covers the reconnect, so no event is lost."""
        if self._source is None or self._token is None:
            raise ValueError("no credentials to refresh: create the client with a token source")
        new = self._source.refresh(self._token)
        self._token = new
        if self.token_swap == "overlap" and self._client.is_connected() and self._engine.subscriptions:
            self._swap_with_overlap(new.access_token)
        else:
            self._client.reauthenticate(new.access_token, PASSWORD_PLACEHOLDER, timeout=self.connect_timeout)
        with self._reauth_done:
            self._refreshes += 1
            self._reauth_done.notify_all()
        logger.info("SERMAS token refreshed; reconnected (%s)", new)
        return new

    # ---- token rotation without a gap (sermas_bus/_swap.py) -------------------

    def _swap_with_overlap(self, token: str) -> None:
        """Open a bridge connection with the new token, reconnect our own one,
        fill what it missed from the bridge, close the bridge."""
        eng = self._engine
        swap = TokenSwap(pick_counts(eng.mqtt_version == mqtt.MQTTv5 or self._stable_id), self._deliver)
        self._swap = swap           # from now on our deliveries are remembered
        try:
            bridge = self._open_bridge(token, swap)
        except Exception as exc:    # the plain reconnect still works, with its gap
            self._swap = None
            logger.warning("token swap: the bridge connection failed (%s); reconnecting without it", exc)
            self._client.reauthenticate(token, PASSWORD_PLACEHOLDER, timeout=self.connect_timeout)
            return
        try:
            self._client.username_pw_set(token, PASSWORD_PLACEHOLDER)
            eng.reauthenticate(self.connect_timeout, between=swap.mark_disconnected)
        except BaseException:
            self._close_bridge(bridge)
            self._finish_swap(swap, fill=False)
            raise
        self._close_bridge(bridge)
        self._finish_swap(swap, fill=True)

    def _open_bridge(self, token: str, swap: TokenSwap) -> mqtt.Client:
        eng = self._engine
        self._swaps += 1
        bridge = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{self._client.client_id}-swap{self._swaps}",
                             protocol=eng.mqtt_version)
        b = bridge._engine
        b.tls, b.ws_headers, b.connect_timeout = eng.tls, eng.ws_headers, eng.connect_timeout
        b.dedupe_overlaps = True
        b.raise_refusals = True      # a refused CONNECT says so (the swap then reconnects plainly)
        bridge.username_pw_set(token, PASSWORD_PLACEHOLDER)
        # retained messages sent for the bridge's new subscriptions are not events of the gap
        bridge.on_message = lambda client, userdata, msg: None if msg.retain else swap.on_bridge(msg)
        try:
            bridge.connect(eng.uris)
            bridge.loop_start()
            with eng.subs_lock:
                subs = list(eng.subscriptions.items())
            v5 = eng.mqtt_version == mqtt.MQTTv5
            for t, s in subs:   # the same filters and subscription identifiers
                sent = b.subscribe([(t, EngineSubscription(s.qos, s.no_local, False, 2 if v5 else 0, s.properties,
                                                           degradable=True))], s.properties)
                if sent is None or any(code >= 0x80 for code in sent[1]):
                    raise SubscriptionRefusedError(f"the bridge could not subscribe to {t!r}", t,
                                                   sent[1][0] if sent else 0x80)
            b.conn.post(("call", swap.bridge_ready))   # after the last SUBACK, in its queue order
        except BaseException:
            bridge.close()
            raise
        return bridge

    @staticmethod
    def _close_bridge(bridge: mqtt.Client) -> None:
        """Unsubscribe, then let its loop deliver everything it received."""
        drained = threading.Event()
        try:
            if bridge.is_connected():
                filters = list(bridge._engine.subscriptions)
                if filters:
                    bridge.unsubscribe(filters)
            bridge._engine.conn.post(("call", drained.set))
            if not drained.wait(10):
                logger.warning("token swap: the bridge did not drain within 10 s")
        except Exception as exc:   # the swap's accounting goes on without the rest
            logger.warning("token swap: closing the bridge: %s", exc)
        finally:
            bridge.close()

    def _finish_swap(self, swap: TokenSwap, fill: bool) -> None:
        """On our loop thread, after everything queued: fill the gap (or just
        release what was held), and stop holding."""
        def finish() -> None:
            try:
                swap.finish() if fill else swap.release()
            finally:
                if self._swap is swap:
                    self._swap = None
                if swap.filled:
                    logger.info("token swap: %d event(s) of the reconnect gap came through the bridge",
                                swap.filled)
        self._engine.conn.post(("call", finish))

    # ---- topics -----------------------------------------------------------------

    def discover_topics(self) -> Dict[str, Any]:
        """Load the platform's topics from its REST API and merge them into
        the default table (``sermas_bus._discovery``): modules add topics at
        runtime and older releases differ.  Returns ``{"resources": {resource:
        [scope, ...]}, "added": {name: template}, "changed": {name: (ours,
        platform's)}, "ambiguous": [template, ...]}``.  The client's templates
        need a token of an app client; without one only ``resources`` is read.
        On an error (offline, refused) the table stays as it was and the
        ``sermas_bus.auth.AuthError`` says why."""
        token = self._token
        if token is None and self._source is not None:
            token = self._source.fetch()
        client_id = None
        if token is not None:
            client_id = token.claims.get("clientId") or getattr(self._source, "client_id", None)
        resources, templates = _discovery.fetch(self.base_url, self.app_id, client_id,
                                                token.access_token if token else None,
                                                timeout=self.connect_timeout)
        result = _discovery.merge(templates)
        result["resources"] = resources
        if result["added"] or result["changed"]:
            logger.info("SERMAS topics discovered: %d added, %d changed (%s)", len(result["added"]),
                        len(result["changed"]), ", ".join(sorted({**result["added"], **result["changed"]})))
        return result

    def topic(self, target: str, payload: Any = None, subscribe: bool = False, **params: Any) -> str:
        """The concrete topic (or filter) for a name, template or topic; the
        payload's fields fill parameters when it is a dict or a dataclass
        (the JSON encoder sends a dataclass as the object of its fields)."""
        return _topics.render(target, params or None, _fields_of(payload),
                              defaults=self._defaults, subscribe=subscribe)

    # ---- publish ----------------------------------------------------------------

    @staticmethod
    def _encode(payload: Any) -> Any:
        if payload is None or isinstance(payload, (bytes, bytearray, memoryview, str)):
            return payload
        return sbjson.dumps(payload)

    def publish(self, target: str, payload: Any = None, qos: int = 1, retain: bool = False,
                properties: Optional[Properties] = None, **params: Any) -> mqtt.MQTTMessageInfo:
        """Publish an event.  ``target``: a topic name (``"dialogue.messages"``),
        a template (``"app/:appId/ui/content"``) or a concrete topic.  Dicts and
        other JSON-able objects are encoded as JSON (in C); bytes go out raw;
        str as UTF-8.  Never blocks for an outage: while the client is
        offline (a token-refresh reconnect, a network cut, before connect())
        the event waits in the outbox (any QoS, at most ``max_queued``) and
        goes out after the reconnect; ``info.wait_for_publish()`` or
        ``flush()`` wait for it.  Raises OutboxFullError when the outbox is
        full."""
        topic = self.topic(target, payload, **params)
        data = self._encode(payload)
        if self._echo.active:
            self._echo.sent(topic, data)
        info = self._client.publish(topic, data, qos, retain, properties)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            raise OutboxFullError(
                f"cannot publish to {topic!r}: {self.max_queued} events are already waiting for the "
                "broker (the client is offline or the broker is slow); wait (bus.flush()) and retry, "
                "or raise SermasClient(max_queued=...)")
        return info

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every event published so far is delivered (QoS>0:
        acknowledged; QoS 0: written).  False if ``timeout`` s passed first."""
        return self._client.flush(timeout)

    # ---- subscribe --------------------------------------------------------------

    def subscribe(self, target: str, callback: Callable[..., Any], qos: int = 1, no_local: bool = True,
                  share: Optional[str] = None, **params: Any) -> Subscription:
        """Call ``callback(event, message)`` for events on ``target`` (name,
        template or MQTT filter); unfilled parameters match anything.
        ``share="workers"`` makes it a shared subscription: the broker spreads
        the events over every subscriber of the group."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        if isinstance(qos, bool) or qos not in (0, 1, 2):
            raise ValueError(f"invalid QoS {qos!r}: must be 0, 1 or 2")
        route = self.topic(target, None, subscribe=True, **params)
        broker_filter = f"$share/{share}/{route}" if share else route
        if share is not None and (not share or any(c in share for c in "/+#")):
            raise ValueError(f"invalid share group {share!r}: must be non-empty without '/', '+', '#'")
        sub = Subscription(self, broker_filter, route, callback)
        with self._lock:
            self._routes.add(route, sub)
            sid = self._filter_ids.get(broker_filter)
            if sid is None:
                # MQTT 5 Subscription Identifier: the broker sends one copy per
                # matching subscription and tags each, so overlapping
                # subscriptions do not deliver an event twice to a callback
                sid = self._filter_ids[broker_filter] = next(self._next_sid)
                self._by_sid[sid] = []
                new = True
            else:
                new = False
            self._by_sid[sid] = self._by_sid[sid] + [sub]
            sub._sid = sid
        sub.no_local = no_local and share is None
        if sub.no_local and self._client.protocol != mqtt.MQTTv5:
            self._echo.enable()
        if new:
            props = None
            if self._client.protocol == mqtt.MQTTv5:
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = sid
            # degradable: on MQTT 3.1.1 noLocal and the identifier are dropped
            # (routing by topic, echo filtered here) instead of refused
            wanted = EngineSubscription(qos, sub.no_local, False, 0, props, degradable=True)
            try:
                validate_topic_filter(broker_filter)
                sent = self._engine.subscribe([(broker_filter, wanted)], props)
            except BaseException:
                self._remove(sub, unsubscribe=False)
                raise
            codes = sent[1] if sent is not None else None
            if codes and codes[0] >= 0x80:
                self._remove(sub, unsubscribe=False)
                raise SubscriptionRefusedError(
                    f"the broker refused the subscription to {broker_filter!r}: "
                    f"{_core.reason_string(codes[0])} (reason code 0x{codes[0]:02X}); "
                    f"{platform_acl_hint(broker_filter)}", broker_filter, codes[0])
        return sub

    def on(self, target: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of ``subscribe``."""
        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            self.subscribe(target, func, **kwargs)
            return func
        return decorator

    def _remove(self, sub: Subscription, unsubscribe: bool = True) -> None:
        sub.active = False
        with self._lock:
            self._routes.discard(sub._route, sub)
            left = [s for s in self._by_sid.get(sub._sid, []) if s is not sub]
            if left:
                self._by_sid[sub._sid] = left
            else:
                self._by_sid.pop(sub._sid, None)
                self._filter_ids.pop(sub.filter, None)
        if not left and unsubscribe:
            self._client.unsubscribe(sub.filter)

    def _dispatch(self, client: Any, userdata: Any, msg: Any) -> None:
        swap = self._swap
        if swap is not None and swap.hold(msg):
            return          # after the token swap's disconnect: delivered when the gap is filled
        self._deliver(msg)

    def _deliver(self, msg: Any) -> None:
        try:
            event: Any = sbjson.loads(msg.payload)
            is_json = True
        except ValueError:
            event, is_json = msg.payload, False   # raw bytes (audio chunks, non-JSON): never dropped
        topic = msg.topic
        match = _topics.match(topic)
        name, params = (match if match is not None else (None, {}))
        m = Message(msg, name, params, is_json)
        sids = msg.subscription_ids
        if sids:   # exactly the subscriptions this copy was sent for
            subs = [s for sid in sids for s in self._by_sid.get(sid, ())]
        else:      # MQTT 3.1.1: no identifiers, route by topic
            subs = self._routes.match(topic)
            if self._echo.active and self._echo.is_echo(topic, msg.payload):
                subs = [s for s in subs if not s.no_local]   # our own event, back from the broker
        for sub in subs:
            try:
                sub.callback(event, m)
            except Exception as exc:
                logger.error("Caught exception in SERMAS callback for %s: %s", sub.filter, exc, exc_info=exc)

    # ---- iterators for notebooks and tests ------------------------------------

    def events(self, target: str, timeout: Optional[float] = None, max_events: Optional[int] = None,
               **params: Any) -> Iterator[Any]:
        """Yield ``(event, message)`` pairs on ``target``; stops after
        ``timeout`` s without one (None: never) or ``max_events``."""
        q: "_queue.SimpleQueue[Any]" = _queue.SimpleQueue()
        sub = self.subscribe(target, lambda e, m: q.put((e, m)), **params)
        try:
            yield from drain(q, timeout, max_events)
        finally:
            sub.unsubscribe()

    def wait_for(self, target: str, predicate: Optional[Callable[[Any], bool]] = None,
                 timeout: float = 10.0, **params: Any) -> Any:
        """The first event on ``target`` for which ``predicate(event)`` is true
        (any event without a predicate); raises TimeoutError."""
        deadline = time.monotonic() + timeout
        for event, _msg in self.events(target, timeout=timeout, **params):
            if predicate is None or predicate(event):
                return event
            if time.monotonic() >= deadline:
                break
        raise TimeoutError(f"no matching event on {target!r} within {timeout} s")

