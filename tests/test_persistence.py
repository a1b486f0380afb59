"""The durable outbox (persistence=<dir>): what publish() accepted survives
the process, a damaged store is recovered and reported, a directory serves
one live client, the store is bounded; and the fault scenario that needs it:
a publisher SIGKILLed mid-stream loses nothing once restarted."""

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings

import pytest

import sermas_bus.client as mqtt
from sermas_bus import errors
from sermas_bus.properties import Properties
from sermas_bus.packettypes import PacketTypes

from fault_proxy import FaultProxy, wait_accepted
from support import Inbox

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLISHER = os.path.join(HERE, "persist_publisher.py")
V2 = mqtt.CallbackAPIVersion.VERSION2
REC_MAGIC = b"1RBS"     # a record's first bytes (csrc/store.c REC_MAGIC, little-endian)


def _offline(directory, client_id="p1", **kw):
    """A client with a store that never connects: what it publishes queues."""
    return mqtt.Client(V2, client_id, persistence=str(directory), **kw)


def _publish_offline(directory, payloads, client_id="p1", qos=1):
    c = _offline(directory, client_id)
    for p in payloads:
        c.publish("t/offline", p, qos=qos)
    c.close()


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _log(directory):
    return os.path.join(str(directory), "outbox.log")


def _deliver(directory, port, topic_filter, n, client_id="p1", timeout=10.0):
    """Open the store again, connect, and return what a subscriber got."""
    inbox = Inbox()
    subscribed = threading.Event()
    sub = mqtt.Client(V2, "sub-" + uuid.uuid4().hex[:8])
    sub.on_message = inbox
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe(topic_filter, 2)
    assert subscribed.wait(10), "no SUBACK"
    pub = mqtt.Client(V2, client_id, persistence=str(directory))
    try:
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        assert pub.flush(timeout), "the restored outbox did not drain"
        got = inbox.wait(n, timeout) if n else []
        time.sleep(0.2)
        return pub, inbox.messages if n else got
    finally:
        pub.disconnect()
        pub.loop_stop()
        pub.close()             # releases the directory
        sub.disconnect()
        sub.loop_stop()


# ---- the store on its own -----------------------------------------------------

def test_offline_publishes_survive_the_process_and_are_delivered_in_order(tmp_path, quiet_broker):
    payloads = [f"m{i}".encode() for i in range(50)]
    _publish_offline(tmp_path, payloads)
    pub, got = _deliver(tmp_path, quiet_broker.listeners["tcp"], "t/offline", 50)
    assert pub.persistence_report["messages"] == 50
    assert [m.payload for m in got] == payloads
    # delivered: a third start finds nothing to send
    c = _offline(tmp_path)
    assert c.persistence_report["messages"] == 0
    c.close()


def test_restored_messages_keep_qos_retain_and_mqtt5_properties(tmp_path, quiet_broker, unique_topic):
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "v"), ("k2", "v2")]
    props.ContentType = "application/json"
    c = mqtt.Client(V2, "p5", protocol=mqtt.MQTTv5, persistence=str(tmp_path))
    c.publish(unique_topic + "a", b"{}", qos=2, retain=True, properties=props)
    c.close()

    port = quiet_broker.listeners["tcp"]
    pub = mqtt.Client(V2, "p5", protocol=mqtt.MQTTv5, persistence=str(tmp_path))
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    assert pub.flush(10)
    pub.disconnect()
    pub.loop_stop()
    pub.close()
    # retained: a subscriber that comes afterwards gets it, with its properties
    inbox = Inbox()
    sub = mqtt.Client(V2, "s5", protocol=mqtt.MQTTv5)
    sub.on_message = inbox
    sub.connect("127.0.0.1", port)
    sub.subscribe(unique_topic + "#", 2)
    sub.loop_start()
    try:
        (m,) = inbox.wait(1)
        assert (m.payload, m.qos, m.retain) == (b"{}", 2, True)
        assert m.properties.UserProperty == [("k", "v"), ("k2", "v2")]
        assert m.properties.ContentType == "application/json"
    finally:
        sub.publish(unique_topic + "a", b"", retain=True)   # clear the retained message
        sub.disconnect()
        sub.loop_stop()


