"""paho-mqtt's helper modules and callback decorators, against a real mosquitto.

``sermas_bus.publish`` / ``sermas_bus.subscribe`` (drop-ins for
``paho.mqtt.publish`` / ``paho.mqtt.subscribe``) and the ``Client.*_callback()``
decorators of paho 2.x.  Most scenarios are parametrized over ``impl``: they run
once with paho-mqtt itself and once with sermas_bus, so the expectations are
paho's own behaviour.  Where the two differ on purpose (how a refused or failed
connection is reported, the socket callbacks) each side's expectation is spelled
out.
"""

from __future__ import annotations

import inspect
import socket
import ssl
import subprocess
import sys
import threading
import time
import types

import paho.mqtt
import paho.mqtt.client as paho_client
import paho.mqtt.properties as paho_properties
import paho.mqtt.publish as paho_publish
import paho.mqtt.reasoncodes as paho_reasoncodes
import paho.mqtt.subscribe as paho_subscribe
import pytest

import sermas_bus.client as mqtt
import sermas_bus.properties as sb_properties
import sermas_bus.publish as sb_publish
import sermas_bus.reasoncodes as sb_reasoncodes
import sermas_bus.subscribe as sb_subscribe
from sermas_bus import errors

import support

pytestmark = [
    pytest.mark.timeout(60),
    # paho's helpers leave their socket to the garbage collector when they raise
    # (refused CONNACK, TLS failure): ResourceWarning "unclosed socket"
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

HOST = "127.0.0.1"
WAIT = 10.0

IMPLS = {
    "paho": types.SimpleNamespace(
        name="paho", client=paho_client, publish=paho_publish, subscribe=paho_subscribe,
        Properties=paho_properties.Properties, ReasonCode=paho_reasoncodes.ReasonCode),
    "sermas_bus": types.SimpleNamespace(
        name="sermas_bus", client=mqtt, publish=sb_publish, subscribe=sb_subscribe,
        Properties=sb_properties.Properties, ReasonCode=sb_reasoncodes.ReasonCode),
}


@pytest.fixture(params=list(IMPLS))
def impl(request):
    """The module set under test: paho-mqtt's own, or sermas_bus's."""
    return IMPLS[request.param]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

class Inbox(support.Inbox):
    """support.Inbox with this file's wait."""

    timeout = WAIT


def listen(make_client, broker, topic_filter, qos=2):
    """A sermas_bus client subscribed to ``topic_filter`` (loop running): its Inbox."""
    inbox = Inbox()
    c = make_client()
    c.on_message = inbox
    c.connect(HOST, broker.port)
    c.subscribe(topic_filter, qos)
    c.loop_start()
    return inbox


@pytest.fixture
def store_retained(broker, make_client):
    """``store_retained(topic, payload)`` stores a retained message; cleared after the test."""
    topics = []

    def put(topic, payload):
        topics.append(topic)
        c = make_client()
        c.connect(HOST, broker.port)
        c.publish(topic, payload, qos=1, retain=True).wait_for_publish(WAIT)
        c.disconnect()

    yield put
    if topics:
        c = make_client()
        c.connect(HOST, broker.port)
        for topic in topics:
            c.publish(topic, None, qos=1, retain=True).wait_for_publish(WAIT)
        c.disconnect()


class Runner:
    """Run a blocking helper on a thread; ``join()`` returns its result or re-raises."""

    def __init__(self, fn, *args, **kwargs):
        self.result = None
        self.error = None
        self.done = threading.Event()

        def main():
            try:
                self.result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to join()
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()

    def join(self, timeout=WAIT):
        assert self.done.wait(timeout), "the helper did not return within {} s".format(timeout)
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


def feed_until(runner, make_client, broker, topic, timeout=WAIT):
    """Publish ``live-0``, ``live-1``, ... (QoS 1, not retained) to ``topic``
    until ``runner`` has returned: the helper subscribes at a moment the test
    cannot see, so keep publishing until it has what it waits for."""
    c = make_client()
    c.connect(HOST, broker.port)
    deadline = time.monotonic() + timeout
    n = 0
    while not runner.done.is_set():
        assert time.monotonic() < deadline, "the helper got nothing within {} s".format(timeout)
        c.publish(topic, "live-{}".format(n), qos=1).wait_for_publish(WAIT)
        n += 1
        runner.done.wait(0.02)
    c.disconnect()
    return n


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def params_of(func):
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


# ---------------------------------------------------------------------------
# the modules: imports and signatures
# ---------------------------------------------------------------------------

def test_import_forms_in_a_fresh_interpreter():
    code = (
        "import sermas_bus.publish as publish\n"
        "import sermas_bus.subscribe as subscribe\n"
        "from sermas_bus import publish as p2, subscribe as s2\n"
        "assert p2 is publish and s2 is subscribe\n"
        "assert callable(publish.single) and callable(publish.multiple)\n"
        "assert callable(subscribe.simple) and callable(subscribe.callback)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("ours, theirs", [
    (sb_publish.single, paho_publish.single),
    (sb_publish.multiple, paho_publish.multiple),
    (sb_subscribe.simple, paho_subscribe.simple),
    (sb_subscribe.callback, paho_subscribe.callback),
], ids=["single", "multiple", "simple", "callback"])
def test_signatures_are_pahos(ours, theirs):
    assert params_of(ours) == params_of(theirs)


