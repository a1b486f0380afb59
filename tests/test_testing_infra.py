"""Tests of the test infrastructure itself: sermas_bus.testing.Mosquitto and
tests/fake_broker.py, exercised with the reference client paho-mqtt 2.x."""

from __future__ import annotations

import gc
import os
import queue
import socket
import ssl
import struct
import time
import uuid
import warnings

import paho.mqtt.client as mqtt
import pytest

from conftest import Mosquitto, testing
from fake_broker import (
    CONNACK_V311_ACCEPTED,
    CONNACK_V311_UNACCEPTABLE_VERSION,
    CONNACK_V5_UNSUPPORTED,
    CONNECT,
    FakeBroker,
    PINGREQ,
    PUBLISH,
    SUBSCRIBE,
    build_packet,
    decode_varint,
    encode_remaining_length,
)

WAIT = 10.0


# --------------------------------------------------------------------- helpers
class Probe:
    """A paho client whose callbacks feed queues, driven by loop_start()."""

    def __init__(self, protocol=mqtt.MQTTv311, transport="tcp", **kw):
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id="probe-" + uuid.uuid4().hex[:12],
            protocol=protocol,
            transport=transport,
            **kw,
        )
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        self.connects: "queue.Queue" = queue.Queue()
        self.disconnects: "queue.Queue" = queue.Queue()
        self.messages: "queue.Queue" = queue.Queue()
        self.subacks: "queue.Queue" = queue.Queue()
        self.pubacks: "queue.Queue" = queue.Queue()
        c = self.client
        c.on_connect = lambda cl, u, flags, rc, props: self.connects.put(rc)
        c.on_disconnect = lambda cl, u, flags, rc, props: self.disconnects.put(rc)
        c.on_message = lambda cl, u, msg: self.messages.put(msg)
        c.on_subscribe = lambda cl, u, mid, rcs, props: self.subacks.put((mid, rcs))
        c.on_publish = lambda cl, u, mid, rc, props: self.pubacks.put(mid)
        self._looping = False

    def connect(self, port, host="127.0.0.1", keepalive=30):
        """Connect and return the CONNACK reason code.

        Raises on socket/TLS errors in connect(), ConnectionError if the
        connection drops before a CONNACK, TimeoutError if nothing happens.
        """
        self.client.connect(host, port, keepalive=keepalive)
        self.client.loop_start()
        self._looping = True
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                return self.connects.get(timeout=0.05)
            except queue.Empty:
                pass
            try:
                rc = self.disconnects.get_nowait()
            except queue.Empty:
                continue
            raise ConnectionError("disconnected before CONNACK: %s" % (rc,))
        raise TimeoutError("no CONNACK within %s s" % WAIT)

    def subscribe(self, topic, qos=1):
        _res, mid = self.client.subscribe(topic, qos)
        got_mid, rcs = self.subacks.get(timeout=WAIT)
        assert got_mid == mid
        return rcs

    def close(self):
        try:
            self.client.disconnect()
        finally:
            if self._looping:
                self.client.loop_stop()
            # paho 2.2 may leave its socket (from a reconnect that raced with
            # loop_stop) and its internal socketpair open until the client is
            # garbage collected; close them now so no ResourceWarning fires
            # in some later test (pytest runs with filterwarnings=error).
            self.client._reset_sockets()


def roundtrip(probe, topic, payload=b"hello"):
    """Subscribe, publish QoS1 to ourselves, return the received message."""
    rcs = probe.subscribe(topic, 1)
    assert [rc.value for rc in rcs] == [1], rcs
    info = probe.client.publish(topic, payload, qos=1)
    info.wait_for_publish(WAIT)
    msg = probe.messages.get(timeout=WAIT)
    assert msg.topic == topic
    assert msg.payload == payload
    assert msg.qos == 1
    return msg


