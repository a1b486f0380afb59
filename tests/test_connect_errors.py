"""Connect failures that paho.mqtt.c reports alike (-1, "Failure") are told
apart, and subscriptions the broker refuses leave nothing behind."""

from __future__ import annotations

import http.server
import socket
import threading
import re
import time

import pytest

import sermas_bus.client as mqtt
from sermas_bus import SermasClient, errors

from support import free_port

pytestmark = pytest.mark.timeout(60)


class _Server:
    """A loopback TCP server whose connections get `handle(conn)`."""

    def __init__(self, handle):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handle = handle
        self.accepted = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                self.handle(conn)

    def close(self):
        self.sock.close()


def _read_and_close(conn):
    conn.settimeout(2)
    try:
        conn.recv(1024)       # the CONNECT
    except OSError:
        pass


def test_nothing_listening(make_client):
    c = make_client()
    port = free_port()
    with pytest.raises(errors.NothingListeningError, match=f"127.0.0.1:{port}") as ei:
        c.connect("127.0.0.1", port)
    assert isinstance(ei.value, ConnectionRefusedError)      # paho raises that one
    assert isinstance(ei.value, errors.ConnectError)


def test_closed_after_connect_is_not_called_nothing_listening(make_client):
    server = _Server(_read_and_close)
    try:
        c = make_client()
        gone = []
        c.on_disconnect = lambda client, userdata, flags, rc, props: gone.append(rc)
        c.connect("127.0.0.1", server.port)     # paho reports this through on_disconnect
        assert isinstance(c.last_connect_error, errors.ConnectionClosedError)
        assert "closed it after the MQTT CONNECT" in str(c.last_connect_error)
        assert server.accepted == 3     # MQTT 5, the probe, and the 3.1.1 fall-back
        c.loop(0.2)
        assert len(gone) == 1
        bus = SermasClient(mqtt_url=f"tcp://127.0.0.1:{server.port}", app_id="app")
        try:
            with pytest.raises(errors.ConnectionClosedError):
                bus.connect()
        finally:
            bus.close()
    finally:
        server.close()


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_websocket_upgrade_refused_names_the_status_and_path(make_client):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        c = make_client(transport="websockets")
        c.ws_set_options(path="/nope")
        with pytest.raises(errors.WebSocketUpgradeError, match=r"404.*'/nope'"):
            c.connect("127.0.0.1", httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fall_back_is_remembered_for_the_broker(make_client):
    """A broker that closes the socket on MQTT 5 but speaks 3.1.1: the second
    client goes straight to 3.1.1."""
    from fake_broker import FakeBroker   # byte-level broker of the reliability tests

    def v5_connects():
        return sum(1 for p in fake.packets if p.name == "CONNECT" and p.protocol_level == 5)

    with FakeBroker(refusal="close") as fake:
        first = make_client()
        first.connect("127.0.0.1", fake.port)
        assert first.protocol == mqtt.MQTTv311
        assert v5_connects() == 1
        second = make_client()
        second.connect("127.0.0.1", fake.port)
        assert second.protocol == mqtt.MQTTv311
        assert v5_connects() == 1, "the second client tried MQTT 5 again"


# ---------------------------------------------------------------------------
# refused subscriptions
# ---------------------------------------------------------------------------

def _bus(local_bus, **kw):
    from sermas_bus.pytest_plugin import DEFAULT_APP, DEFAULT_CLIENT, DEFAULT_CLIENT_SECRET
    return SermasClient(local_bus.api_url, app_id=DEFAULT_APP, client_id=DEFAULT_CLIENT,
                        client_secret=DEFAULT_CLIENT_SECRET, mqtt_url=local_bus.mqtt_url, **kw)


def _own(topic):
    from sermas_bus.pytest_plugin import DEFAULT_APP
    return topic.replace("myapp", DEFAULT_APP)


def test_refused_subscribe_raises_and_leaves_no_registration(local_bus):
    with _bus(local_bus) as bus:
        with pytest.raises(errors.SubscriptionRefusedError, match="refused") as info:
            bus.subscribe("app/otherapp/dialogue/messages", lambda e, m: None)
        assert isinstance(info.value, errors.SubscribeError)
        assert info.value.filter == "app/otherapp/dialogue/messages"
        assert info.value.reason_code == 0x87
        assert "dialogue:messages" in str(info.value)
        assert bus._filter_ids == {} and bus._by_sid == {}
        assert "app/otherapp/dialogue/messages" not in bus.client._engine.subscriptions
        # again: sent again and refused again (no phantom handle)
        with pytest.raises(errors.SubscribeError):
            bus.subscribe("app/otherapp/dialogue/messages", lambda e, m: None)


def test_restore_is_per_filter_a_refused_one_does_not_drop_the_others(local_bus, make_client):
    """Subscriptions made before connect are sent at connect: the refused
    one is reported and dropped, the allowed one works."""
    got = []
    subscribed = []
    bus = _bus(local_bus)
    try:
        bus.client.on_subscribe = lambda *args: subscribed.append(args[3])
        ok = bus.subscribe(_own("app/myapp/ui/content"), lambda e, m: got.append(e), no_local=False)
        bus.subscribe("app/otherapp/ui/content", lambda e, m: None)
        bus.connect()
        deadline = time.monotonic() + 10
        while not subscribed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert subscribed, "the refused restore was not reported to on_subscribe"
        assert "app/otherapp/ui/content" not in bus.client._engine.subscriptions
        assert ok.active
        bus.publish(_own("app/myapp/ui/content"), {"x": 1}).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == [{"x": 1}]
    finally:
        bus.close()


@pytest.mark.parametrize("filter_, hint", [
    ("$share/workers/app/myapp/dialogue/messages/+", "refuses shared subscriptions"),
    ("app/myapp/#", "dialogue/messages/\\+ instead"),
    ("app/myapp/+/messages", "levels 3-4 must be named"),
    ("system/anything", "superuser"),
    ("app/myapp/ui/content", "permission ui:content"),
])
def test_platform_acl_hint_explains_the_rule(filter_, hint):
    assert re.search(hint, errors.platform_acl_hint(filter_))
