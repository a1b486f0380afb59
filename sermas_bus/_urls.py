"""Broker addresses -> paho.mqtt.c server URIs.

Accepts what people pass to ``connect``: a host name with a port, a URL
(``http://h:8080/mqtt``, ``https://h/mqtt``, ``ws://``, ``wss://``,
``mqtt://``, ``tcp://``, ``mqtts://``, ``ssl://``) or a list of either for
fail-over.  ``http``/``https`` mean MQTT over websockets, as in SERMAS.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Union
from urllib.parse import urlsplit

_SCHEMES = {
    "tcp": ("tcp", False),
    "mqtt": ("tcp", False),
    "ssl": ("tcp", True),
    "mqtts": ("tcp", True),
    "tls": ("tcp", True),
    "ws": ("ws", False),
    "http": ("ws", False),
    "wss": ("ws", True),
    "https": ("ws", True),
}
_DEFAULT_PORTS = {("tcp", False): 1883, ("tcp", True): 8883, ("ws", False): 80, ("ws", True): 443}


def _host_for_uri(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def one_uri(address: str, port: Optional[int], transport: str, tls: bool, ws_path: str) -> str:
    """One address -> one paho URI (tcp://, ssl://, ws://, wss://)."""
    if not isinstance(address, str) or not address:
        raise ValueError(f"broker address must be a non-empty str, not {address!r}")
    if "://" in address:
        parts = urlsplit(address)
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(
                f"unsupported URL scheme {scheme!r} in {address!r}: use one of "
                + ", ".join(sorted(_SCHEMES)))
        kind, secure = _SCHEMES[scheme]
        secure = secure or tls
        host = parts.hostname
        if not host:
            raise ValueError(f"no host name in broker URL {address!r}")
        try:
            url_port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in broker URL {address!r}: {exc}") from None
        if url_port is None:
            # connect(url, port): honour an explicit non-default port argument
            url_port = port if port not in (None, 1883) else _DEFAULT_PORTS[(kind, secure)]
        path = parts.path or (ws_path if kind == "ws" else "")
        if parts.query:
            path += "?" + parts.query
    else:
        if transport not in ("tcp", "websockets"):
            raise ValueError(f"transport must be 'tcp' or 'websockets', not {transport!r}")
        kind = "ws" if transport == "websockets" else "tcp"
        secure = tls
        host = address
        url_port = port if port is not None else _DEFAULT_PORTS[(kind, secure)]
        path = ws_path if kind == "ws" else ""
    if not (0 < int(url_port) < 65536):
        raise ValueError(f"port must be 1..65535, not {url_port}")
    if kind == "ws":
        if not path.startswith("/"):
            path = "/" + path
        return f"{'wss' if secure else 'ws'}://{_host_for_uri(host)}:{url_port}{path}"
    return f"{'ssl' if secure else 'tcp'}://{_host_for_uri(host)}:{url_port}"


def broker_uris(host: Union[str, Sequence[str]], port: Optional[int], transport: str, tls: bool,
                ws_path: str) -> List[str]:
    """``host`` may be one address or a list (fail-over, tried in order)."""
    hosts: Iterable[str] = [host] if isinstance(host, str) else list(host)
    uris = [one_uri(h, port, transport, tls, ws_path) for h in hosts]
    if not uris:
        raise ValueError("connect needs at least one broker address")
    return uris


def uses_tls(uris: Sequence[str]) -> bool:
    return any(u.startswith(("ssl://", "wss://")) for u in uris)


def host_port(uri: str) -> "tuple[str, int]":
    """(host, port) of a paho URI as produced by ``one_uri``."""
    parts = urlsplit(uri)
    return parts.hostname or "", parts.port or 0