def test_client_has_every_paho_decorator():
    names = sorted(n for n in dir(paho_client.Client) if n.endswith("_callback") and not n.startswith("_"))
    assert "connect_callback" in names and "socket_open_callback" in names
    missing = [n for n in names if not callable(getattr(mqtt.Client, n, None))]
    assert not missing


# ---------------------------------------------------------------------------
# publish.single / publish.multiple
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("qos", [0, 1, 2])
def test_single_delivers_at_qos(impl, broker, make_client, unique_topic, qos):
    topic = unique_topic + "single"
    inbox = listen(make_client, broker, topic)
    assert impl.publish.single(topic, "hello", qos=qos, hostname=HOST, port=broker.port) is None
    msg = inbox.wait(1)[0]
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, b"hello", qos, False)


def test_single_retain_is_stored(impl, broker, unique_topic):
    topic = unique_topic + "retained"
    impl.publish.single(topic, b"kept", qos=1, retain=True, hostname=HOST, port=broker.port)
    try:
        msg = Runner(impl.subscribe.simple, topic, hostname=HOST, port=broker.port).join()
        assert (msg.payload, msg.retain) == (b"kept", True)
    finally:
        impl.publish.single(topic, None, qos=1, retain=True, hostname=HOST, port=broker.port)


@pytest.mark.parametrize("protocol", ["MQTTv311", "MQTTv5"])
def test_multiple_dicts_tuples_lists_in_order(impl, broker, make_client, unique_topic, protocol):
    t = unique_topic
    inbox = listen(make_client, broker, t + "#")
    msgs = [
        {"topic": t + "a"},                                               # empty payload, QoS 0
        {"topic": t + "b", "payload": "two", "qos": 1, "retain": False},
        (t + "c", b"three", 2, False),
        [t + "d", 4, 1],                                                  # a list; int payload
        (t + "e", bytearray(b"five"), 2),
    ]
    impl.publish.multiple(msgs, hostname=HOST, port=broker.port,
                          protocol=getattr(impl.client, protocol))
    got = [(m.topic, m.payload, m.qos) for m in inbox.wait(5)]
    assert got == [(t + "a", b"", 0), (t + "b", b"two", 1), (t + "c", b"three", 2),
                   (t + "d", b"4", 1), (t + "e", b"five", 2)]


def test_multiple_many_qos2_all_completed_before_return(impl, broker, make_client, unique_topic):
    topic = unique_topic + "many"
    inbox = listen(make_client, broker, topic)
    impl.publish.multiple([(topic, str(i), 2) for i in range(50)], hostname=HOST, port=broker.port)
    assert [m.payload for m in inbox.wait(50)] == [str(i).encode() for i in range(50)]


def test_multiple_argument_errors(impl):
    with pytest.raises(ValueError):
        impl.publish.multiple([], hostname=HOST, port=free_port())
    with pytest.raises(TypeError):
        impl.publish.multiple(5, hostname=HOST, port=free_port())
    with pytest.raises(TypeError):        # an iterable without len(), as in paho
        impl.publish.multiple((m for m in [("t", "x")]), hostname=HOST, port=free_port())