@pytest.fixture
def probes():
    made = []

    def make(**kw):
        p = Probe(**kw)
        made.append(p)
        return p

    yield make
    for p in made:
        try:
            p.close()
        except Exception:
            pass


def listening_addresses(port):
    """Local addresses of LISTEN sockets on ``port`` from /proc/net/tcp{,6}."""
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, p = fields[1].split(":")
            if int(p, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                found.append((name, addr))
    return found


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # could be a zombie of ours: Popen.wait() reaps, so treat existing as alive
    return True


# ------------------------------------------------------------- Mosquitto: urls
def test_urls_and_attributes(broker):
    assert broker.host == "127.0.0.1"
    ports = [broker.port, broker.ws_port, broker.wss_port, broker.tls_port,
             broker.auth_port, broker.mtls_port]
    assert all(isinstance(p, int) and p > 0 for p in ports)
    assert len(set(ports)) == len(ports)
    assert 1883 not in ports
    assert broker.url("tcp") == "tcp://127.0.0.1:%d" % broker.port
    assert broker.url("ws") == "ws://127.0.0.1:%d/mqtt" % broker.ws_port
    assert broker.url("wss") == "wss://127.0.0.1:%d/mqtt" % broker.wss_port
    assert broker.url("mqtts") == "mqtts://127.0.0.1:%d" % broker.tls_port
    assert broker.url("auth") == "tcp://127.0.0.1:%d" % broker.auth_port
    assert broker.url("mtls") == "mqtts://127.0.0.1:%d" % broker.mtls_port
    with pytest.raises(ValueError, match="unknown listener kind"):
        broker.url("http")
    for path in (broker.ca_file, broker.client_cert, broker.client_key, broker.log_path):
        assert os.path.isfile(path), path
    assert "running" in broker.log()


def test_disabled_listener_has_no_port_or_url():
    with Mosquitto(websockets=False) as b:
        assert b.ws_port is None and b.tls_port is None and b.auth_port is None
        with pytest.raises(ValueError, match="not enabled"):
            b.url("ws")
        assert b.url("tcp") == "tcp://127.0.0.1:%d" % b.port


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")
def test_all_listeners_bound_to_loopback_only(broker):
    # mosquitto 2.0.11 binds websockets listeners to every interface unless
    # 'socket_domain ipv4' is set; guard against that regression.
    for kind, port in broker.listeners.items():
        addrs = listening_addresses(port)
        assert addrs, (kind, port)
        assert all(a == ("/proc/net/tcp", "0100007F") for a in addrs), (kind, addrs)


# ------------------------------------------------- Mosquitto: real round trips
def test_tcp_roundtrip(broker, unique_topic, probes):
    p = probes()
    assert p.connect(broker.port) == 0
    roundtrip(p, unique_topic + "tcp")


def test_tcp_roundtrip_mqttv5(broker, unique_topic, probes):
    p = probes(protocol=mqtt.MQTTv5)
    assert p.connect(broker.port) == 0
    roundtrip(p, unique_topic + "tcp5")


def test_websockets_roundtrip(broker, unique_topic, probes):
    p = probes(transport="websockets")
    assert p.connect(broker.ws_port) == 0
    roundtrip(p, unique_topic + "ws")


def test_wss_roundtrip(broker, unique_topic, probes):
    p = probes(transport="websockets")
    p.client.tls_set(ca_certs=broker.ca_file)
    assert p.connect(broker.wss_port) == 0
    roundtrip(p, unique_topic + "wss")


def test_mqtts_roundtrip(broker, unique_topic, probes):
    p = probes()
    p.client.tls_set(ca_certs=broker.ca_file)
    assert p.connect(broker.tls_port) == 0
    roundtrip(p, unique_topic + "mqtts")


def test_mqtts_hostname_localhost_is_valid(broker, unique_topic, probes):
    p = probes()
    p.client.tls_set(ca_certs=broker.ca_file)
    assert p.connect(broker.tls_port, host="localhost") == 0


def test_cross_transport_delivery(broker, unique_topic, probes):
    sub = probes(transport="websockets")
    sub.client.tls_set(ca_certs=broker.ca_file)
    assert sub.connect(broker.wss_port) == 0
    sub.subscribe(unique_topic + "x", 1)
    pub = probes()
    assert pub.connect(broker.port) == 0
    pub.client.publish(unique_topic + "x", b"across", qos=1).wait_for_publish(WAIT)
    assert sub.messages.get(timeout=WAIT).payload == b"across"


def test_mqtts_rejects_server_when_ca_not_trusted(broker):
    # Default system CAs do not know our throw-away CA: verification must fail.
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    c.tls_set()
    with warnings.catch_warnings():
        # paho 2.2 does not close its socket when the TLS handshake fails
        warnings.simplefilter("ignore", ResourceWarning)
        with pytest.raises(ssl.SSLCertVerificationError):
            c.connect("127.0.0.1", broker.tls_port)
        gc.collect()
    # the same check with the standard library, to be sure it is the CA
    ctx = ssl.create_default_context()
    with socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="self.signed|unable to get local issuer"):
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_tls_certificates_are_consistent(broker):
    ctx = ssl.create_default_context(cafile=broker.ca_file)
    with socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            cert = tls.getpeercert()
    assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]
    assert ("DNS", "localhost") in cert["subjectAltName"]
    # the client pair loads and matches
    cctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=broker.ca_file)
    cctx.load_cert_chain(broker.client_cert, broker.client_key)


