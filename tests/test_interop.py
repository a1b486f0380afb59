"""Interoperability with third-party MQTT brokers: RabbitMQ 3.x (rabbitmq_mqtt +
rabbitmq_web_mqtt), NATS 2.9 (MQTT) and amqtt — all three speak MQTT 3.1.1
only.

Every test uses DEFAULT settings, as a user who just switches brokers would:
``Client(CallbackAPIVersion.VERSION2)`` with no ``protocol`` argument, and
``SermasClient(mqtt_url=..., app_id="app")`` without credentials.  The tests
state the desired, paho-compatible behaviour; they are not marked xfail.

Each client test runs with two implementations of the same API:

* ``sermas_bus`` — ``sermas_bus.client``, the code under test;
* ``paho`` — the real ``paho.mqtt.client`` (defaults: MQTT 3.1.1, clean
  session).  These runs are the reference: they show that the expectation
  holds for these brokers, so a ``sermas_bus`` failure is a client bug.

The brokers are private processes on free loopback ports, one per broker for
the session (see ``tests/interop_brokers.py``); a broker that is not installed
makes its tests skip with the package to install (or fail when
``SERMAS_INTEROP_REQUIRED=1``).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from interop_brokers import HOST, Amqtt, NatsServer, RabbitMQ, start_or_skip

pytestmark = pytest.mark.timeout(90)

V2_IMPLS = ["sermas_bus", "paho"]
BROKER_NAMES = ["rabbitmq", "nats", "amqtt"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# brokers
# ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def rabbitmq_broker():
    broker = start_or_skip(RabbitMQ)
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def nats_broker():
    broker = start_or_skip(NatsServer)
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def amqtt_broker():
    broker = start_or_skip(Amqtt)
    yield broker
    broker.close()


@pytest.fixture(params=BROKER_NAMES)
def interop(request):
    """One of the session brokers, running (a test that killed it leaves it to be restarted)."""
    broker = request.getfixturevalue(request.param + "_broker")
    if not broker.is_running():
        broker.start()
    return broker


# ---------------------------------------------------------------------------
# client implementations and helpers
# ---------------------------------------------------------------------------

@pytest.fixture(params=V2_IMPLS)
def impl(request):
    """The client module: ``sermas_bus.client`` or the reference ``paho.mqtt.client``."""
    if request.param == "paho":
        return pytest.importorskip("paho.mqtt.client", reason="paho-mqtt (PyPI) is the reference client")
    import sermas_bus.client
    return sermas_bus.client


class Peer:
    """A client with default settings and recording callbacks (API VERSION2)."""

    def __init__(self, mod, transport="tcp"):
        self.mod = mod
        self.client = mod.Client(mod.CallbackAPIVersion.VERSION2, transport=transport)
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        self.transport = transport
        self.connects = []          # (flags, reason_code)
        self.disconnects = []       # reason_code
        self.subacks = {}           # mid -> [reason codes]
        self.messages = []
        self.on_connect_hook = None
        self._cond = threading.Condition()
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message

    # callbacks (loop thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if self.on_connect_hook is not None:
            self.on_connect_hook(self)
        with self._cond:
            self.connects.append((flags, reason_code))
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self.disconnects.append(reason_code)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self.subacks[mid] = list(reason_codes)
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    # waiting
    def _wait(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("{}: timed out after {} s waiting for {}; connects={} "
                                         "disconnects={} messages={}".format(
                                             self.mod.__name__, timeout, what,
                                             [str(rc) for _, rc in self.connects],
                                             [str(rc) for rc in self.disconnects],
                                             [(m.topic, m.payload) for m in self.messages][:10]))
                self._cond.wait(min(left, 0.5))

    def wait_connected(self, count=1, timeout=15.0):
        self._wait(lambda: len(self.connects) >= count, timeout, "{} CONNACK(s)".format(count))
        flags, rc = self.connects[count - 1]
        assert not rc.is_failure, "connection {} refused: {}".format(count, rc)
        return flags, rc

    def wait_suback(self, mid, timeout=10.0):
        self._wait(lambda: mid in self.subacks, timeout, "SUBACK of mid {}".format(mid))
        return self.subacks[mid]

    def wait_messages(self, n, timeout=10.0, topic=None):
        def matching():
            return [m for m in self.messages if topic is None or m.topic == topic]
        self._wait(lambda: len(matching()) >= n, timeout,
                   "{} message(s){}".format(n, " on " + topic if topic else ""))
        with self._cond:
            return matching()

    # actions
    def connect(self, broker, kind=None):
        kind = kind or ("ws" if self.transport == "websockets" else "tcp")
        rc = self.client.connect(HOST, broker.ports[kind], keepalive=30)
        assert rc == self.mod.MQTT_ERR_SUCCESS, rc
        self.client.loop_start()
        return self.wait_connected()

    def subscribe(self, topic, qos=1):
        rc, mid = self.client.subscribe(topic, qos)
        assert rc == self.mod.MQTT_ERR_SUCCESS, rc
        codes = self.wait_suback(mid)
        assert len(codes) == 1 and not codes[0].is_failure, codes
        return codes[0]

    def publish(self, topic, payload, qos=1, retain=False):
        info = self.client.publish(topic, payload, qos, retain)
        assert info.rc == self.mod.MQTT_ERR_SUCCESS, info.rc
        if qos:
            info.wait_for_publish(10)
            assert info.is_published()
        return info

    def close(self):
        c = self.client
        if hasattr(c, "close"):         # sermas_bus
            c.close()
        else:                           # paho
            try:
                c.disconnect()
            finally:
                c.loop_stop()


@pytest.fixture
def peers(impl):
    """``peers()`` -> a new connected-later ``Peer`` of the implementation under test;
    all are closed after the test."""
    made = []

    def factory(transport="tcp"):
        p = Peer(impl, transport)
        made.append(p)
        return p

    yield factory
    for p in reversed(made):
        try:
            p.close()
        except Exception:   # a half-broken client must not hide the test's own failure
            pass


def unique(prefix):
    return "sbinterop/{}/{}".format(uuid.uuid4().hex[:12], prefix)


# ---------------------------------------------------------------------------
# connect
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["tcp", "websockets"])
def test_connect_with_default_settings(interop, impl, peers, transport):
    p = peers(transport)
    flags, rc = p.connect(interop)
    assert flags.session_present is False       # clean session by default
    assert p.client.is_connected()
    # the broker speaks 3.1.1 only: the client ends up on 3.1.1, like paho's default
    assert p.client.protocol == impl.MQTTv311
    # and the connection carries traffic
    topic = unique("connect")
    p.subscribe(topic, 1)
    p.publish(topic, b"hello", 1)
    (msg,) = p.wait_messages(1, topic=topic)
    assert msg.payload == b"hello"


# ---------------------------------------------------------------------------
# QoS 0 / 1 and retained messages
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("qos", [0, 1])
def test_round_trip(interop, peers, qos):
    sub, pub = peers(), peers()
    sub.connect(interop)
    pub.connect(interop)
    topic = unique("qos{}".format(qos))
    granted = sub.subscribe(topic, qos)
    assert granted.value == qos
    payloads = [b"m%d" % i for i in range(5)]
    for payload in payloads:
        pub.publish(topic, payload, qos)
    got = sub.wait_messages(len(payloads), topic=topic)
    assert [m.payload for m in got] == payloads      # in order, nothing lost on loopback
    assert all(m.qos == qos and not m.retain for m in got)


def test_retained_message_reaches_a_later_subscriber(interop, peers):
    topic = unique("retained")
    pub = peers()
    pub.connect(interop)
    pub.publish(topic, b"kept", 1, retain=True)
    try:
        late = peers()
        late.connect(interop)
        late.subscribe(topic, 1)
        (msg,) = late.wait_messages(1, topic=topic)
        assert msg.payload == b"kept"
        assert msg.retain is True
        # a message published while subscribed is not flagged retained
        pub.publish(topic, b"live", 1)
        msgs = late.wait_messages(2, topic=topic)
        assert msgs[1].payload == b"live" and msgs[1].retain is False
    finally:
        pub.publish(topic, b"", 1, retain=True)      # clear it


# ---------------------------------------------------------------------------
# will
# ---------------------------------------------------------------------------

_WILL_CHILD = textwrap.dedent("""
    import sys, threading, time
    import importlib
    mod = importlib.import_module(sys.argv[1])
    host, port, topic = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    c = mod.Client(mod.CallbackAPIVersion.VERSION2)
    c.will_set(topic, b"client died", qos=1)
    up = threading.Event()
    c.on_connect = lambda cl, ud, fl, rc, pr: (not rc.is_failure) and up.set()
    try:
        c.connect(host, port, keepalive=30)
        c.loop_start()
    except Exception as exc:
        print("ERROR {}: {}".format(type(exc).__name__, exc), flush=True)
        sys.exit(1)
    if not up.wait(15):
        print("ERROR no successful CONNACK within 15 s", flush=True)
        sys.exit(1)
    print("READY", flush=True)
    time.sleep(60)      # the test SIGKILLs it long before