@pytest.mark.parametrize("cut", [1, 7, 12, 13, 30, "all-but-one"])
def test_a_torn_last_record_is_recovered_up_to_the_last_good_one(tmp_path, cut):
    _publish_offline(tmp_path, [b"first", b"second", b"third-" + b"x" * 40])
    log = _log(tmp_path)
    data = _read(log)
    last = data.rfind(REC_MAGIC)
    size = len(data) - last
    n = size - 1 if cut == "all-but-one" else cut
    with open(log, "r+b") as f:
        f.truncate(len(data) - n)
    with pytest.warns(errors.PersistenceRecoveryWarning, match="torn last record"):
        c = _offline(tmp_path)
    rep = c.persistence_report
    c.close()
    assert rep["messages"] == 2 and rep["torn_tail"] and rep["damaged_bytes"] == size - n
    assert os.path.exists(rep["damaged_copy"])
    assert _read(rep["damaged_copy"]) == data[:len(data) - n]
    # the rewritten log is clean: the next open reports nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = _offline(tmp_path)
    assert c.persistence_report["messages"] == 2 and not c.persistence_report["damaged_bytes"]
    c.close()


def test_corruption_inside_the_log_loses_only_the_damaged_record(tmp_path, quiet_broker):
    payloads = [f"payload-{i}".encode() for i in range(5)]
    _publish_offline(tmp_path, payloads)
    log = _log(tmp_path)
    data = bytearray(_read(log))
    at = data.index(b"payload-1")
    data[at] ^= 0xFF
    _write(log, bytes(data))
    with pytest.warns(errors.PersistenceRecoveryWarning, match="1 damaged span"):
        c = _offline(tmp_path)
    rep = c.persistence_report
    c.close()
    assert (rep["messages"], rep["damaged_spans"], rep["torn_tail"]) == (4, 1, False)
    _, got = _deliver(tmp_path, quiet_broker.listeners["tcp"], "t/offline", 4)
    assert [m.payload for m in got] == [p for p in payloads if p != b"payload-1"]


def test_a_file_that_is_not_a_store_is_left_alone(tmp_path):
    _write(_log(tmp_path), b"my own notes, not an outbox\n")
    with pytest.raises(errors.PersistenceError, match="not a sermas_bus outbox store"):
        _offline(tmp_path)
    assert _read(_log(tmp_path)) == b"my own notes, not an outbox\n"


def test_the_store_belongs_to_one_client_id(tmp_path):
    _publish_offline(tmp_path, [b"x"], client_id="alpha")
    with pytest.raises(errors.PersistenceError, match="client id 'alpha', not 'beta'"):
        _offline(tmp_path, "beta")
    c = _offline(tmp_path, "alpha")
    assert c.persistence_report["messages"] == 1
    c.close()


def test_a_directory_in_use_by_a_live_client_is_refused(tmp_path):
    c = _offline(tmp_path)
    with pytest.raises(errors.PersistenceLockedError, match=f"process {os.getpid()}"):
        _offline(tmp_path)
    c.close()
    _offline(tmp_path).close()      # free again once closed


