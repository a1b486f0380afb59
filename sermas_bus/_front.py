"""The platform's front door for LocalBus: REST and ``/mqtt`` on one port.

The SERMAS platform serves its REST API and the broker (MQTT over websockets
at ``/mqtt``) on one host and port behind its proxy, which is why a client
derives ``ws[s]://host[:port]/mqtt`` from the API URL.  ``PlatformFront`` is
that proxy for ``LocalBus``: an aiohttp server on a free loopback port (HTTPS
with ``ssl_context``) that

* answers the REST endpoints through a ``TokenServer``'s request handler
  (the same answers and errors as its own HTTP server), and
* upgrades ``GET /mqtt`` to a websocket (subprotocol ``mqtt``) and relays its
  binary frames to and from the broker's plain TCP listener, so the broker
  sees an ordinary MQTT connection (its auth plugin included).

It runs its own asyncio loop on a daemon thread; ``start()`` returns once it
listens, ``close()`` stops it and every relay.
"""
from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Any, Optional, Set

from .tokens import TokenServer

try:
    from aiohttp import WSMsgType, web
except ImportError as exc:   # pragma: no cover - the message is the point
    raise ImportError("LocalBus's one-port front needs aiohttp: pip install 'sermas_bus[localbus]' "
                      "(or pip install aiohttp)") from exc

__all__ = ["PlatformFront"]

_RELAY_CHUNK = 65536


class PlatformFront:
    """REST (via ``tokens``) and ``/mqtt`` (relayed to ``broker_host:broker_port``) on one port."""

    def __init__(self, tokens: TokenServer, broker_host: str, broker_port: int, host: str = "127.0.0.1",
                 ssl_context: Optional[ssl.SSLContext] = None, ready_timeout: float = 10.0):
        self.tokens = tokens
        self.broker_host, self.broker_port = broker_host, broker_port
        self.host = host
        self.ssl_context = ssl_context
        self.ready_timeout = ready_timeout
        self.port: Optional[int] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None
        self._relays: Set["asyncio.Task[Any]"] = set()
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    # ---- life cycle ----------------------------------------------------------

    def start(self) -> "PlatformFront":
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="sermas-localbus-front", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.ready_timeout):
            raise RuntimeError(f"LocalBus front did not start listening within {self.ready_timeout:g} s")
        if self._error is not None:
            raise RuntimeError(f"LocalBus front could not start: {self._error}") from self._error
        return self

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:   # reported by start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _listen(self) -> None:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_get("/mqtt", self._mqtt)
        app.router.add_post("/{path:.*}", self._rest)
        app.router.add_get("/{path:.*}", self._rest_get)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        for task in list(self._relays):
            task.cancel()
        if self._relays:
            await asyncio.gather(*self._relays, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- REST: the token server's answers --------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            return web.json_response({"message": "body must be a JSON object"}, status=400)
        status, answer = self.tokens._handle(request.path, body, request.headers.get("Authorization"))
        return web.json_response(answer, status=status)

    async def _rest_get(self, request: web.Request) -> web.Response:
        status, answer = self.tokens._handle_get(request.path, request.headers.get("Authorization"))
        return web.json_response(answer, status=status)

    # ---- /mqtt: websocket <-> the broker's TCP listener --------------------------

    async def _mqtt(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("mqtt", "mqttv3.1"), max_msg_size=0, autoping=True)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="/mqtt speaks MQTT over websockets only")
        try:
            reader, writer = await asyncio.open_connection(self.broker_host, self.broker_port)
        except OSError as exc:
            return web.Response(status=502, text=f"the broker is not reachable: {exc}")
        await ws.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        upstream = asyncio.ensure_future(self._to_broker(ws, writer))
        try:
            await self._to_client(reader, ws)
        finally:
            upstream.cancel()
            await asyncio.gather(upstream, return_exceptions=True)
            writer.close()
            self._relays.discard(task)
            await ws.close()
        return ws

    @staticmethod
    async def _to_broker(ws: web.WebSocketResponse, writer: asyncio.StreamWriter) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                writer.write(msg.data)
                await writer.drain()
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        writer.close()      # the client went: the broker sees the connection end

    @staticmethod
    async def _to_client(reader: asyncio.StreamReader, ws: web.WebSocketResponse) -> None:
        """One websocket frame per MQTT packet, as mosquitto's own websocket
        listener sends them: paho.mqtt.c (1.3.12) loses the second of two
        packets that share a frame (measured: the PUBACK behind a PUBLISH),
        although MQTT over websockets allows any split."""
        pending = bytearray()
        while True:
            data = await reader.read(_RELAY_CHUNK)
            if not data or ws.closed:
                return      # the broker closed (or the client went)
            pending += data
            while True:
                size = _packet_size(pending)
                if size is None or size > len(pending):
                    break
                await ws.send_bytes(bytes(pending[:size]))
                del pending[:size]


def _packet_size(buf: bytearray) -> Optional[int]:
    """Length of the MQTT packet at the start of buf (fixed header: a type
    byte, then the remaining length as a variable byte integer), or None
    while the header itself is incomplete.  A malformed length (a fifth
    length byte) is passed through whole: the client reports the error."""
    for i in range(1, min(len(buf), 5)):
        if i == 4 and buf[i] & 0x80:
            return len(buf)
        if not buf[i] & 0x80:
            length = 0
            for j in range(i, 0, -1):
                length = (length << 7) | (buf[j] & 0x7F)
            return 1 + i + length
    return None
