"""A TCP proxy for fault injection, between a client and a broker on loopback.

    with FaultProxy(broker.host, broker.port) as proxy:
        client.connect("127.0.0.1", proxy.port)
        proxy.cut()             # reset every open connection (RST)
        proxy.blackhole()       # open connections stay open but carry nothing, no RST
        proxy.blackhole("up")   # ... only client->broker ("down": only broker->client)
        proxy.delay(0.2)        # every chunk waits 0.2 s, both ways
        proxy.half_packet()     # the next client->broker chunk: half of it, then a reset

Faults apply to the connections open when they are set; a connection made
afterwards passes normally (so a client that detects the fault can come
back).  Every thread is a daemon, every wait bounded; close() ends all.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from typing import List


class _Link:
    """One client connection and its upstream, pumped by two threads."""

    def __init__(self, proxy: "FaultProxy", client: socket.socket, upstream: socket.socket):
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.blackholed_up = self.blackholed_down = False
        self.delay = 0.0
        self.half_next = False
        self.closed = threading.Event()

    def start(self) -> None:
        for src, dst, up in ((self.client, self.upstream, True), (self.upstream, self.client, False)):
            threading.Thread(target=self._pump, args=(src, dst, up), daemon=True, name="fault-proxy").start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while not self.closed.is_set():
                try:
                    data = src.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                if self.blackholed_up if upstream else self.blackholed_down:
                    continue                # swallowed: the other side hears nothing
                if self.delay:
                    time.sleep(self.delay)
                if upstream and self.half_next:
                    self.half_next = False
                    dst.sendall(data[:max(1, len(data) // 2)])
                    self.reset()
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if not self.blackholed:
                self.reset()

    @property
    def blackholed(self) -> bool:
        return self.blackholed_up or self.blackholed_down

    def reset(self) -> None:
        """Close both sides with an RST (SO_LINGER 0)."""
        if self.closed.is_set():
            return
        self.closed.set()
        for s in (self.client, self.upstream):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.2)
        self.host, self.port = host, self._listener.getsockname()[1]
        self._links: List[_Link] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, daemon=True, name="fault-proxy-accept")

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            link = _Link(self, client, upstream)
            with self._lock:
                self._links = [lk for lk in self._links if not lk.closed.is_set()] + [link]
                self.accepted += 1
            link.start()

    def _open(self) -> List[_Link]:
        with self._lock:
            return [lk for lk in self._links if not lk.closed.is_set()]

    def _each(self, change) -> int:
        """Apply change(link) to every open connection; how many there were."""
        links = self._open()
        for lk in links:
            change(lk)
        return len(links)

    def cut(self) -> int:
        return self._each(lambda lk: lk.reset())

    def blackhole(self, direction: str = "both") -> int:
        if direction not in ("both", "up", "down"):
            raise ValueError(f"direction must be 'both', 'up' or 'down', not {direction!r}")

        def change(lk: _Link) -> None:
            lk.blackholed_up = lk.blackholed_up or direction in ("both", "up")
            lk.blackholed_down = lk.blackholed_down or direction in ("both", "down")
        return self._each(change)

    def delay(self, seconds: float) -> int:
        return self._each(lambda lk: setattr(lk, "delay", seconds))

    def half_packet(self) -> int:
        return self._each(lambda lk: setattr(lk, "half_next", True))

    def close(self) -> None:
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            links, self._links = self._links, []
        for lk in links:
            lk.blackholed_up = lk.blackholed_down = False
            lk.reset()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


def wait_accepted(proxy: FaultProxy, n: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while proxy.accepted < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return proxy.accepted >= n


__all__ = ["FaultProxy", "wait_accepted"]