@pytest.mark.parametrize("bad, exc", [
    ([("ok/topic", "1"), ("bad/+", "2")], ValueError),    # wildcard: publish raises in a callback
    ([42], TypeError),                                    # neither dict nor tuple
])
def test_multiple_bad_message_escapes(impl, broker, bad, exc):
    # paho raises out of its loop (suppress_exceptions=False); it must not hang
    with pytest.raises(exc):
        Runner(impl.publish.multiple, bad, hostname=HOST, port=broker.port).join()


def test_auth_dict(impl, broker, make_client, unique_topic):
    topic = unique_topic + "auth"
    inbox = listen(make_client, broker, topic)
    impl.publish.single(topic, "in", qos=1, hostname=HOST, port=broker.auth_port,
                        auth={"username": "alice", "password": "secret"})
    assert inbox.wait(1)[0].payload == b"in"


def test_auth_refused_raises(impl, broker):
    if impl.name == "paho":
        expected = paho.mqtt.MQTTException    # raised by on_connect from the loop
    else:
        expected = errors.NotAuthorizedError  # raised by connect(), a ConnectError / ConnectionError
    with pytest.raises(expected):
        impl.publish.single("t", "x", hostname=HOST, port=broker.auth_port,
                            auth={"username": "alice", "password": "wrong"})
    with pytest.raises(expected):
        Runner(impl.subscribe.simple, "t", hostname=HOST, port=broker.auth_port,
               auth={"username": "alice", "password": "wrong"}).join()


def test_auth_without_username_is_keyerror(impl, broker):
    with pytest.raises(KeyError):
        impl.publish.single("t", "x", hostname=HOST, port=broker.port, auth={"password": "secret"})


def test_unreachable_broker_is_connection_error(impl):
    # paho: ConnectionRefusedError from connect(); sermas_bus: ConnectError, also a ConnectionError
    with pytest.raises(ConnectionError):
        impl.publish.single("t", "x", hostname=HOST, port=free_port())
    with pytest.raises(ConnectionError):
        impl.subscribe.simple("t", hostname=HOST, port=free_port())


def test_proxy_args_raise_valueerror(impl, broker):
    # paho: ValueError (PySocks missing / bad proxy); sermas_bus: ProtocolError (a ValueError), always
    args = {"proxy_type": 2, "proxy_addr": "proxy.invalid", "proxy_port": 1080}
    with pytest.raises(ValueError):
        impl.publish.single("t", "x", hostname=HOST, port=broker.port, proxy_args=args)
    with pytest.raises(ValueError):
        impl.subscribe.simple("t", hostname=HOST, port=broker.port, proxy_args=args)


def test_proxy_args_error_is_clear():
    with pytest.raises(errors.ProtocolError, match="proxy"):
        sb_publish.single("t", "x", hostname=HOST, port=free_port(), proxy_args={"proxy_type": 2})


@pytest.mark.parametrize("how", ["ca_certs", "insecure", "context"])
def test_tls(impl, broker, make_client, unique_topic, how):
    topic = unique_topic + "tls"
    inbox = listen(make_client, broker, topic)
    if how == "context":
        tls = ssl.create_default_context(cafile=broker.ca_file)
    else:
        tls = {"ca_certs": broker.ca_file}
        if how == "insecure":
            tls["insecure"] = True
    impl.publish.single(topic, how, qos=1, hostname="localhost", port=broker.tls_port, tls=tls)
    assert inbox.wait(1)[0].payload == how.encode()


def test_tls_dict_is_not_modified(broker):
    # paho pops 'insecure' from the caller's dict; sermas_bus leaves it alone
    tls = {"ca_certs": broker.ca_file, "insecure": True}
    sb_publish.single("t", "x", hostname=HOST, port=broker.tls_port, tls=tls)
    assert tls == {"ca_certs": broker.ca_file, "insecure": True}


