"""Subscribe-and-wait helpers: a drop-in for ``paho.mqtt.subscribe``.

``simple()`` returns the next message (or a list of ``msg_count`` messages)
on some topics; ``callback()`` calls a function for every message until that
function calls ``client.disconnect()``.  paho-mqtt's signatures and
semantics::

    from sermas_bus import subscribe        # was: import paho.mqtt.subscribe as subscribe

    msg = subscribe.simple("sensors/#", hostname="broker.local")

    def on_message(client, userdata, message):
        print(message.topic, message.payload)
        if message.payload == b"stop":
            client.disconnect()             # makes callback() return

    subscribe.callback(on_message, ["sensors/#", "alerts/#"], qos=1)

Built on ``sermas_bus.client.Client``; the differences from paho are those
of ``sermas_bus.publish`` (connection failures raise a ``ConnectError``
subclass from the call, ``proxy_args`` raises ``ProtocolError``, a ``tls``
dict is not modified).  As in paho, an exception raised by the callback
escapes from ``callback()`` (``suppress_exceptions = False``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

from . import client as _client
from .client import CallbackAPIVersion, MQTTv5, MQTTv311
from .publish import _refused, _run

__all__ = ["simple", "callback"]


def _on_connect(client: _client.Client, userdata: Dict[str, Any], flags: Any, reason_code: Any,
                properties: Any) -> None:
    if reason_code != 0:
        raise _refused(client, reason_code)
    if isinstance(userdata["topics"], list):
        for topic in userdata["topics"]:
            client.subscribe(topic, userdata["qos"])
    else:
        client.subscribe(userdata["topics"], userdata["qos"])


def _on_message_callback(client: _client.Client, userdata: Dict[str, Any], message: Any) -> None:
    userdata["callback"](client, userdata["userdata"], message)


def _on_message_simple(client: _client.Client, userdata: Dict[str, Any], message: Any) -> None:
    if userdata["msg_count"] == 0:
        return          # arrived after the last one, before the disconnect took effect
    if message.retain and not userdata["retained"]:
        return          # a stale retained message, and retained=False
    userdata["msg_count"] = userdata["msg_count"] - 1
    if userdata["messages"] is None and userdata["msg_count"] == 0:
        userdata["messages"] = message
        client.disconnect()
        return
    userdata["messages"].append(message)
    if userdata["msg_count"] == 0:
        client.disconnect()


def callback(callback: Callable[[Any, Any, Any], Any], topics: Union[str, List[str]], qos: int = 0,
             userdata: Any = None, hostname: str = "localhost", port: int = 1883, client_id: str = "",
             keepalive: int = 60, will: Optional[Dict[str, Any]] = None,
             auth: Optional[Dict[str, Any]] = None, tls: Any = None, protocol: int = MQTTv311,
             transport: str = "tcp", clean_session: Optional[bool] = True,
             proxy_args: Optional[Any] = None) -> None:
    """Subscribe to ``topics`` (a filter or a list of filters, all at ``qos``)
    and call ``callback(client, userdata, message)`` for every message.

    Blocks until the callback calls ``client.disconnect()`` (paho: "will
    never return" otherwise).  ``will``, ``auth``, ``tls`` are as for
    ``sermas_bus.publish.multiple``; with ``protocol=MQTTv5`` pass
    ``clean_session=None`` (the client refuses clean_session under MQTT 5,
    as paho's does).
    """
    if qos < 0 or qos > 2:
        raise ValueError("qos must be in the range 0-2")
    callback_userdata = {"callback": callback, "topics": topics, "qos": qos, "userdata": userdata}
    client = _client.Client(CallbackAPIVersion.VERSION2, client_id=client_id, userdata=callback_userdata,
                            protocol=protocol, transport=transport, clean_session=clean_session)
    client.on_message = _on_message_callback
    _run(client, _on_connect, hostname, port, keepalive, will, auth, tls, proxy_args)


def simple(topics: Union[str, List[str]], qos: int = 0, msg_count: int = 1, retained: bool = True,
           hostname: str = "localhost", port: int = 1883, client_id: str = "", keepalive: int = 60,
           will: Optional[Dict[str, Any]] = None, auth: Optional[Dict[str, Any]] = None, tls: Any = None,
           protocol: int = MQTTv311, transport: str = "tcp", clean_session: Optional[bool] = True,
           proxy_args: Optional[Any] = None) -> Any:
    """Subscribe to ``topics`` and return the first ``msg_count`` messages:
    one ``MQTTMessage`` when ``msg_count == 1``, else a list of them.

    ``retained=False`` skips messages with the retain flag (the broker's
    stored messages), so only new publications count.  Other arguments as
    for ``callback()``; ``clean_session`` is ignored under MQTT 5.
    """
    if msg_count < 1:
        raise ValueError("msg_count must be > 0")
    messages: Optional[List[Any]] = None if msg_count == 1 else []
    if protocol == MQTTv5:
        clean_session = None
    userdata = {"retained": retained, "msg_count": msg_count, "messages": messages}
    callback(_on_message_simple, topics, qos, userdata, hostname, port, client_id, keepalive, will, auth,
             tls, protocol, transport, clean_session, proxy_args)
    return userdata["messages"]