def test_mtls_requires_client_certificate(broker, unique_topic, probes):
    good = probes()
    good.client.tls_set(ca_certs=broker.ca_file, certfile=broker.client_cert,
                        keyfile=broker.client_key)
    assert good.connect(broker.mtls_port) == 0
    roundtrip(good, unique_topic + "mtls")

    # Without a client certificate the broker aborts the handshake; with TLS 1.3
    # the client may only notice after connect() returned.
    bad = probes()
    bad.client.tls_set(ca_certs=broker.ca_file)
    try:
        rc = bad.connect(broker.mtls_port)
    except (ssl.SSLError, OSError):  # ConnectionError is an OSError
        return
    pytest.fail("connected without a client certificate (CONNACK %r)" % (rc,))


# ------------------------------------------------------------ auth listener
def test_auth_listener_refuses_anonymous(broker, probes):
    p = probes()
    rc = p.connect(broker.auth_port)
    assert rc.is_failure
    assert rc.value == 135  # Not authorized (3.1.1 return code 5)


def test_auth_listener_refuses_wrong_password(broker, probes):
    p = probes()
    p.client.username_pw_set("alice", "wrong")
    rc = p.connect(broker.auth_port)
    assert rc.is_failure


def test_auth_listener_accepts_alice(broker, unique_topic, probes):
    p = probes()
    p.client.username_pw_set("alice", "secret")
    assert p.connect(broker.auth_port) == 0
    roundtrip(p, unique_topic + "auth")


def test_other_listeners_are_anonymous(broker, probes):
    p = probes()
    assert p.connect(broker.port) == 0


# ----------------------------------------------------- lifecycle, kill/restart
def test_kill_then_restart_same_ports_and_reconnect(fresh_broker, unique_topic, probes):
    b = fresh_broker
    ports_before = dict(b.listeners)
    pid_before = b.pid
    p = probes()
    p.client.reconnect_delay_set(min_delay=1, max_delay=1)
    assert p.connect(b.port) == 0
    roundtrip(p, unique_topic + "before")

    b.kill()
    assert not b.is_running()
    assert not pid_alive(pid_before)
    p.disconnects.get(timeout=WAIT)          # client saw the crash
    with pytest.raises(OSError):
        socket.create_connection((b.host, b.port), timeout=1).close()

    b.start()
    assert b.is_running() and b.pid != pid_before
    assert b.listeners == ports_before
    assert p.connects.get(timeout=WAIT) == 0  # paho reconnected on the same port
    roundtrip(p, unique_topic + "after")      # clean session: resubscribe inside

    # websockets and TLS listeners are back too
    ws = probes(transport="websockets")
    ws.client.tls_set(ca_certs=b.ca_file)
    assert ws.connect(b.wss_port) == 0