""")


def _read_line(proc, timeout):
    q = queue.Queue()
    t = threading.Thread(target=lambda: q.put(proc.stdout.readline()), daemon=True)
    t.start()
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        return None


def test_will_is_published_when_the_client_is_killed(interop, impl, peers):
    topic = unique("will")
    observer = peers()
    observer.connect(interop)
    observer.subscribe(topic, 1)
    proc = subprocess.Popen([sys.executable, "-c", _WILL_CHILD, impl.__name__, HOST, str(interop.port), topic],
                            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = _read_line(proc, 30)
        if line is None or not line.startswith("READY"):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail("the {} client with a will did not connect: {!r}\n{}".format(
                impl.__name__, line, err[-2000:]))
        time.sleep(0.3)
        assert not [m for m in observer.messages if m.topic == topic], "will sent while still connected"
        proc.send_signal(signal.SIGKILL)      # no DISCONNECT: the socket just closes
        proc.wait(10)
        (msg,) = observer.wait_messages(1, topic=topic, timeout=15)
        assert msg.payload == b"client died"
        assert msg.qos == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            stream.close()


# ---------------------------------------------------------------------------
# broker restart
# ---------------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_reconnects_and_resubscribes_in_on_connect_after_a_broker_restart(interop, peers):
    """The paho idiom: subscribe in on_connect, so every (re)connection subscribes."""
    topic = unique("restart")
    sub = peers()
    sub.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
    acks = []
    sub.on_connect_hook = lambda peer: acks.append(peer.client.subscribe(topic, 1)[1])
    sub.connect(interop)
    sub.wait_suback(acks[0])
    pub = peers()
    pub.connect(interop)
    pub.publish(topic, b"before", 1)
    sub.wait_messages(1, topic=topic)
    pub.close()

    interop.restart()                      # graceful stop, start again on the same ports

    sub.wait_connected(2, timeout=60)
    assert len(sub.disconnects) >= 1
    sub.wait_suback(acks[1])
    assert sub.client.is_connected()
    pub2 = peers()
    pub2.connect(interop)
    pub2.publish(topic, b"after", 1)
    msgs = sub.wait_messages(2, topic=topic)
    assert [m.payload for m in msgs] == [b"before", b"after"]
    # and the reconnected client publishes normally
    sub.publish(topic, b"own", 1)
    sub.wait_messages(3, topic=topic)


@pytest.mark.timeout(180)
def test_sermas_bus_restores_its_subscriptions_after_a_broker_restart(interop):
    """sermas_bus' own promise (paho does not do it): subscriptions made once
    are renewed on every reconnection."""
    import sermas_bus.client as mqtt

    topic = unique("restore")
    sub = Peer(mqtt)
    pub = None
    try:
        sub.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        sub.connect(interop)
        sub.subscribe(topic, 1)
        interop.restart()
        sub.wait_connected(2, timeout=60)
        pub = Peer(mqtt)
        pub.connect(interop)
        # the resubscription is asynchronous: publish until it is in place (bounded)
        deadline = time.monotonic() + 15
        for attempt in range(60):
            pub.publish(topic, b"after-%d" % attempt, 1)
            try:
                sub.wait_messages(1, topic=topic, timeout=0.25)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        else:
            pytest.fail("no message reached the restored subscription after 60 publishes")
        assert sub.messages[0].payload.startswith(b"after-")
    finally:
        for p in (pub, sub):
            if p is not None:
                p.close()


# ---------------------------------------------------------------------------
# SermasClient
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tcp", "ws"])
def test_sermas_client_publish_subscribe(interop, kind):
    import sermas_bus

    got = queue.Queue()
    subscribed = threading.Event()
    with sermas_bus.SermasClient(mqtt_url=interop.url(kind), app_id="app") as receiver, \
            sermas_bus.SermasClient(mqtt_url=interop.url(kind), app_id="app") as sender:
        receiver.client.on_subscribe = lambda *args: subscribed.set()
        receiver.subscribe("app/app/test/x", lambda event, msg: got.put((event, msg)))
        assert subscribed.wait(10), "no SUBACK within 10 s"
        payload = {"text": "hello", "n": 1, "nested": {"ok": True}}
        sender.publish("app/app/test/x", payload).wait_for_publish(10)
        try:
            event, msg = got.get(timeout=10)
        except queue.Empty:
            pytest.fail("the SermasClient subscriber got nothing within 10 s")
        assert event == payload
        assert msg.topic == "app/app/test/x"
        assert json.loads(msg.raw) == payload


# ---------------------------------------------------------------------------
# what each broker does with an MQTT 5 CONNECT (facts the fall-back must handle)
# ---------------------------------------------------------------------------

def _mqtt5_connect(properties: bytes) -> bytes:
    cid = b"sbtest-v5-" + uuid.uuid4().hex[:8].encode()
    body = (b"\x00\x04MQTT\x05\x02\x00\x3c" + bytes([len(properties)]) + properties
            + len(cid).to_bytes(2, "big") + cid)
    return bytes([0x10, len(body)]) + body


def _answer(port, packet, wait=3.0):
    """What comes back within ``wait`` s: ('connack', code) / ('closed', data) / ('silent', data)."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(packet)
        s.settimeout(0.2)
        data = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(64)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return ("closed", data)
            if not chunk:
                return ("connack", data[3]) if data[:2] == b"\x20\x02" else ("closed", data)
            data += chunk
        return ("silent", data)