def test_tls_client_certificate(impl, broker, make_client, unique_topic):
    topic = unique_topic + "mtls"
    inbox = listen(make_client, broker, topic)
    tls = {"ca_certs": broker.ca_file, "certfile": broker.client_cert, "keyfile": broker.client_key}
    impl.publish.single(topic, "mtls", qos=1, hostname=HOST, port=broker.mtls_port, tls=tls)
    assert inbox.wait(1)[0].payload == b"mtls"


def test_tls_untrusted_is_oserror(impl, broker):
    # no CA given: the system store does not trust the test CA.  paho: ssl.SSLError;
    # sermas_bus: TLSError; both are OSErrors
    with pytest.raises(OSError):
        impl.publish.single("t", "x", hostname=HOST, port=broker.tls_port, tls={"ca_certs": None})


def test_websockets_transport(impl, broker, make_client, unique_topic):
    topic = unique_topic + "ws"
    inbox = listen(make_client, broker, topic)
    impl.publish.single(topic, "ws", qos=1, hostname=HOST, port=broker.ws_port, transport="websockets")
    assert inbox.wait(1)[0].payload == b"ws"


def test_will_dict(impl, broker, make_client, unique_topic):
    topic = unique_topic + "will"
    inbox = listen(make_client, broker, unique_topic + "#")
    impl.publish.single(topic, "body", qos=1, hostname=HOST, port=broker.port, client_id="",
                        will={"topic": unique_topic + "lastwill", "payload": "gone", "qos": 1})
    assert [m.topic for m in inbox.wait(1)] == [topic]   # clean disconnect: no will
    with pytest.raises(ValueError):
        impl.publish.single(topic, "x", hostname=HOST, port=broker.port, will={"topic": ""})


# ---------------------------------------------------------------------------
# subscribe.simple
# ---------------------------------------------------------------------------

def test_simple_returns_one_message(impl, broker, make_client, unique_topic):
    topic = unique_topic + "one"
    runner = Runner(impl.subscribe.simple, topic, qos=1, hostname=HOST, port=broker.port)
    feed_until(runner, make_client, broker, topic)
    msg = runner.join()
    assert not isinstance(msg, list)
    assert msg.topic == topic and msg.payload.startswith(b"live-") and msg.qos == 1


def test_simple_msg_count_3_returns_a_list_in_order(impl, broker, make_client, unique_topic):
    topic = unique_topic + "three"
    runner = Runner(impl.subscribe.simple, [unique_topic + "other", topic], qos=1, msg_count=3,
                    hostname=HOST, port=broker.port)
    feed_until(runner, make_client, broker, topic)
    msgs = runner.join()
    assert isinstance(msgs, list) and len(msgs) == 3
    numbers = [int(m.payload.split(b"-")[1]) for m in msgs]
    assert numbers == list(range(numbers[0], numbers[0] + 3))   # consecutive: none lost, none doubled
    assert all(m.topic == topic for m in msgs)


def test_simple_retained_true_takes_the_retained_message(impl, store_retained, broker, make_client, unique_topic):
    topic = unique_topic + "ret"
    store_retained(topic, b"stored")
    msg = Runner(impl.subscribe.simple, topic, hostname=HOST, port=broker.port).join()
    assert (msg.payload, msg.retain) == (b"stored", True)


@pytest.mark.parametrize("msg_count", [1, 2])
def test_simple_retained_false_skips_it(impl, store_retained, broker, make_client, unique_topic, msg_count):
    topic = unique_topic + "ret"
    store_retained(topic, b"stored")
    runner = Runner(impl.subscribe.simple, topic, msg_count=msg_count, retained=False,
                    hostname=HOST, port=broker.port)
    feed_until(runner, make_client, broker, topic)
    got = runner.join()
    msgs = got if isinstance(got, list) else [got]
    assert len(msgs) == msg_count
    assert all(m.payload.startswith(b"live-") and not m.retain for m in msgs)


def test_simple_with_auth_and_mqttv5(impl, store_retained, broker, make_client, unique_topic):
    topic = unique_topic + "v5"
    store_retained(topic, b"v5")
    msg = Runner(impl.subscribe.simple, topic, hostname=HOST, port=broker.auth_port,
                 auth={"username": "alice", "password": "secret"}, protocol=impl.client.MQTTv5).join()
    assert msg.payload == b"v5"