def test_restart_while_clients_connected(fresh_broker, probes):
    # the listening ports must be rebindable although connections were open
    b = fresh_broker
    for kind in ("tcp", "ws"):
        p = probes(transport="websockets" if kind == "ws" else "tcp")
        assert p.connect(b.listeners[kind]) == 0
    b.restart()
    for kind in ("tcp", "ws"):
        p = probes(transport="websockets" if kind == "ws" else "tcp")
        assert p.connect(b.listeners[kind]) == 0
    assert len(testing._RUNNING.findall(b.log())) == 2


def test_stop_is_idempotent_and_start_is_noop_when_running(fresh_broker):
    b = fresh_broker
    pid = b.pid
    assert b.start() is b and b.pid == pid
    b.stop()
    b.stop()
    b.kill()
    assert not b.is_running() and b.pid is None
    assert "terminating" in b.log()
    b.start()
    assert b.is_running()


def test_context_manager_cleans_up():
    with Mosquitto(tls=True) as b:
        pid, tmpdir = b.pid, b.tmpdir
        assert os.path.isdir(tmpdir) and pid_alive(pid)
    assert not os.path.exists(tmpdir)
    assert not pid_alive(pid)
    with pytest.raises(RuntimeError, match="closed"):
        b.start()


def test_garbage_collected_broker_is_cleaned_up():
    b = Mosquitto().start()
    pid, tmpdir = b.pid, b.tmpdir
    del b
    gc.collect()
    assert not pid_alive(pid)
    assert not os.path.exists(tmpdir)


def test_websockets_only_broker_starts():
    # mosquitto 2.0.x refuses a configuration with only websockets listeners;
    # the launcher adds a hidden refusing TCP listener to work around it.
    with Mosquitto(tcp=False, websockets=True) as b:
        assert b.port is None and list(b.listeners) == ["ws"]
        p = Probe(transport="websockets")
        try:
            assert p.connect(b.ws_port) == 0
        finally:
            p.close()


def test_missing_binary_message(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match="not found"):
        Mosquitto(binary=str(tmp_path / "no-such-mosquitto"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(testing.os, "access", lambda *a: False)
    with pytest.raises(RuntimeError) as ei:
        Mosquitto()
    assert str(ei.value) == (
        "mosquitto not found: install the Debian package 'mosquitto' "
        "(apt-get install mosquitto) or pass binary=")


def test_bad_config_reports_log_tail():
    b = Mosquitto(extra_conf="no_such_option_xyz 1")
    try:
        with pytest.raises(RuntimeError) as ei:
            b.start()
        assert "no_such_option_xyz" in str(ei.value)
        assert "failed to start" in str(ei.value)
        assert not b.is_running()
    finally:
        b.close()


def test_extra_conf_is_applied(unique_topic):
    # max_packet_size from extra_conf: an oversized publish gets the client
    # disconnected, a small one goes through.
    with Mosquitto(extra_conf="max_packet_size 1000") as b:
        p = Probe()
        try:
            assert p.connect(b.port) == 0
            roundtrip(p, unique_topic + "small", b"x" * 10)
            p.client.publish(unique_topic + "big", b"x" * 5000, qos=1)
            p.disconnects.get(timeout=WAIT)
        finally:
            p.close()


def test_users_require_auth_listener():
    with pytest.raises(ValueError, match="auth_listener"):
        Mosquitto(users={"bob": "pw"})
    with pytest.raises(ValueError):
        Mosquitto(auth_listener=True, users={"bo:b": "pw"})


def test_port_taken_on_restart_is_reported(fresh_broker):
    b = fresh_broker
    b.port_retry_seconds = 1.0
    b.kill()
    squatter = socket.socket()
    try:
        squatter.bind((b.host, b.port))
        squatter.listen()
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="in use"):
            b.start()
        assert time.monotonic() - t0 < 5
    finally:
        squatter.close()
    b.start()  # port free again: same port comes back
    socket.create_connection((b.host, b.port), timeout=2).close()


# ------------------------------------------------------------------ FakeBroker
def v5_connect(client_id=b"c1"):
    body = (b"\x00\x04MQTT\x05\x02\x00\x3c" + b"\x00"  # props len 0
            + struct.pack("!H", len(client_id)) + client_id)
    return build_packet(CONNECT, 0, body)


def v4_connect(client_id=b"c1"):
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(client_id)) + client_id
    return build_packet(CONNECT, 0, body)