# (broker, CONNECT properties) -> expected answer, as observed with RabbitMQ 3.10.8,
# NATS 2.9.10 and amqtt 0.12.1
_V5_ANSWERS = {
    ("rabbitmq", "none"): ("closed", b""),            # "cannot parse a frame": no CONNACK at all
    ("rabbitmq", "session-expiry"): ("closed", b""),
    ("nats", "none"): ("connack", 1),                 # 0x01 unacceptable protocol version, then close
    ("nats", "session-expiry"): ("connack", 1),
    ("amqtt", "none"): ("connack", 1),
    # amqtt parses the property bytes as the client id length and waits for more data
    ("amqtt", "session-expiry"): ("silent", b""),
}


@pytest.mark.parametrize("props", ["none", "session-expiry"])
def test_broker_answer_to_an_mqtt5_connect(interop, props):
    """Not a client test: records how each broker refuses MQTT 5, so that a
    broker upgrade that changes it is noticed.  A 3.1.1-only broker may
    answer CONNACK 1, close the socket without a CONNACK, or say nothing; the
    client's fall-back must cope with all three."""
    properties = b"" if props == "none" else b"\x11\x00\x00\x0e\x10"   # Session Expiry 3600
    got = _answer(interop.port, _mqtt5_connect(properties))
    assert got == _V5_ANSWERS[(interop.name, props)]