def test_a_directory_held_by_another_process_is_refused_until_it_exits(tmp_path):
    code = ("import sys, time; sys.path.insert(0, %r); import sermas_bus.client as m; "
            "c = m.Client(m.CallbackAPIVersion.VERSION2, 'p1', persistence=%r); print('ready', flush=True); "
            "time.sleep(60)") % (os.path.dirname(HERE), str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(errors.PersistenceLockedError, match=f"process {child.pid}"):
            _offline(tmp_path)
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
    _offline(tmp_path).close()      # a dead process holds nothing


def test_a_full_store_refuses_with_a_clear_error_and_keeps_what_it_accepted(tmp_path):
    c = mqtt.Client(V2, "p1", persistence=str(tmp_path), persistence_max_bytes=4096)
    accepted = 0
    with pytest.raises(errors.PersistenceFullError, match="outbox store is full .*persistence_max_bytes"):
        for i in range(1000):
            c.publish("t/full", b"x" * 100, qos=1)
            accepted += 1
    assert 10 < accepted < 40
    c.close()
    c = _offline(tmp_path)
    assert c.persistence_report["messages"] == accepted
    c.close()


def test_a_failing_disk_is_reported_not_hidden(tmp_path):
    """A write error (here: the file size limit, as a full disk would) makes
    publish() raise PersistenceError saying the message is not durable, and
    refuses later publishes instead of pretending."""
    code = '''
import resource, signal, sys
sys.path.insert(0, %r)
import sermas_bus.client as m
from sermas_bus import errors
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
c = m.Client(m.CallbackAPIVersion.VERSION2, "p1", persistence=%r)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
ok = 0
try:
    for i in range(10000):
        c.publish("t/disk", b"x" * 1000, qos=1)
        ok += 1
except errors.PersistenceError as e:
    print("first:", ok, e)
try:
    c.publish("t/disk", b"y", qos=1)
except errors.PersistenceError as e:
    print("then:", e)
''' % (os.path.dirname(HERE), str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, then = out.stdout.strip().split("\n")
    assert first.startswith("first: ") and int(first.split()[1]) > 10
    assert "could not write to" in first and "File too large" in first and "not durable" in first
    assert "failed earlier" in then
    # what was written before the error is all there; the record the error cut is a torn tail
    with pytest.warns(errors.PersistenceRecoveryWarning, match="torn last record"):
        c = _offline(tmp_path)
    assert c.persistence_report["messages"] == int(first.split()[1])
    c.close()


def test_bad_persistence_arguments_are_clear(tmp_path):
    with pytest.raises(ValueError, match="persistence needs a client_id"):
        mqtt.Client(V2, "", persistence=str(tmp_path))
    with pytest.raises(ValueError, match="persistence_sync must be 'write'"):
        mqtt.Client(V2, "x", persistence=str(tmp_path), persistence_sync="always")
    with pytest.raises(ValueError, match="persistence_max_bytes"):
        mqtt.Client(V2, "x", persistence=str(tmp_path), persistence_max_bytes=10)
    with pytest.raises(TypeError, match="directory path"):
        mqtt.Client(V2, "x", persistence=42)
    c = mqtt.Client(V2, "x")
    c.publish("t", b"1", qos=1)
    with pytest.raises(RuntimeError, match="before the first connect"):
        c._conn.open_store(str(tmp_path))


def test_qos0_is_not_stored_and_acknowledged_messages_leave_the_store(tmp_path, quiet_broker):
    c = mqtt.Client(V2, "p1", persistence=str(tmp_path))
    c.connect("127.0.0.1", quiet_broker.listeners["tcp"])
    c.loop_start()
    for i in range(200):
        c.publish("t/live", b"q1", qos=1)
        c.publish("t/live", b"q2", qos=2)
        c.publish("t/live", b"q0", qos=0)
    assert c.flush(10)
    st = c._conn.stats()["store"]
    assert st["messages"] == 0 and st["live_bytes"] == 0
    c.disconnect()
    c.loop_stop()


def test_the_log_is_compacted_while_running(tmp_path, quiet_broker):
    c = mqtt.Client(V2, "p1", persistence=str(tmp_path))
    c.connect("127.0.0.1", quiet_broker.listeners["tcp"])
    c.loop_start()
    big = b"x" * (600 * 1024)
    for i in range(60):                 # ~70 MiB through a log compacted from 16 MiB on
        c.publish("t/big", big, qos=1)
    assert c.flush(30)
    st = c._conn.stats()["store"]
    assert st["compactions"] >= 3, st
    assert st["file_bytes"] < 20 * 1024 * 1024, st
    assert os.path.getsize(_log(tmp_path)) == st["file_bytes"]
    c.disconnect()
    c.loop_stop()


def test_fsync_mode_syncs_before_publish_returns(tmp_path, quiet_broker):
    c = mqtt.Client(V2, "p1", persistence=str(tmp_path), persistence_sync="fsync")
    for i in range(20):
        c.publish("t/fsync", b"x", qos=1)
        assert c._conn.stats()["store"]["syncs"] >= i + 1
    c.close()
    pub, got = _deliver(tmp_path, quiet_broker.listeners["tcp"], "t/fsync", 20)
    assert len(got) == 20


# ---- the publisher process killed mid-stream -------------------------------------

def _spawn(mode, directory, client_id, port, qos, face, topic):
    return subprocess.Popen([sys.executable, PUBLISHER, mode, str(directory), client_id, str(port),
                             str(qos), face, topic], stdout=subprocess.PIPE, text=True)


class _Reader:
    """Collects a child's stdout lines on a thread (bounded waits)."""

    def __init__(self, proc):
        self.lines, self._cond = [], threading.Condition()
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(proc,), daemon=True).start()

    def _run(self, proc):
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line.strip())
                self._cond.notify_all()
        self.done.set()

    def accepted(self):
        with self._cond:
            return [int(x[2:]) for x in self.lines if x.startswith("A ")]

    def wait_accepted(self, n, timeout):
        deadline = time.monotonic() + timeout
        with self._cond:
            while len([x for x in self.lines if x.startswith("A ")]) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"the publisher accepted too few messages: {self.lines[-5:]}"
                self._cond.wait(left)