def recv_exact(sock, n):
    sock.settimeout(5)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "EOF after %r" % data
        data += chunk
    return data


def recv_all_until_eof(sock, timeout=5.0):
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455])
def test_remaining_length_codec(n):
    enc = encode_remaining_length(n)
    assert len(enc) == (1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4)
    assert decode_varint(enc + b"\xff", 0) == (n, len(enc))


def test_fake_broker_refuses_v5_with_reason_0x84_raw():
    with FakeBroker() as fb, socket.create_connection(("127.0.0.1", fb.port)) as s:
        s.sendall(v5_connect())
        assert recv_all_until_eof(s) == CONNACK_V5_UNSUPPORTED  # then closed
        (pkt,) = fb.connects
        assert pkt.protocol_name == "MQTT" and pkt.protocol_level == 5
        assert pkt.client_id == "c1" and pkt.keepalive == 60
        assert pkt.raw == v5_connect()


def test_fake_broker_refuses_v5_v311_style_raw():
    with FakeBroker(refusal="v311") as fb, socket.create_connection(("127.0.0.1", fb.port)) as s:
        s.sendall(v5_connect())
        assert recv_all_until_eof(s) == CONNACK_V311_UNACCEPTABLE_VERSION
        assert fb.connects[0].protocol_level == 5


def test_fake_broker_v4_session_raw():
    with FakeBroker() as fb, socket.create_connection(("127.0.0.1", fb.port)) as s:
        s.settimeout(5)
        s.sendall(v4_connect())
        assert recv_exact(s, 4) == CONNACK_V311_ACCEPTED
        s.sendall(b"\xc0\x00")                                   # PINGREQ
        assert recv_exact(s, 2) == b"\xd0\x00"
        sub = build_packet(SUBSCRIBE, 2, b"\x00\x07" + b"\x00\x03a/b\x02" + b"\x00\x01c\x01")
        s.sendall(sub)
        assert recv_exact(s, 6) == b"\x90\x04\x00\x07\x02\x01"          # SUBACK pid 7, QoS 2 and 1
        payload = b"p" * 20000                                   # 3-byte remaining length
        pub = build_packet(PUBLISH, 0x02, b"\x00\x03a/b\x01\x02" + payload)
        s.sendall(pub)
        assert recv_exact(s, 4) == b"\x40\x02\x01\x02"                  # PUBACK pid 0x0102
        s.sendall(b"\xe0\x00")                                   # DISCONNECT
        assert recv_all_until_eof(s) == b""
        names = [p.name for p in fb.received()]
        assert names == ["CONNECT", "PINGREQ", "SUBSCRIBE", "PUBLISH", "DISCONNECT"]
        publish = fb.received("PUBLISH")[0]
        assert publish.raw == pub and publish.topic == "a/b" and publish.qos == 1
        assert publish.packet_id == 0x0102 and publish.body.endswith(payload)
        assert fb.errors == []


