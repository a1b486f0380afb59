"""One-shot publishing: a drop-in for ``paho.mqtt.publish``.

``single()`` and ``multiple()`` connect, publish, disconnect once every
message has completed (QoS 0 written, QoS 1 PUBACK, QoS 2 PUBCOMP) and
return, with paho-mqtt's signatures and semantics::

    from sermas_bus import publish          # was: import paho.mqtt.publish as publish

    publish.single("sensors/t", "21.5", qos=1, hostname="broker.local")
    publish.multiple([{"topic": "a", "payload": "1"}, ("b", "2", 2, True)])

Built on ``sermas_bus.client.Client``; what differs follows from it:

* a refused connection raises from the loop, as in paho, but the exception is
  the client's clear ``sermas_bus.errors`` one (e.g. ``NotAuthorizedError``, a
  ``ConnectError`` and ``ConnectionError``) where paho raises
  ``paho.mqtt.MQTTException``; an unreachable broker raises from ``connect()``
  (``NothingListeningError``, also a ``ConnectionRefusedError``), as in paho;
* ``proxy_args`` raises ``sermas_bus.errors.ProtocolError`` (a ``ValueError``):
  proxies are not supported (``Client.proxy_set``);
* a ``tls`` dict is not modified (paho pops its ``insecure`` key).

As in paho, an exception raised while publishing (a malformed message, a
wildcard topic) escapes from the call: the client runs with
``suppress_exceptions = False``, paho's default.
"""
from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any, Dict, List, Optional, Tuple, Union

from . import client as _client
from .client import CallbackAPIVersion, MQTTv311
from .errors import ConnectError

__all__ = ["single", "multiple"]

MessageDict = Dict[str, Any]
MessageTuple = Tuple[Any, ...]
MessagesList = List[Union[MessageDict, MessageTuple]]


def _configure(client: _client.Client, will: Optional[Dict[str, Any]], auth: Optional[Dict[str, Any]],
               tls: Any, proxy_args: Optional[Dict[str, Any]]) -> None:
    """Apply the helpers' common options in paho's order (shared with subscribe)."""
    # paho's default; our Client's is True (log and go on) but here an error in
    # a callback must end the call, or it would never return
    client.suppress_exceptions = False
    client.enable_logger()
    if proxy_args is not None:
        client.proxy_set(**proxy_args)      # raises ProtocolError: proxies are not supported
    if auth:
        username = auth.get("username")
        if username:
            client.username_pw_set(username, auth.get("password"))
        else:
            raise KeyError("The 'username' key was not found, this is required for auth")
    if will is not None:
        client.will_set(**will)
    if tls is not None:
        if isinstance(tls, dict):
            tls = dict(tls)                  # paho pops 'insecure' from the caller's dict
            insecure = tls.pop("insecure", False)
            client.tls_set(**tls)
            if insecure:
                client.tls_insecure_set(insecure)
        else:
            client.tls_set_context(tls)      # an ssl.SSLContext


def _refused(client: _client.Client, reason_code: Any) -> ConnectError:
    """What on_connect raises for a refused connection (paho raises its
    MQTTException there): the client's clear error when it has one."""
    if client.last_connect_error is not None:
        return client.last_connect_error
    return ConnectError(f"connection refused: {_client.connack_string(int(reason_code))}")


def _do_publish(client: _client.Client) -> None:
    message = client.user_data_get().popleft()
    if isinstance(message, dict):
        client.publish(**message)
    elif isinstance(message, (tuple, list)):
        client.publish(*message)
    else:
        raise TypeError("message must be a dict, tuple, or list")


def _on_connect(client: _client.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
    if reason_code == 0:
        if len(userdata) > 0:
            _do_publish(client)
    else:
        raise _refused(client, reason_code)


def _on_publish(client: _client.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
    if len(userdata) == 0:
        client.disconnect()
    else:
        _do_publish(client)


def multiple(
    msgs: MessagesList,
    hostname: str = "localhost",
    port: int = 1883,
    client_id: str = "",
    keepalive: int = 60,
    will: Optional[MessageDict] = None,
    auth: Optional[Dict[str, Any]] = None,
    tls: Any = None,
    protocol: int = MQTTv311,
    transport: str = "tcp",
    proxy_args: Optional[Any] = None,
) -> None:
    """Publish ``msgs`` one after the other, then disconnect cleanly.

    Each message is a dict (``{'topic': ..., 'payload': ..., 'qos': ...,
    'retain': ...}``, only ``topic`` required) or a tuple ``(topic, payload,
    qos, retain)``; each is sent once the previous one has completed.
    ``will`` is a dict of ``will_set()`` arguments, ``auth`` a dict with
    ``username`` (required) and ``password``, ``tls`` a dict of ``tls_set()``
    arguments plus ``insecure`` (or an ``ssl.SSLContext``).  ``hostname`` may
    also be a URL, as for ``Client.connect``.
    """
    if not isinstance(msgs, Iterable):
        raise TypeError("msgs must be an iterable")
    if len(msgs) == 0:    # type: ignore[arg-type]  (a generator raises TypeError, as in paho)
        raise ValueError("msgs is empty")

    client = _client.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                            userdata=collections.deque(msgs), protocol=protocol, transport=transport)
    client.on_publish = _on_publish
    _run(client, _on_connect, hostname, port, keepalive, will, auth, tls, proxy_args)


def _run(client: _client.Client, on_connect: Any, hostname: str, port: int, keepalive: int,
         will: Optional[Dict[str, Any]], auth: Optional[Dict[str, Any]], tls: Any, proxy_args: Any) -> None:
    """Configure, connect and loop until a callback disconnects; always close."""
    try:
        client.on_connect = on_connect
        _configure(client, will, auth, tls, proxy_args)
        client.connect(hostname, port, keepalive)
        client.loop_forever()
    finally:
        client.close()


def single(
    topic: str,
    payload: Any = None,
    qos: int = 0,
    retain: bool = False,
    hostname: str = "localhost",
    port: int = 1883,
    client_id: str = "",
    keepalive: int = 60,
    will: Optional[MessageDict] = None,
    auth: Optional[Dict[str, Any]] = None,
    tls: Any = None,
    protocol: int = MQTTv311,
    transport: str = "tcp",
    proxy_args: Optional[Any] = None,
) -> None:
    """Publish one message, then disconnect cleanly (see ``multiple()``)."""
    msg: MessageDict = {"topic": topic, "payload": payload, "qos": qos, "retain": retain}
    multiple([msg], hostname, port, client_id, keepalive, will, auth, tls, protocol, transport, proxy_args)