def _persistent_subscriber(port, topic, qos):
    inbox = Inbox()
    sub = mqtt.Client(V2, "sub-" + uuid.uuid4().hex[:8], clean_session=False, protocol=mqtt.MQTTv311)
    sub.on_message = inbox
    sub.connect("127.0.0.1", port)
    sub.subscribe(topic, qos)
    sub.loop_start()
    time.sleep(0.3)
    return sub, inbox


def _drain(directory, client_id, port, qos, face, topic):
    out = subprocess.run([sys.executable, PUBLISHER, "drain", str(directory), client_id, str(port), str(qos),
                          face, topic], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    report = json.loads(next(x for x in lines if x.startswith("R "))[2:])
    assert "DRAINED True" in lines, out.stdout[-500:]
    return report


@pytest.mark.timeout(120)
@pytest.mark.parametrize("face,qos", [("sync", 1), ("sync", 2), ("aio", 1), ("aio", 2)])
@pytest.mark.parametrize("fault", ["streaming", "broker-silent"])
def test_publisher_sigkilled_mid_stream_loses_nothing_after_restart(tmp_path, fresh_broker, unique_topic,
                                                                    face, qos, fault):
    """Every message publish() accepted before the SIGKILL is delivered once
    the publisher runs again with the same directory and client id; QoS 2
    never twice.  "broker-silent": the broker stops answering before the
    kill (a black-holed connection), so the window is in flight, unacked."""
    port = fresh_broker.listeners["tcp"]
    topic = unique_topic + "s"
    cid = "pub-" + uuid.uuid4().hex[:8]
    sub, inbox = _persistent_subscriber(port, topic, qos)
    with FaultProxy("127.0.0.1", port) as proxy:
        proc = _spawn("stream", tmp_path, cid, proxy.port, qos, face, topic)
        reader = _Reader(proc)
        try:
            reader.wait_accepted(1500, 30)
            if fault == "broker-silent":
                assert wait_accepted(proxy, 1, 5)
                proxy.blackhole()
                time.sleep(0.5)     # the window fills, unacknowledged
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        reader.done.wait(5)         # the reader thread took the last lines
        proc.stdout.close()
    accepted = reader.accepted()
    report = _drain(tmp_path, cid, port, qos, face, topic)
    assert report["messages"] > 0 or fault == "streaming"
    if fault == "broker-silent":
        assert report["in_flight"] > 0, report
    want = set(accepted)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = collections.Counter(int(p) for p in inbox.payloads)
        if want <= set(got):
            break
        time.sleep(0.1)
    sub.disconnect()
    sub.loop_stop()
    got = collections.Counter(int(p) for p in inbox.payloads)
    missing = sorted(want - set(got))
    assert not missing, f"lost {len(missing)} of {len(want)} accepted: {missing[:20]} (report {report})"
    duplicated = sorted(n for n, k in got.items() if k > 1)
    if qos == 2:
        assert not duplicated, f"QoS 2 delivered twice: {duplicated[:20]} (report {report})"
    print(f"{face} QoS {qos} {fault}: accepted {len(want)}, restored {report['messages']} "
          f"({report['in_flight']} in flight), duplicates {len(duplicated)}")


# ---- inbound QoS 2 across a restart ------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("persist", [True, False])
def test_inbound_qos2_is_not_delivered_twice_across_a_restart(tmp_path, fresh_broker, unique_topic, persist):
    """MQTT 5 delivers a QoS 2 message on PUBLISH.  A subscriber that got it
    and died before its PUBREC reached the broker gets the PUBLISH again
    (DUP) when it resumes the session; with persistence, paho's stored
    inbound state recognises it and it is not delivered a second time.
    Without persistence it is (the control case, what the store buys)."""
    port = fresh_broker.listeners["tcp"]
    topic = unique_topic + "q2"
    cid = "s2-" + uuid.uuid4().hex[:8]
    kw = {"persistence": str(tmp_path)} if persist else {}
    session = Properties(PacketTypes.CONNECT)
    session.SessionExpiryInterval = 300

    def subscriber(via_port):
        inbox = Inbox()
        c = mqtt.Client(V2, cid, protocol=mqtt.MQTTv5, **kw)
        c.on_message = inbox
        c.connect("127.0.0.1", via_port, clean_start=False, properties=session)
        c.loop_start()
        return c, inbox

    publisher = mqtt.Client(V2, "p-" + uuid.uuid4().hex[:8])
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    with FaultProxy("127.0.0.1", port) as proxy:
        first, inbox = subscriber(proxy.port)
        first.subscribe(topic, 2)
        time.sleep(0.3)
        proxy.blackhole("up")       # the subscriber's PUBREC never reaches the broker
        publisher.publish(topic, b"once", qos=2)
        assert [m.payload for m in inbox.wait(1)] == [b"once"]
        first.loop_stop()
        first.close()               # dies: its DISCONNECT is swallowed too
        proxy.cut()
    second, inbox2 = subscriber(port)   # same client id and directory: the session resumes
    time.sleep(1.0)
    publisher.publish(topic, b"next", qos=2)
    got = [m.payload for m in inbox2.wait(1 if persist else 2)]
    time.sleep(0.3)
    got = inbox2.payloads
    second.disconnect()
    second.loop_stop()
    publisher.disconnect()
    publisher.loop_stop()
    if persist:
        assert got == [b"next"]
    else:
        assert got == [b"once", b"next"]


# ---- the SERMAS face ----------------------------------------------------------------

def test_sermas_client_keeps_offline_events_across_a_restart(tmp_path):
    """SermasClient(persistence=...): events published at QoS 1 before the
    first connect (the platform not reachable yet) survive the process and
    go out after the next start; a store needs a stable mqtt_client_id."""
    import queue

    from sermas_bus import SermasClient
    from sermas_bus.testing import LocalBus
    creds = {"app_id": "myapp", "client_id": "svc", "client_secret": "svc-secret"}
    with pytest.raises(ValueError, match="persistence needs mqtt_client_id"):
        SermasClient("http://127.0.0.1:9", persistence=str(tmp_path), **creds)
    with LocalBus(apps={"myapp": {"clients": {"svc": "svc-secret"}}}, token_ttl=300) as lb:
        first = SermasClient(lb.api_url, mqtt_client_id="durable-svc", persistence=str(tmp_path), **creds)
        for i in range(5):
            first.publish("dialogue.messages", {"sessionId": "s1", "text": f"t{i}"}, qos=1)
        first.close()
        got = queue.Queue()
        with SermasClient(lb.api_url, **creds) as watcher:
            watcher.subscribe("dialogue.messages", lambda event, msg: got.put(event["text"]), qos=1)
            again = SermasClient(lb.api_url, mqtt_client_id="durable-svc", persistence=str(tmp_path), **creds)
            assert again.persistence_report["messages"] == 5
            with again:
                assert [got.get(timeout=10) for _ in range(5)] == [f"t{i}" for i in range(5)]


def test_a_failed_rewrite_after_damage_keeps_the_log(tmp_path):
    """Regression (review): open moved a damaged log aside before the
    rewritten one was in place, so an open that then failed (a full disk)
    left an empty store for the next start.  The log now stays until its
    replacement is written."""
    _publish_offline(tmp_path, [b"m%d" % i + b"x" * 3000 for i in range(20)])
    with open(_log(tmp_path), "ab") as f:
        f.write(REC_MAGIC + b"\x40\x00")     # a torn record at the end
    code = '''
import resource, signal, sys
sys.path.insert(0, %r)
import sermas_bus.client as m
from sermas_bus import errors
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))
try:
    m.Client(m.CallbackAPIVersion.VERSION2, "p1", persistence=%r)
except errors.PersistenceError as e:
    print("refused:", e)
''' % (os.path.dirname(HERE), str(tmp_path))
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=60)
    assert "refused:" in out.stdout and "File too large" in out.stdout, out.stdout + out.stderr
    with pytest.warns(errors.PersistenceRecoveryWarning):
        c = _offline(tmp_path)
    assert c.persistence_report["messages"] == 20
    c.close()


@pytest.mark.timeout(120)
def test_fsync_group_commit_survives_a_compaction(tmp_path, quiet_broker):
    """Regression (review): a committer waiting for a group fdatasync kept a
    file offset from before a compaction and then synced in a loop until as
    many bytes again had been written (publish() hung)."""
    c = mqtt.Client(V2, "p1", persistence=str(tmp_path), persistence_sync="fsync")
    c.connect("127.0.0.1", quiet_broker.listeners["tcp"])
    c.loop_start()
    big = b"x" * (300 * 1024)
    slowest = []

    def run():
        worst = 0.0
        for _ in range(25):
            t = time.monotonic()
            c.publish("t/fsync-big", big, qos=1)
            worst = max(worst, time.monotonic() - t)
        slowest.append(worst)
    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a publish() hung"
    assert c.flush(30)
    assert c._conn.stats()["store"]["compactions"] >= 2
    assert max(slowest) < 5.0, slowest
    c.disconnect()
    c.loop_stop()
    c.close()
