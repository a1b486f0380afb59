"""Why did a connect fail?  paho.mqtt.c answers -1 ("Failure") alike for a
port where nothing listens, a websocket upgrade the server refused, and a
broker that closed the socket after CONNECT (RabbitMQ 3.10 does that to an
MQTT 5 CONNECT).  After such a failure the client probes each broker URI
with the standard library to tell these apart: to decide whether the MQTT 5
-> 3.1.1 fall-back is worth trying, and to raise an error that says what to do.
"""
from __future__ import annotations

import base64
import os
import socket
from typing import NamedTuple, Optional
from urllib.parse import urlsplit

# what a probe found
REFUSED = "refused"            # nothing listens (or unreachable / unknown host)
WS_REFUSED = "ws_refused"      # TCP fine, the websocket upgrade was refused
ANSWERS = "answers"            # TCP (and the upgrade) fine: the MQTT layer said no


class Probe(NamedTuple):
    uri: str
    kind: str
    detail: str


def _ws_upgrade(sock: socket.socket, host: str, port: int, path: str, timeout: float) -> Optional[str]:
    """None if the server switches protocols, else what it answered."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Protocol: mqtt\r\n\r\n")
    sock.settimeout(timeout)
    sock.sendall(request.encode())
    data = b""
    while b"\r\n" not in data and len(data) < 4096:
        chunk = sock.recv(1024)
        if not chunk:
            return "the server closed the connection without answering the upgrade request"
        data += chunk
    status = data.split(b"\r\n", 1)[0].decode("latin-1").strip()
    parts = status.split(" ", 2)
    if len(parts) >= 2 and parts[1] == "101":
        return None
    return f"HTTP status {' '.join(parts[1:]) or status!r} for path {path!r}"


def probe(uri: str, timeout: float = 2.0) -> Probe:
    parts = urlsplit(uri)
    host, port = parts.hostname or "", parts.port or 0
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        return Probe(uri, REFUSED, f"cannot resolve host {host!r}: {exc.strerror or exc}")
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        return Probe(uri, REFUSED, f"nothing accepts connections on {host}:{port} ({why})")
    try:
        if parts.scheme == "ws":
            try:
                refused = _ws_upgrade(sock, host, port, parts.path or "/", timeout)
            except OSError as exc:
                refused = f"no answer to the upgrade request ({exc.strerror or type(exc).__name__})"
            if refused is not None:
                return Probe(uri, WS_REFUSED, refused)
        return Probe(uri, ANSWERS, f"{host}:{port} accepts connections")
    finally:
        sock.close()