def test_fake_broker_closes_on_non_connect_first_packet():
    with FakeBroker() as fb, socket.create_connection(("127.0.0.1", fb.port)) as s:
        s.sendall(b"\xc0\x00")
        assert recv_all_until_eof(s) == b""
        assert fb.received()[0].type == PINGREQ
        assert fb.errors


def test_fake_broker_refuses_paho_v5():
    with FakeBroker() as fb:
        p = Probe(protocol=mqtt.MQTTv5)
        try:
            rc = p.connect(fb.port)
        finally:
            p.close()
        assert rc.is_failure and rc.value == 0x84, rc
        assert [c.protocol_level for c in fb.connects] == [5]


def test_fake_broker_accepts_paho_v311_and_subscribes():
    with FakeBroker() as fb:
        p = Probe(protocol=mqtt.MQTTv311)
        try:
            assert p.connect(fb.port, keepalive=1) == 0
            rcs = p.subscribe("some/topic", 1)
            assert [rc.value for rc in rcs] == [1]
            big = b"z" * 300_000
            info = p.client.publish("some/topic", big, qos=1)
            info.wait_for_publish(WAIT)
            assert info.is_published()
            fb.wait_for(PINGREQ, count=2, timeout=WAIT)     # keepalive 1 s answered
            assert p.disconnects.empty()
        finally:
            p.close()
        fb.wait_for("DISCONNECT")
        (connect,) = fb.connects
        assert connect.protocol_level == 4 and connect.keepalive == 1
        assert fb.wait_for(PUBLISH)[0].body.endswith(big)
        assert fb.errors == []


def test_fake_broker_records_v5_then_v4_fallback_sequence():
    # What a client with "try v5, fall back to 3.1.1" must produce.
    with FakeBroker() as fb:
        v5 = Probe(protocol=mqtt.MQTTv5)
        try:
            assert v5.connect(fb.port).value == 0x84
        finally:
            v5.close()
        v4 = Probe(protocol=mqtt.MQTTv311)
        try:
            assert v4.connect(fb.port) == 0
        finally:
            v4.close()
        assert [c.protocol_level for c in fb.wait_for(CONNECT, count=2)] == [5, 4]
        assert [c.conn for c in fb.connects] == [0, 1]


def test_fake_broker_accepts_v5_when_not_refusing():
    with FakeBroker(refuse_v5=False) as fb:
        p = Probe(protocol=mqtt.MQTTv5)
        try:
            assert p.connect(fb.port) == 0
            rcs = p.subscribe("t", 2)
            assert [rc.value for rc in rcs] == [2]
            p.client.publish("t", b"x", qos=2).wait_for_publish(WAIT)
            _res, mid = p.client.unsubscribe("t")
        finally:
            p.close()
        fb.wait_for("DISCONNECT")
        names = [x.name for x in fb.received()]
        assert names[:5] == ["CONNECT", "SUBSCRIBE", "PUBLISH", "PUBREL", "UNSUBSCRIBE"]
        assert fb.errors == []


def test_fake_broker_wait_for_times_out_with_details():
    with FakeBroker() as fb:
        with pytest.raises(TimeoutError, match="SUBSCRIBE"):
            fb.wait_for(SUBSCRIBE, timeout=0.2)


def test_log_type_controls_packet_logging(broker, unique_topic, probes):
    p = probes()
    assert p.connect(broker.port) == 0
    roundtrip(p, unique_topic + "logged")
    deadline = time.monotonic() + WAIT
    while unique_topic + "logged" not in broker.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Received PUBLISH" in broker.log()      # default log_type all
    with Mosquitto(websockets=False, log_type="warning") as quiet:
        q = Probe()
        try:
            assert q.connect(quiet.port) == 0
            roundtrip(q, unique_topic + "quiet")
        finally:
            q.close()
        assert " running" in quiet.log()             # 'information' kept for readiness
        assert "Received PUBLISH" not in quiet.log()
