"""asyncio face of sermas_bus: ``AsyncClient`` and ``AsyncSermasClient``.

Both sit on the same connection and C queue as the threaded API; there is no
second implementation and no receive thread of our own::

    async with AsyncClient(host="mqtt://localhost:1883") as c:
        await c.subscribe("sensors/#")
        await c.publish("sensors/t", b"21.5")          # returns on PUBACK
        async for msg in c.messages(timeout=5):
            print(msg.topic, msg.payload)

How (see docs/asyncio.md):

* Receiving: the event loop watches the inbound queue's eventfd
  (``Client.socket().fileno()``, readable while events are queued) with
  ``loop.add_reader`` and drains it with ``pump(timeout=0)``, which never
  blocks: one batch per readiness, so other tasks run between batches.
* ``await publish`` (QoS>0) resolves a future from the pumped ``published``
  event of its message id; ``lost``/``disconnected``/``connected`` events
  settle what is left exactly as ``wait_for_publish`` would.
* What blocks on the broker (connect, reconnect with back-off,
  subscribe/unsubscribe until SUBACK/UNSUBACK, disconnect, close, token
  refresh) runs in the loop's default executor; the C core releases the GIL.
* Callbacks run on the event loop; a callback that returns an awaitable
  (``async def``) is scheduled as a task.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import threading
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Deque, Dict, List, Optional, Tuple

from . import _core
from .client import (
    _AUTO, MQTT_CLEAN_START_FIRST_ONLY, MQTT_ERR_SUCCESS, CallbackAPIVersion, Client, MQTTMessage,
    MQTTMessageInfo,
)
from ._callbacks import Callback
from .errors import ClosedError, ConnectionLostError, NotConnectedError
from .errors import TimeoutError as SbTimeoutError
from .matcher import TopicMatcher, validate_topic_filter

__all__ = ["AsyncClient", "AsyncSermasClient", "AsyncSubscription", "EventStream"]

logger = logging.getLogger("sermas_bus")


def _cb_failed(name: str, exc: BaseException) -> None:
    logger.error("Caught exception in %s: %s", name, exc, exc_info=exc)


class _AioClient(Client):
    """The Client under an AsyncClient.  Differs in three hooks only: messages
    go to the AsyncClient's router, other callbacks get the AsyncClient as
    their ``client`` argument and always run on the event loop (connects run
    in executor threads), and ``published`` events stay on (publish futures
    are resolved from them)."""

    _aio: "AsyncClient"

    def _message_target(self) -> Tuple[Any, Tuple[Any, ...]]:
        return self._aio._route, ()

    def _set_cb(self, name: str, func: Optional[Callable[..., Any]]) -> None:
        super()._set_cb(name, func)
        if name == "on_publish":
            self._conn.set_options(want_published=True)

    def _call(self, name: str, primary: Any, alternative: Any = None) -> None:
        cb = self._callbacks.get(name)
        if cb is None:
            return
        aio = self._aio
        if primary and primary[0] is self:
            primary = (aio,) + tuple(primary[1:])
        if alternative and alternative[0] is self:
            alternative = (aio,) + tuple(alternative[1:])
        aio._invoke_on_loop(cb, primary, alternative)


class AsyncClient:
    """asyncio MQTT client over ``sermas_bus.client.Client``.

    Constructor: the same arguments as ``Client`` (but callback API VERSION2
    by default), plus keyword-only ``host`` (name, URL or list of URLs),
    ``port``, ``keepalive``, ``clean_start``, ``properties``, ``username``,
    ``password``: with ``host`` given, ``async with`` connects on enter.
    ``async with`` always closes on exit.

    Received messages go to the ``message_callback_add`` callbacks whose
    filter matches, else to ``on_message``, else to the queue read by
    ``messages()``.  Callbacks may be ``async def``: they run as tasks.
    """

    def __init__(self, callback_api_version: Any = CallbackAPIVersion.VERSION2, client_id: Optional[str] = "",
                 clean_session: Optional[bool] = None, userdata: Any = None, protocol: Any = _AUTO,
                 transport: str = "tcp", reconnect_on_failure: bool = True, manual_ack: bool = False, *,
                 queue_max: int = 10000, spin_us: int = 0, host: Any = None, port: int = 1883,
                 keepalive: int = 60, clean_start: Any = MQTT_CLEAN_START_FIRST_ONLY, properties: Any = None,
                 username: Optional[str] = None, password: Any = None, persistence: Any = None,
                 persistence_sync: str = "write", persistence_max_bytes: Optional[int] = None):
        client = _AioClient(callback_api_version, client_id, clean_session, userdata, protocol, transport,
                            reconnect_on_failure, manual_ack, queue_max=queue_max, spin_us=spin_us,
                            persistence=persistence, persistence_sync=persistence_sync,
                            persistence_max_bytes=persistence_max_bytes)
        client._aio = self
        client._conn.set_options(want_published=True)
        self._setup(client, client.close, queue_max)
        if username is not None:
            client.username_pw_set(username, password)
        self._target = None if host is None else (host, port, keepalive, clean_start, properties)

    @classmethod
    def _wrap(cls, client: Client, closer: Callable[[], None]) -> "AsyncClient":
        """An AsyncClient over an existing Client that keeps its own message
        routing (used by AsyncSermasClient)."""
        self = cls.__new__(cls)
        client._conn.set_options(want_published=True)
        self._setup(client, closer, client._conn.stats()["queue_max"])
        self._target = None
        return self

    def _setup(self, client: Client, closer: Callable[[], None], queue_max: int) -> None:
        self._client = client
        self._closer = closer
        self._fd = client._conn.fileno()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_tid: Optional[int] = None
        self._reading = False
        self._closed = False
        self._backlog_max = queue_max or 1_000_000
        self._engine = client._engine        # the connection life-cycle this face adapts
        self._window = self._engine.max_inflight or 65535
        self._pending: Dict[int, Tuple[MQTTMessageInfo, "asyncio.Future[Any]"]] = {}
        self._window_waiters: Deque["asyncio.Future[None]"] = collections.deque()
        self._inbox: Deque[MQTTMessage] = collections.deque()
        self._inbox_waiters: List["asyncio.Future[None]"] = []
        self._tasks: "set[asyncio.Future[Any]]" = set()
        self._on_message: Optional[Callback] = None
        self._handlers: TopicMatcher = TopicMatcher()
        self._handler_count = 0
        self._reconnect_timer: Optional[asyncio.TimerHandle] = None
        self._reconnect_job: Optional["asyncio.Future[Any]"] = None

    # ---- the loop side: eventfd -> pump(timeout=0) ------------------------------

    def _ensure_attached(self) -> asyncio.AbstractEventLoop:
        """Bind to the running loop (first use) and watch the queue's eventfd."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return loop
        if self._closed:
            raise ClosedError("this AsyncClient is closed")
        old = self._loop
        if old is not None and not old.is_closed():
            if old.is_running():
                raise RuntimeError("this AsyncClient is bound to another running event loop")
            if self._reading:
                old.remove_reader(self._fd)
        self._loop, self._loop_tid, self._reading = loop, threading.get_ident(), False
        # futures of a previous loop cannot be resumed on this one
        self._pending.clear()
        self._window_waiters.clear()
        self._inbox_waiters.clear()
        self._update_reading()
        return loop

    def _update_reading(self) -> None:
        """Watch the eventfd unless what the loop holds (queued messages, callback
        tasks) reached queue_max: then the C queue fills and the broker waits.
        While acknowledgements are awaited it keeps reading (they may be queued
        behind messages), as the C core does for threads blocked on the broker."""
        loop = self._loop
        if loop is None:
            return
        backlog = len(self._inbox) + len(self._tasks)
        if self._closed:
            want = False
        elif self._pending:
            want = True
        elif self._reading:
            want = backlog < self._backlog_max
        else:
            want = backlog <= self._backlog_max // 2
        if want != self._reading:
            if want:
                loop.add_reader(self._fd, self._on_readable)
            else:
                loop.remove_reader(self._fd)
            self._reading = want

    def _on_readable(self) -> None:
        try:
            events = self._client._pump_once(0.0)
        except Exception as exc:   # a callback with suppress_exceptions=False; the loop goes on
            _cb_failed("the sermas_bus dispatcher", exc)
            events = []
        for ev in events:
            if isinstance(ev, tuple):
                self._after_event(ev)
        self._update_reading()

    def _after_event(self, ev: Tuple[Any, ...]) -> None:
        kind = ev[0]
        if kind == "published":
            entry = self._pending.get(ev[1])
            if entry is not None:
                self._settle(ev[1], entry)
        elif kind in ("lost", "connected", "disconnected", "refused"):
            if kind == "connected":
                self._window = int(ev[1].get("window") or self._window)
            self._settle_all()
            if kind in ("lost", "refused"):
                self._schedule_reconnect()

    # ---- publish futures ------------------------------------------------------

    def _settle(self, mid: int, entry: Tuple[MQTTMessageInfo, "asyncio.Future[Any]"]) -> None:
        info, fut = entry
        state, _reason = info._state(0.0)
        if state == _core.PUB_PENDING:
            return
        del self._pending[mid]
        if not fut.done():
            try:
                info.wait_for_publish(0)     # the sync API's outcome and exception
            except Exception as exc:
                fut.set_exception(exc)
                fut.exception()              # retrieved: an abandoned await must not log it
            else:
                fut.set_result(info)
        self._wake_window()

    def _settle_all(self) -> None:
        for mid, entry in list(self._pending.items()):
            self._settle(mid, entry)

    def _wake_window(self) -> None:
        free = self._window - len(self._pending)
        while free > 0 and self._window_waiters:
            w = self._window_waiters.popleft()
            if not w.done():
                w.set_result(None)
                free -= 1

    async def _window_room(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for room in the publish window here, not in C on the loop thread."""
        while len(self._pending) >= self._window:
            if self._closed:
                raise ClosedError("this AsyncClient is closed")
            w = loop.create_future()
            self._window_waiters.append(w)
            try:
                await w
            except asyncio.CancelledError:
                if w.done() and not w.cancelled():
                    self._wake_window()      # pass the wake-up on
                else:
                    try:
                        self._window_waiters.remove(w)
                    except ValueError:
                        pass
                raise

    async def publish(self, topic: str, payload: Any = None, qos: int = 1, retain: bool = False,
                      properties: Any = None, *, timeout: Optional[float] = None) -> MQTTMessageInfo:
        """Publish; for QoS>0 returns once the broker acknowledged (PUBACK /
        PUBCOMP), for QoS 0 once written.  While disconnected a QoS>0 message
        waits in the outbox and this returns once it was delivered after the
        reconnect.  Raises what ``wait_for_publish`` raises: ``TimeoutError``
        (after ``timeout`` s; the message stays in the outbox),
        ``ConnectionLostError`` (closed first), ``PublishError``,
        ``NotConnectedError`` (QoS 0 while disconnected), ``ValueError``
        (outbox full).  Cancelling the await does not cancel the message."""
        loop = self._ensure_attached()
        if qos and len(self._pending) >= self._window:
            await self._window_room(loop)
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != MQTT_ERR_SUCCESS and not info._queued:
            raise info._not_sent()      # QoS 0 while disconnected, or a full outbox
        if not qos:
            return info
        fut: "asyncio.Future[Any]" = loop.create_future()
        self._pending[info.mid] = (info, fut)
        if not self._reading:
            self._update_reading()
        if timeout is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            if fut.cancelled():      # wait_for's own time-out (fut never holds one)
                raise SbTimeoutError(f"message mid={info.mid} not acknowledged within {timeout} s") from None
            raise

    # ---- messages --------------------------------------------------------------

    def _route(self, msg: MQTTMessage) -> None:
        """Called by the C pump for each message (on the event loop)."""
        if self._handler_count:
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = None
            if topic is not None:
                matched = False
                for cb in self._handlers.iter_match(topic):
                    matched = True
                    self._invoke(cb, (self, self._client.user_data_get(), msg))
                if matched:
                    return
        cb = self._on_message
        if cb is not None:
            self._invoke(cb, (self, self._client.user_data_get(), msg))
            return
        self._inbox.append(msg)
        if self._inbox_waiters:
            for w in self._inbox_waiters:
                if not w.done():
                    w.set_result(None)

    async def _next_message(self, timeout: Optional[float]) -> Optional[MQTTMessage]:
        """The next queued message; None after ``timeout`` s or when closed.
        Cancelling takes nothing from the queue."""
        loop = self._ensure_attached()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._inbox:
            if self._closed:
                return None
            w = loop.create_future()
            timer = None
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    return None
                timer = loop.call_later(left, _set_if_pending, w)
            self._inbox_waiters.append(w)
            try:
                await w
            finally:
                if w in self._inbox_waiters:
                    self._inbox_waiters.remove(w)
                if timer is not None:
                    timer.cancel()
        msg = self._inbox.popleft()
        if not self._reading:
            self._update_reading()
        return msg

    def messages(self, timeout: Optional[float] = None,
                 max_messages: Optional[int] = None) -> AsyncIterator[MQTTMessage]:
        """``async for msg in c.messages()``: messages no callback took.  Ends
        after ``timeout`` s without one (None: never), after ``max_messages``,
        or when the client closes.  Several iterators share one queue; what an
        iterator does not yield (it was cancelled, or broken out of) stays
        queued for the next."""
        return _MessageIterator(self, timeout, max_messages)

    @property
    def on_message(self) -> Optional[Callable[..., Any]]:
        return self._on_message.func if self._on_message else None

    @on_message.setter
    def on_message(self, func: Optional[Callable[..., Any]]) -> None:
        self._on_message = None if func is None else Callback("on_message", func)

    def message_callback_add(self, sub: str, callback: Callable[..., Any]) -> None:
        """Route messages matching ``sub`` to ``callback`` (sync or async)
        instead of on_message / the queue."""
        validate_topic_filter(sub)
        if sub not in self._handlers:
            self._handler_count += 1
        self._handlers[sub] = Callback("on_message", callback)

    def message_callback_remove(self, sub: str) -> None:
        try:
            del self._handlers[sub]
            self._handler_count = max(0, self._handler_count - 1)
        except KeyError:
            pass

    def topic_callback(self, sub: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            self.message_callback_add(sub, func)
            return func
        return decorator

    # ---- callbacks and tasks ------------------------------------------------

    def _invoke(self, cb: Callback, primary: Any, alternative: Any = None) -> None:
        try:
            result = cb.call(primary, alternative)
        except Exception as exc:
            _cb_failed(cb.name, exc)
            return
        if result is not None and inspect.isawaitable(result):
            self._spawn(result, cb.name)

    def _invoke_on_loop(self, cb: Callback, primary: Any, alternative: Any) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_tid:
            self._invoke(cb, primary, alternative)
            return
        try:   # from an executor thread (connect, disconnect): hop to the loop
            loop.call_soon_threadsafe(self._invoke, cb, primary, alternative)
        except RuntimeError:    # the loop is closed: nobody left to call
            pass

    def _spawn(self, awaitable: Awaitable[Any], name: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            logger.error("%s returned an awaitable outside an event loop; it was not run", name)
            return
        task = asyncio.ensure_future(awaitable, loop=loop)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, name))

    def _task_done(self, name: str, task: "asyncio.Future[Any]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _cb_failed(name, task.exception())    # type: ignore[arg-type]
        if not self._reading:
            self._update_reading()

    def _callback_property(name: str) -> property:  # type: ignore[misc]
        return property(lambda self: getattr(self._client, name),
                        lambda self, func: setattr(self._client, name, func),
                        doc=f"{name}: as on Client, with this AsyncClient as ``client``; may be async.")

    on_connect = _callback_property("on_connect")
    on_connect_fail = _callback_property("on_connect_fail")
    on_disconnect = _callback_property("on_disconnect")
    on_publish = _callback_property("on_publish")
    on_subscribe = _callback_property("on_subscribe")
    on_unsubscribe = _callback_property("on_unsubscribe")
    on_pre_connect = _callback_property("on_pre_connect")
    del _callback_property

    # ---- connecting, subscribing: blocking calls in the default executor ---------

    async def _in_executor(self, func: Callable[..., Any], *args: Any) -> Any:
        loop = self._ensure_attached()
        return await loop.run_in_executor(None, functools.partial(func, *args))

    async def connect(self, host: Any = "localhost", port: int = 1883, keepalive: int = 60,
                      clean_start: Any = MQTT_CLEAN_START_FIRST_ONLY, properties: Any = None) -> None:
        """Connect (in an executor thread); raises like ``Client.connect``.
        After a lost connection the client reconnects with the Client's
        back-off (``reconnect_delay_set``) and restores subscriptions."""
        await self._in_executor(self._client.connect, host, port, keepalive, "", 0, clean_start, properties)

    async def disconnect(self, reasoncode: Any = None, properties: Any = None, timeout: float = 5.0) -> Any:
        """Wait up to ``timeout`` s for in-flight QoS>0 messages, send DISCONNECT,
        stop reconnecting."""
        self._cancel_reconnect_timer()
        rc = await self._in_executor(self._client.disconnect, reasoncode, properties, timeout)
        self._settle_all()
        return rc

    async def flush(self, timeout: Optional[float] = None) -> bool:
        """``Client.flush`` in an executor thread: wait until every accepted
        publish is delivered; False if ``timeout`` s passed first."""
        return bool(await self._in_executor(self._client.flush, timeout))

    async def subscribe(self, topic: Any, qos: int = 1, options: Any = None,
                        properties: Any = None) -> Tuple[Any, Optional[int]]:
        """``Client.subscribe`` (waits for the SUBACK) in an executor thread.
        Note: QoS 1 by default (Client follows paho: 0)."""
        return await self._in_executor(self._client.subscribe, topic, qos, options, properties)

    async def unsubscribe(self, topic: Any, properties: Any = None) -> Tuple[Any, Optional[int]]:
        return await self._in_executor(self._client.unsubscribe, topic, properties)

    def _schedule_reconnect(self) -> None:
        if (self._closed or self._loop is None or self._reconnect_timer is not None
                or self._reconnect_job is not None):
            return
        delay = self._engine.seconds_until_attempt()
        if delay is None:
            return
        self._reconnect_timer = self._loop.call_later(delay, self._reconnect_now)

    def _reconnect_now(self) -> None:
        self._reconnect_timer = None
        if self._closed or self._loop is None:
            return
        try:
            job = self._loop.run_in_executor(None, self._engine.attempt_if_due)
        except RuntimeError as exc:   # the executor is shut down (the loop is ending)
            logger.warning("sermas_bus: cannot reconnect: %s", exc)
            return
        self._reconnect_job = job
        job.add_done_callback(self._reconnect_done)

    def _reconnect_done(self, job: "asyncio.Future[Any]") -> None:
        self._reconnect_job = None
        if not job.cancelled() and job.exception() is not None:
            _cb_failed("reconnect", job.exception())   # type: ignore[arg-type]
        self._schedule_reconnect()      # failed: the Client set the next attempt's time

    def _cancel_reconnect_timer(self) -> None:
        if self._reconnect_timer is not None:
            self._reconnect_timer.cancel()
            self._reconnect_timer = None

    async def close(self) -> None:
        """Disconnect, stop watching the queue, release the connection (in an
        executor thread).  Pending ``await publish`` raise ConnectionLostError,
        ``messages()`` iterators end, callback tasks still running are cancelled."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        self._engine.stop()
        self._cancel_reconnect_timer()
        if self._reconnect_job is not None:
            await asyncio.wait([self._reconnect_job])
        self._closed = True
        self._update_reading()
        try:
            await loop.run_in_executor(None, self._closer)
        finally:
            if self._loop is loop:
                self._settle_all()
                for mid, (info, fut) in list(self._pending.items()):
                    del self._pending[mid]
                    if not fut.done():
                        fut.set_exception(ConnectionLostError(f"the client was closed before message "
                                                              f"mid={info.mid} was acknowledged"))
                        fut.exception()
                for w in list(self._window_waiters) + self._inbox_waiters:
                    if not w.done():
                        w.set_result(None)
                current = asyncio.current_task()
                tasks = [t for t in self._tasks if t is not current]
                for t in tasks:
                    t.cancel()
                if tasks:
                    await asyncio.wait(tasks)

    async def __aenter__(self) -> "AsyncClient":
        self._ensure_attached()
        if self._target is not None and not self._client.is_connected():
            await self.connect(*self._target)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ---- plain forwards ---------------------------------------------------------

    @property
    def client(self) -> Client:
        """The underlying ``sermas_bus.client.Client`` (thread-safe ``publish``
        from other threads; do not run its loop while this AsyncClient is used)."""
        return self._client

    @property
    def client_id(self) -> str:
        return self._client.client_id

    @property
    def protocol(self) -> int:
        return self._client.protocol

    def is_connected(self) -> bool:
        return self._client.is_connected()

    def max_queued_messages_set(self, queue_size: int) -> "AsyncClient":
        self._client.max_queued_messages_set(queue_size)
        self._backlog_max = queue_size or 1_000_000
        return self

    def max_inflight_messages_set(self, inflight: int) -> None:
        self._client.max_inflight_messages_set(inflight)
        if not self._client.is_connected():
            self._window = self._engine.max_inflight

    def __repr__(self) -> str:
        state = "connected" if self.is_connected() else "disconnected"
        return f"<sermas_bus.aio.AsyncClient id={self._client.client_id!r} {state}>"


def _forward(name: str) -> Callable[..., Any]:
    def method(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._client, name)(*args, **kwargs)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"As ``Client.{name}`` (does not block)."
    return method


for _name in ("user_data_set", "user_data_get", "username_pw_set", "will_set", "will_clear",
              "reconnect_delay_set", "connect_timeout_set", "ws_set_options", "tls_set", "tls_set_context",
              "tls_insecure_set", "enable_logger", "disable_logger", "stats"):
    setattr(AsyncClient, _name, _forward(_name))
del _name


def _set_if_pending(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class _MessageIterator:
    def __init__(self, aio: AsyncClient, timeout: Optional[float], max_messages: Optional[int]):
        self._aio, self._timeout, self._max, self._count = aio, timeout, max_messages, 0

    def __aiter__(self) -> "_MessageIterator":
        return self

    async def __anext__(self) -> MQTTMessage:
        if self._max is not None and self._count >= self._max:
            raise StopAsyncIteration
        msg = await self._aio._next_message(self._timeout)
        if msg is None:
            raise StopAsyncIteration
        self._count += 1
        return msg


# ---------------------------------------------------------------------------
# AsyncSermasClient
# ---------------------------------------------------------------------------

class AsyncSubscription:
    """What ``AsyncSermasClient.subscribe`` returns.  The callback is routed at
    once; the broker subscription is sent in an executor thread, in call order
    with the other (un)subscriptions.  ``await sub`` waits for the SUBACK
    (and raises what subscribing raised); ``await sub.unsubscribe()``."""

    def __init__(self, owner: "AsyncSermasClient", filter_: str, callback: Callable[..., Any]):
        self._owner = owner
        self.filter = filter_
        self.callback = callback
        self.active = True
        self._sub: Any = None             # the SermasClient Subscription, once made
        self._done: Optional[Awaitable[Any]] = None

    def __await__(self) -> Any:
        if self._done is not None:
            yield from self._done.__await__()
        return self

    def unsubscribe(self) -> Awaitable[None]:
        """Remove the callback (and the broker subscription once unused)."""
        if not self.active:
            return _DONE
        self.active = False

        def op() -> None:
            if self._sub is not None:
                self._sub.unsubscribe()
        return self._owner._run_op(op, f"unsubscribe {self.filter!r}")

    def __repr__(self) -> str:
        return f"<AsyncSubscription {self.filter} active={self.active}>"


class _Done:
    """An awaitable that is already done (no coroutine left un-awaited if ignored)."""

    __slots__ = ()

    def __await__(self) -> Any:
        return None
        yield   # noqa: unreachable - makes this a generator


_DONE = _Done()


class EventStream:
    """``bus.events(...)``: an async iterator of ``(event, message)``.  It
    subscribes when created; ``async with`` waits for the SUBACK on enter (so
    nothing published after it is missed) and unsubscribes on exit, as does
    reaching ``timeout`` / ``max_events`` or ``aclose()``."""

    def __init__(self, owner: "AsyncSermasClient", target: str, timeout: Optional[float],
                 max_events: Optional[int], params: Dict[str, Any]):
        self._timeout, self._max, self._count = timeout, max_events, 0
        self._items: Deque[Tuple[Any, Any]] = collections.deque()
        self._waiter: Optional["asyncio.Future[None]"] = None
        self._closed = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        self._sub = owner.subscribe(target, self._put, **params)

    def _put(self, event: Any, msg: Any) -> None:
        self._items.append((event, msg))
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _next(self, timeout: Optional[float]) -> Optional[Tuple[Any, Any]]:
        await self._sub
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._items:
            if self._closed:
                return None
            w = self._waiter = loop.create_future()
            timer = None
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    return None
                timer = loop.call_later(left, _set_if_pending, w)
            try:
                await w
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        return self._items.popleft()

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> Tuple[Any, Any]:
        item = None
        if not self._closed and (self._max is None or self._count < self._max):
            item = await self._next(self._timeout)
        if item is None:
            await self.aclose()
            raise StopAsyncIteration
        self._count += 1
        return item

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(None)
            await self._sub.unsubscribe()

    async def __aenter__(self) -> "EventStream":
        await self._sub
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # abandoned (e.g. ``break`` out of ``async for``): unsubscribe on its loop
        sub = getattr(self, "_sub", None)
        if not getattr(self, "_closed", True) and sub is not None and sub.active and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(sub.unsubscribe)
            except Exception:   # the loop is closed: the client is going away too
                pass


class AsyncSermasClient:
    """The asyncio twin of ``sermas_bus.SermasClient`` (same constructor)::

        async with AsyncSermasClient("http://localhost:8080", app_id="myapp",
                                     client_id="svc", client_secret="...") as bus:
            @bus.on("dialogue.messages", sessionId="s1")
            async def said(event, msg):
                await bus.publish("dialogue.messages", {"sessionId": "s1", "text": "ok"})

            async for event, msg in bus.events("session.sessionChanged", timeout=30):
                ...

    It drives a SermasClient's connection from the event loop (no loop thread,
    no token thread): topics, JSON, routing and token refresh are
    SermasClient's own code; what blocks runs in the default executor."""

    def __init__(self, *args: Any, **kwargs: Any):
        from .sermas import SermasClient   # not needed by AsyncClient users
        self._bus = SermasClient(*args, **kwargs)
        self._aio = AsyncClient._wrap(self._bus.client, self._bus.close)
        self._refresh_task: Optional["asyncio.Task[None]"] = None
        self._refresh_job: Optional["asyncio.Future[Any]"] = None
        self._ops_lock: Optional[asyncio.Lock] = None
        self._ops_loop: Optional[asyncio.AbstractEventLoop] = None
        self._ops: "set[asyncio.Task[Any]]" = set()

    # ---- lifecycle ------------------------------------------------------------

    async def connect(self) -> "AsyncSermasClient":
        """Fetch a token (with credentials), connect, and keep the token fresh
        from a task (the refresh itself runs in an executor thread)."""
        loop = self._aio._ensure_attached()
        await loop.run_in_executor(None, self._bus._connect_blocking)
        token = self._bus.token
        if token is not None and token.expires_at is not None and self._refresh_task is None:
            self._refresh_task = loop.create_task(self._refresh_loop())
        return self

    async def _refresh_loop(self) -> None:
        loop = asyncio.get_running_loop()
        bus, delay = self._bus, 1.0
        while True:
            token = bus.token
            left = token.seconds_left() if token is not None else None
            if left is None:
                return
            await asyncio.sleep(max(0.0, left - bus.refresh_margin))
            try:
                self._refresh_job = loop.run_in_executor(None, bus.refresh_token)
                await self._refresh_job
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # keep trying: the broker cuts us off at exp otherwise
                logger.warning("token refresh failed: %s; retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
            finally:
                self._refresh_job = None

    async def refresh_token(self) -> Any:
        """Refresh now and reconnect with the new token (SermasClient.refresh_token
        in an executor thread)."""
        return await self._aio._in_executor(self._bus.refresh_token)

    async def close(self) -> None:
        task, job = self._refresh_task, self._refresh_job
        self._refresh_task = None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if job is not None and not job.done():
            await asyncio.wait([job])     # let a reconnect in progress finish before closing
        ops = [t for t in self._ops if t is not asyncio.current_task()]
        if ops:
            await asyncio.wait(ops)       # (un)subscriptions in flight finish first
        await self._aio.close()

    async def __aenter__(self) -> "AsyncSermasClient":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def sync(self) -> Any:
        """The underlying SermasClient (its blocking methods block the loop)."""
        return self._bus

    @property
    def client(self) -> Client:
        return self._bus.client

    @property
    def app_id(self) -> str:
        return self._bus.app_id

    @property
    def token(self) -> Any:
        return self._bus.token

    @property
    def refreshes(self) -> int:
        return self._bus.refreshes

    def is_connected(self) -> bool:
        return self._bus.is_connected()

    def topic(self, target: str, payload: Any = None, subscribe: bool = False, **params: Any) -> str:
        return self._bus.topic(target, payload, subscribe, **params)

    # ---- publish ------------------------------------------------------------

    async def publish(self, target: str, payload: Any = None, qos: int = 1, retain: bool = False,
                      properties: Any = None, *, timeout: Optional[float] = None,
                      **params: Any) -> MQTTMessageInfo:
        """Publish an event (see SermasClient.publish) and, at QoS>0, wait for
        the broker's acknowledgement (``timeout``: as AsyncClient.publish).
        Waits (up to connect_timeout) through a reconnect instead of failing."""
        bus = self._bus
        topic = bus.topic(target, payload, **params)
        data = bus._encode(payload)
        deadline = time.monotonic() + bus.connect_timeout
        while True:
            try:
                return await self._aio.publish(topic, data, qos, retain, properties, timeout=timeout)
            except NotConnectedError:
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.005)   # reconnecting (token refresh or network)

    # ---- subscribe ----------------------------------------------------------

    def _run_op(self, op: Callable[[], Any], what: str) -> Awaitable[Any]:
        """Run a (possibly blocking) subscription change: in an executor thread,
        in call order, from a running loop; directly without one (then the
        client is not connected and nothing blocks)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            op()
            return _DONE
        loop = self._aio._ensure_attached()
        if self._ops_loop is not loop:
            self._ops_lock, self._ops_loop = asyncio.Lock(), loop
        lock = self._ops_lock
        assert lock is not None

        async def ordered() -> Any:
            async with lock:          # FIFO: ops start in the order they were asked for
                return await loop.run_in_executor(None, op)

        task = loop.create_task(ordered())
        self._ops.add(task)         # the loop keeps only weak references to tasks
        task.add_done_callback(self._ops.discard)
        task.add_done_callback(functools.partial(_log_op_failure, what))
        return task

    def subscribe(self, target: str, callback: Callable[..., Any], qos: int = 1, no_local: bool = True,
                  share: Optional[str] = None, **params: Any) -> AsyncSubscription:
        """Call ``callback(event, message)`` for events on ``target`` (name,
        template or filter); an ``async def`` callback runs as a task.  Returns
        at once; ``await`` the result to wait for the broker's SUBACK."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        filter_ = self._bus.topic(target, None, subscribe=True, **params)   # bad names/params raise here
        if share is not None and (not share or any(c in share for c in "/+#")):
            raise ValueError(f"invalid share group {share!r}: must be non-empty without '/', '+', '#'")
        aio = self._aio

        def call(event: Any, msg: Any) -> None:
            result = callback(event, msg)
            if result is not None and inspect.isawaitable(result):
                aio._spawn(result, f"SERMAS callback for {filter_}")

        handle = AsyncSubscription(self, f"$share/{share}/{filter_}" if share else filter_, callback)

        def op() -> None:
            if handle.active:
                handle._sub = self._bus.subscribe(target, call, qos, no_local, share, **params)
        handle._done = self._run_op(op, f"subscribe {handle.filter!r}")
        return handle

    def on(self, target: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of ``subscribe``."""
        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            self.subscribe(target, func, **kwargs)
            return func
        return decorator

    def events(self, target: str, timeout: Optional[float] = None, max_events: Optional[int] = None,
               **params: Any) -> EventStream:
        """``async for event, msg in bus.events(...)``: stops after ``timeout`` s
        without an event (None: never) or after ``max_events``.  Use
        ``async with bus.events(...) as stream`` to be subscribed before you
        trigger what you wait for."""
        return EventStream(self, target, timeout, max_events, params)

    async def wait_for(self, target: str, predicate: Optional[Callable[[Any], Any]] = None,
                       timeout: float = 10.0, **params: Any) -> Any:
        """The first event on ``target`` for which ``predicate(event)`` (sync or
        async) is true; raises sermas_bus.errors.TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self.events(target, **params) as stream:
            while True:
                item = await stream._next(max(0.0, deadline - loop.time()))
                if item is None:
                    break
                ok = True if predicate is None else predicate(item[0])
                if inspect.isawaitable(ok):
                    ok = await ok
                if ok:
                    return item[0]
        raise SbTimeoutError(f"no matching event on {target!r} within {timeout} s")

    def __repr__(self) -> str:
        state = "connected" if self.is_connected() else "disconnected"
        return f"<sermas_bus.aio.AsyncSermasClient app={self.app_id!r} {state}>"


def _log_op_failure(what: str, task: "asyncio.Future[Any]") -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s failed: %s", what, task.exception())