@pytest.mark.parametrize("protocol", [None, "MQTTv311"])
def test_sermas_client_no_local_on_any_broker(interop, protocol):
    """noLocal (the default) holds on MQTT 3.1.1 brokers too: the broker's
    copy of our own event is filtered out client-side; others' events arrive."""
    import sermas_bus
    import sermas_bus.client as sbmqtt

    proto = None if protocol is None else getattr(sbmqtt, protocol)
    got = queue.Queue()
    topic = unique("app/app/echo")
    with sermas_bus.SermasClient(mqtt_url=interop.url("tcp"), app_id="app", protocol=proto) as me, \
            sermas_bus.SermasClient(mqtt_url=interop.url("tcp"), app_id="app", protocol=proto) as other:
        assert me.client.protocol == sbmqtt.MQTTv311     # every interop broker is 3.1.1-only
        me.subscribe(topic, lambda event, msg: got.put(event))
        me.publish(topic, {"from": "me"}).wait_for_publish(10)
        other.publish(topic, {"from": "other"}).wait_for_publish(10)
        assert got.get(timeout=10) == {"from": "other"}
        time.sleep(0.3)
        assert got.empty(), "our own event came back despite noLocal"
        # a random client id: no session left behind on a 3.1.1 broker
        assert me.client._engine.clean_session is True


def test_sermas_client_keeps_a_session_only_for_a_chosen_client_id(interop):
    import sermas_bus

    with sermas_bus.SermasClient(mqtt_url=interop.url("tcp"), app_id="app",
                                 mqtt_client_id=unique("svc").replace("/", "-")) as bus:
        assert bus.client._engine.clean_session is False


def test_sermas_client_overlapping_subscriptions_once_per_callback(interop):
    """MQTT 3.1.1 has no subscription identifiers, and a broker may send one
    copy per matching filter (regression: on such brokers every callback got
    each copy).  Only the widest filter goes to the broker."""
    import sermas_bus

    narrow, wide = queue.Queue(), queue.Queue()
    base = unique("app/app/ovl")
    with sermas_bus.SermasClient(mqtt_url=interop.url("tcp"), app_id="app") as me, \
            sermas_bus.SermasClient(mqtt_url=interop.url("tcp"), app_id="app") as other:
        me.subscribe(base + "/x", lambda event, msg: narrow.put(event))
        me.subscribe(base + "/#", lambda event, msg: wide.put(event))
        time.sleep(0.3)
        other.publish(base + "/x", {"n": 1}).wait_for_publish(10)
        assert narrow.get(timeout=10) == {"n": 1} and wide.get(timeout=10) == {"n": 1}
        time.sleep(0.5)
        assert narrow.empty() and wide.empty(), "a callback got the broker's second copy"