def test_simple_msg_count_must_be_positive(impl):
    with pytest.raises(ValueError):
        impl.subscribe.simple("t", msg_count=0, hostname=HOST, port=free_port())


# ---------------------------------------------------------------------------
# subscribe.callback
# ---------------------------------------------------------------------------

def test_callback_runs_until_the_callback_disconnects(impl, broker, make_client, unique_topic):
    topic = unique_topic + "cb"
    mine = object()
    seen = []

    def on_message(client, userdata, message):
        seen.append((userdata, message.topic, message.payload))
        if len(seen) == 3:
            client.disconnect()     # how a program ends subscribe.callback()

    runner = Runner(impl.subscribe.callback, on_message, [topic, unique_topic + "x"], qos=1,
                    userdata=mine, hostname=HOST, port=broker.port)
    feed_until(runner, make_client, broker, topic)
    assert runner.join() is None
    assert len(seen) >= 3
    assert all(u is mine and t == topic and p.startswith(b"live-") for u, t, p in seen)


def test_callback_exception_escapes(impl, store_retained, broker, make_client, unique_topic):
    topic = unique_topic + "boom"
    store_retained(topic, b"x")

    def on_message(client, userdata, message):
        raise RuntimeError("boom from the callback")

    with pytest.raises(RuntimeError, match="boom from the callback"):
        Runner(impl.subscribe.callback, on_message, topic, hostname=HOST, port=broker.port).join()


def test_callback_mqttv5_clean_session(impl, store_retained, broker, make_client, unique_topic):
    topic = unique_topic + "v5cb"
    store_retained(topic, b"x")
    seen = []

    def on_message(client, userdata, message):
        seen.append(message.payload)
        client.disconnect()

    # clean_session defaults to True, which an MQTT 5 client refuses (paho too)
    with pytest.raises(ValueError):
        impl.subscribe.callback(on_message, topic, hostname=HOST, port=broker.port,
                                protocol=impl.client.MQTTv5)
    Runner(impl.subscribe.callback, on_message, topic, hostname=HOST, port=broker.port,
           protocol=impl.client.MQTTv5, clean_session=None).join()
    assert seen[0] == b"x"


def test_callback_qos_range(impl):
    with pytest.raises(ValueError):
        impl.subscribe.callback(lambda c, u, m: None, "t", qos=3, hostname=HOST, port=free_port())


# ---------------------------------------------------------------------------
# Client.*_callback() decorators
# ---------------------------------------------------------------------------

@pytest.fixture
def dclient(impl, make_client):
    """A VERSION2 client of ``impl`` (userdata "ud"), cleaned up after the test."""
    made = []

    def factory(**kwargs):
        if impl.name == "sermas_bus":
            c = make_client(mqtt.CallbackAPIVersion.VERSION2, userdata="ud", **kwargs)
        else:
            c = paho_client.Client(paho_client.CallbackAPIVersion.VERSION2, userdata="ud", **kwargs)
            made.append(c)
        return c

    yield factory
    for c in made:
        c.loop_stop()
        c.disconnect()


class Calls:
    def __init__(self):
        self.calls = {}
        self.events = {}
        self._lock = threading.Lock()

    def record(self, name):
        def callback(*args):
            with self._lock:
                self.calls.setdefault(name, []).append(args)
            self.event(name).set()
        callback.__name__ = name
        return callback

    def event(self, name):
        with self._lock:
            return self.events.setdefault(name, threading.Event())

    def wait(self, name, timeout=WAIT):
        assert self.event(name).wait(timeout), "{} not called within {} s".format(name, timeout)
        return self.calls[name][0]


@pytest.mark.parametrize("protocol", ["MQTTv311", "MQTTv5"])
def test_decorators_fire_once_with_pahos_arguments(impl, dclient, broker, unique_topic, protocol):
    c = dclient(protocol=getattr(impl.client, protocol))
    rec = Calls()
    names = ["pre_connect", "connect", "subscribe", "message", "publish", "unsubscribe", "disconnect"]
    for name in names:
        func = rec.record("on_" + name)
        assert getattr(c, name + "_callback")()(func) is func     # returns the function unchanged
        assert getattr(c, "on_" + name) is func                   # and sets the attribute
    topic = unique_topic + "deco"

    c.connect(HOST, broker.port)
    c.loop_start()
    client, userdata, flags, rc, props = rec.wait("on_connect")
    assert (client, userdata, flags.session_present, rc) == (c, "ud", False, 0)
    assert isinstance(rc, impl.ReasonCode) and isinstance(props, impl.Properties)
    assert rec.wait("on_pre_connect") == (c, "ud")

    _rc, mid = c.subscribe(topic, 1)
    client, userdata, smid, codes, props = rec.wait("on_subscribe")
    assert (client, userdata, smid, codes) == (c, "ud", mid, [1])
    assert isinstance(codes[0], impl.ReasonCode) and isinstance(props, impl.Properties)

    info = c.publish(topic, b"payload", qos=1)
    client, userdata, pmid, rc, props = rec.wait("on_publish")
    assert (client, userdata, pmid, rc) == (c, "ud", info.mid, 0)
    assert isinstance(rc, impl.ReasonCode) and isinstance(props, impl.Properties)
    client, userdata, msg = rec.wait("on_message")
    assert (client, userdata, msg.topic, msg.payload, msg.qos) == (c, "ud", topic, b"payload", 1)

    _rc, mid = c.unsubscribe(topic)
    client, userdata, umid, codes, props = rec.wait("on_unsubscribe")
    assert (client, userdata, umid) == (c, "ud", mid)
    # MQTT 3.1.1's UNSUBACK has no reason codes: paho passes an empty list
    assert list(codes) == ([] if protocol == "MQTTv311" else [0])
    assert isinstance(props, impl.Properties)

    c.disconnect()
    client, userdata, flags, rc, props = rec.wait("on_disconnect")
    assert (client, userdata, flags.is_disconnect_packet_from_server, rc) == (c, "ud", False, 0)
    assert isinstance(props, impl.Properties)

    c.loop_stop()
    assert {n: len(v) for n, v in rec.calls.items()} == {"on_" + n: 1 for n in names}


def test_log_callback(impl, dclient, broker):
    c = dclient()
    rec = Calls()
    func = rec.record("on_log")
    assert c.log_callback()(func) is func and c.on_log is func
    c.connect(HOST, broker.port)
    c.loop_start()
    client, userdata, level, buf = rec.wait("on_log")
    assert (client, userdata) == (c, "ud")
    assert level in (mqtt.MQTT_LOG_DEBUG, mqtt.MQTT_LOG_INFO, mqtt.MQTT_LOG_NOTICE,
                     mqtt.MQTT_LOG_WARNING, mqtt.MQTT_LOG_ERR)
    assert isinstance(buf, str) and buf


def test_connect_fail_callback(impl, dclient):
    c = dclient()
    rec = Calls()
    func = rec.record("on_connect_fail")
    assert c.connect_fail_callback()(func) is func and c.on_connect_fail is func
    c.connect_async(HOST, free_port())
    c.loop_start()
    assert rec.wait("on_connect_fail") == (c, "ud")
    c.loop_stop()


def test_decorator_checks_the_callback_like_an_assignment(make_client):
    c = make_client()
    with pytest.raises(TypeError):
        @c.message_callback()
        def on_message(a, b):        # on_message takes 1 or 3 arguments
            pass


def test_socket_open_close_decorators_raise(make_client):
    c = make_client()
    for name in ("socket_open_callback", "socket_close_callback"):
        with pytest.raises(errors.ProtocolError, match=r"socket\(\)"):
            getattr(c, name)()


def test_socket_write_decorators_set_but_never_call(make_client, broker, unique_topic):
    c = make_client()
    rec = Calls()
    for name in ("socket_register_write", "socket_unregister_write"):
        func = rec.record("on_" + name)
        assert getattr(c, name + "_callback")()(func) is func
        assert getattr(c, "on_" + name) is func
    inbox = Inbox()
    c.on_message = inbox
    c.connect(HOST, broker.port)
    c.subscribe(unique_topic + "w", 1)
    c.loop_start()
    c.publish(unique_topic + "w", b"x" * 100000, qos=1).wait_for_publish(WAIT)
    inbox.wait(1)
    assert c.want_write() is False
    assert rec.calls == {}
