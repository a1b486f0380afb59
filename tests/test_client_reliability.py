"""Reliability tests of ``sermas_bus.client`` against real mosquitto brokers.

Reconnect and resubscribe after a broker crash, fail-over, the MQTT 5 ->
3.1.1 fall-back (with the fake broker), ``wait_for_publish`` outcomes,
threads publishing while callbacks publish, back-pressure, closing under
load, garbage collection and reference counts, interpreter exit, fork.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import select
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import sermas_bus.client as mqtt
from sermas_bus import errors
from sermas_bus.packettypes import PacketTypes
from sermas_bus.properties import Properties
from sermas_bus.subscribeoptions import SubscribeOptions

from fake_broker import FakeBroker
from support import Events, Inbox, free_port, open_fds, wait_until

pytestmark = pytest.mark.timeout(60)

V2 = mqtt.CallbackAPIVersion.VERSION2
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# reconnect, resubscribe, fail-over
# ---------------------------------------------------------------------------

def test_reconnect_and_resubscribe_after_broker_crash(fresh_broker, make_client, unique_topic):
    topic = unique_topic + "resub"
    events = Events()
    inbox = Inbox()
    c = make_client()
    c.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
    c.on_connect = events.recorder("connect")
    c.on_disconnect = events.recorder("disconnect")
    c.on_message = inbox
    c.connect(fresh_broker.url("tcp"))
    c.subscribe(topic, 1)
    c.loop_start()
    events.wait_for("connect", 1)

    pub = make_client()
    pub.connect(fresh_broker.url("tcp"))
    pub.publish(topic, b"before", 1).wait_for_publish(5)
    inbox.wait(1)

    fresh_broker.kill()
    (_, _, flags, reason, _), = events.wait_for("disconnect", 1, timeout=10)
    assert reason.is_failure, reason
    assert not c.is_connected()

    fresh_broker.restart()          # same ports, no persistence: the session is gone
    events.wait_for("connect", 2, timeout=15)
    wait_until(c.is_connected, 5, "is_connected()")
    second_connect = events.wait_for("connect", 2)[1]
    assert second_connect[2].session_present is False

    # the test does not subscribe again: the client restored the subscription
    pub2 = make_client()
    pub2.connect(fresh_broker.url("tcp"))
    pub2.publish(topic, b"after", 1).wait_for_publish(5)
    inbox.wait(2, timeout=10)
    assert inbox.payloads == [b"before", b"after"]
    assert events.count("disconnect") == 1
    # and the reconnected client publishes normally
    c.publish(topic, b"own", 1).wait_for_publish(5)
    inbox.wait(3)


def test_reconnect_keeps_resubscribing_after_repeated_crashes(fresh_broker, make_client, unique_topic):
    topic = unique_topic + "again"
    events = Events()
    inbox = Inbox()
    c = make_client()
    c.reconnect_delay_set(0.1, 0.3)
    c.on_connect = events.recorder("connect")
    c.on_message = inbox
    c.connect(fresh_broker.url("tcp"))
    c.subscribe(topic, 1)
    c.loop_start()
    for n in range(2):
        fresh_broker.kill()
        fresh_broker.restart()
        events.wait_for("connect", n + 2, timeout=15)
    pub = make_client()
    pub.connect(fresh_broker.url("tcp"))
    pub.publish(topic, b"x", 1).wait_for_publish(5)
    inbox.wait(1, timeout=10)


@pytest.mark.parametrize("live_kind", ["tcp", "ws"])
def test_fail_over_to_the_next_url(broker, make_client, unique_topic, live_kind):
    dead_url = "tcp://127.0.0.1:{}".format(free_port())
    events = Events()
    c = make_client()
    c.on_connect = events.recorder("connect")
    c.connect([dead_url, broker.url(live_kind)])
    assert c.is_connected()
    inbox = Inbox()
    c.on_message = inbox
    c.subscribe(unique_topic + "failover", 1)
    c.loop_start()
    events.wait_for("connect", 1)
    c.publish(unique_topic + "failover", b"ok", 1).wait_for_publish(5)
    assert inbox.wait(1)[0].payload == b"ok"


def test_fail_over_all_dead_raises_connect_error(make_client):
    c = make_client()
    urls = ["tcp://127.0.0.1:{}".format(free_port()), "tcp://127.0.0.1:{}".format(free_port())]
    with pytest.raises(errors.ConnectError):
        c.connect(urls)
    assert not c.is_connected()


# ---------------------------------------------------------------------------
# MQTT 5 -> 3.1.1 fall-back (fake broker that refuses MQTT 5)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("refusal", [
    "v5",
    "v311",
])
def test_falls_back_to_mqtt311_when_v5_refused(make_client, refusal):
    with FakeBroker(refuse_v5=True, refusal=refusal) as fb:
        c = make_client()
        assert c.connect("127.0.0.1", fb.port) == mqtt.MQTT_ERR_SUCCESS
        assert c.is_connected()
        assert c.protocol == mqtt.MQTTv311 == 4
        assert [p.protocol_level for p in fb.connects] == [5, 4]

        # what 3.1.1 cannot express is refused, not silently dropped
        with pytest.raises(errors.ProtocolError, match="noLocal"):
            c.subscribe("t/a", options=SubscribeOptions(qos=1, noLocal=True))
        with pytest.raises(errors.ProtocolError):
            c.subscribe("t/a", options=SubscribeOptions(qos=1, retainAsPublished=True))
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "text/plain"
        with pytest.raises(errors.ProtocolError):
            c.publish("t/a", b"x", 1, properties=props)
        assert not fb.received("SUBSCRIBE")

        # plain 3.1.1 use works
        rc, mid = c.subscribe("t/a", 1)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        c.publish("t/a", b"x", 1).wait_for_publish(5)
        subs = fb.wait_for("SUBSCRIBE")
        assert subs[0].conn == 1      # the second (3.1.1) connection


def test_explicit_mqttv5_refusal_raises_protocol_version_error(make_client):
    with FakeBroker(refuse_v5=True) as fb:
        c = make_client(protocol=mqtt.MQTTv5)
        codes = []
        c.on_connect = lambda client, userdata, flags, rc, props: codes.append(rc)
        c.connect("127.0.0.1", fb.port)      # reported through on_connect, as in paho
        err = c.last_connect_error
        assert isinstance(err, errors.ProtocolVersionError)
        assert isinstance(err, errors.ConnectError)
        assert "MQTTv311" in str(err)
        assert not c.is_connected()
        c.loop(0.2)
        assert [int(rc.value) for rc in codes] == [0x84]
        time.sleep(0.1)
        assert [p.protocol_level for p in fb.connects] == [5]


def test_forced_mqttv311(make_client, broker):
    with FakeBroker(refuse_v5=False) as fb:
        c = make_client(protocol=mqtt.MQTTv311)
        c.connect("127.0.0.1", fb.port)
        assert c.protocol == 4
        assert [p.protocol_level for p in fb.connects] == [4]
    # against mosquitto (which speaks 5): still 3.1.1, and noLocal refused
    c = make_client(protocol=mqtt.MQTTv311)
    c.connect(broker.url("tcp"))
    assert c.protocol == 4
    with pytest.raises(errors.ProtocolError):
        c.subscribe("t/b", options=SubscribeOptions(qos=1, noLocal=True))


def test_default_client_speaks_v5_to_a_v5_broker(make_client):
    with FakeBroker(refuse_v5=False) as fb:
        c = make_client()
        c.connect("127.0.0.1", fb.port)
        assert c.protocol == 5
        assert [p.protocol_level for p in fb.connects] == [5]
        c.subscribe("t/c", options=SubscribeOptions(qos=1, noLocal=True))
        sub = fb.wait_for("SUBSCRIBE")[0]
        assert sub.body.endswith(b"t/c" + bytes([0x01 | 0x04]))   # QoS 1 + noLocal bit


@pytest.mark.parametrize("request_kind", ["SUBSCRIBE", "UNSUBSCRIBE"])
def test_request_ends_promptly_when_the_broker_drops_mid_request(make_client, request_kind):
    """Regression: paho.mqtt.c's subscribe waits for the SUBACK until its 10 s
    command time-out even after the connection is gone (we measured 10.2 s).
    The caller now gets its answer when the connection goes: the subscription
    stays registered and is sent again after the reconnect."""
    with FakeBroker(refuse_v5=False, drop_on={request_kind: 1}) as fb:
        c = make_client()
        c.reconnect_delay_set(0.05, 0.1)
        c.connect("127.0.0.1", fb.port)
        c.loop_start()
        if request_kind == "UNSUBSCRIBE":
            assert c.subscribe("t/keep", 1)[0] == mqtt.MQTT_ERR_SUCCESS
        t0 = time.monotonic()
        if request_kind == "SUBSCRIBE":
            rc, mid = c.subscribe("t/drop", 1)
        else:
            rc, mid = c.unsubscribe("t/keep")
        elapsed = time.monotonic() - t0
        assert elapsed < 2.0, f"{request_kind} took {elapsed:.1f} s after the broker dropped"
        assert (rc, mid) == (mqtt.MQTT_ERR_NO_CONN, None)
        # reconnects (once paho's stale wait has ended) and restores what is
        # registered: the dropped subscribe; not the unsubscribed filter
        fb.wait_for("CONNECT", count=2, timeout=20)
        wait_until(c.is_connected, 10, "reconnected")
        if request_kind == "SUBSCRIBE":
            subs = fb.wait_for("SUBSCRIBE", count=2, timeout=10)
            assert b"t/drop" in subs[-1].body
        else:
            time.sleep(0.3)
            assert len(fb.received("SUBSCRIBE")) == 1


def test_subscription_made_offline_is_sent_when_the_session_was_kept(fresh_broker, make_client, unique_topic):
    """Regression: a subscription made while disconnected was only sent by
    the restore after a connect *without* a session; a broker that kept the
    session never got it.  (MQTT 3.1.1: paho.mqtt.c reports session present
    only there; on MQTT 5 every reconnect restores all subscriptions.)"""
    c = make_client(client_id=f"kept-{os.getpid()}", protocol=mqtt.MQTTv311, clean_session=False)
    inbox = Inbox()
    c.on_message = inbox
    sessions = []
    c.on_connect = lambda client, userdata, flags, rc, props: sessions.append(flags.session_present)
    c.reconnect_delay_set(0.05, 0.2)
    c.connect(fresh_broker.host, fresh_broker.port)
    c.subscribe(unique_topic + "/first", 1)
    c.loop_start()
    c.disconnect()
    c.loop_stop()
    assert not c.is_connected()
    c.subscribe(unique_topic + "/later", 1)        # offline: kept for the connect
    c.reconnect()
    c.loop_start()
    wait_until(lambda: len(sessions) == 2, 10, "reconnected")
    assert sessions == [False, True]               # the broker kept the session
    pub = make_client()
    pub.connect(fresh_broker.host, fresh_broker.port)
    pub.publish(unique_topic + "/later", b"x", qos=1).wait_for_publish(5)
    assert [m.topic for m in inbox.wait(1, 5)] == [unique_topic + "/later"]


def test_restore_on_mqtt5_does_not_resend_retained_messages(broker, make_client, unique_topic):
    """Regression: paho.mqtt.c never reports "session present" on MQTT 5, so
    every reconnect restores the subscriptions; with retain handling 0 the
    broker sent the retained message again on each one (token refreshes
    too).  Restores now ask for retained messages only for new subscriptions."""
    pub = make_client()
    pub.connect(broker.host, broker.port)
    pub.publish(unique_topic, b"retained", qos=1, retain=True).wait_for_publish(5)
    c = make_client(client_id=f"rh-{os.getpid()}")
    inbox = Inbox()
    c.on_message = inbox
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 60
    c.connect(broker.host, broker.port, clean_start=False, properties=props)
    c.loop_start()
    c.subscribe(unique_topic, 1)
    inbox.wait(1, 5)
    c.reauthenticate(None)               # disconnect + connect, the broker keeps the session
    pub.publish(unique_topic, b"live", qos=1).wait_for_publish(5)
    got = inbox.wait(2, 5)
    time.sleep(0.3)
    assert [m.payload for m in inbox.messages] == [b"retained", b"live"], got
    pub.publish(unique_topic, b"", qos=1, retain=True).wait_for_publish(5)


# ---------------------------------------------------------------------------
# wait_for_publish
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("qos", [0, 1, 2])
def test_wait_for_publish_success_is_fast(broker, make_client, unique_topic, qos):
    c = make_client()
    c.connect(broker.url("tcp"))
    c.publish(unique_topic + "warm", b"w", 1).wait_for_publish(5)
    started = time.monotonic()
    info = c.publish(unique_topic + "fast", b"x", qos)
    info.wait_for_publish(5)
    elapsed = time.monotonic() - started
    assert info.is_published()
    assert elapsed < 0.5, elapsed
    # a second wait returns at once
    info.wait_for_publish(0)


def test_wait_for_publish_times_out_when_broker_is_stopped(fresh_broker, make_client, unique_topic):
    c = make_client()
    c.connect(fresh_broker.url("tcp"))
    c.loop_start()
    pid = fresh_broker.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        info = c.publish(unique_topic + "stopped", b"x", 1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        started = time.monotonic()
        with pytest.raises(errors.TimeoutError) as ei:
            info.wait_for_publish(0.5)
        elapsed = time.monotonic() - started
        assert 0.45 <= elapsed < 2, elapsed
        assert isinstance(ei.value, TimeoutError)     # also the builtin
        assert str(info.mid) in str(ei.value)
        assert not info.is_published()
    finally:
        os.kill(pid, signal.SIGCONT)
    # the broker wakes up and acknowledges: the same info completes
    info.wait_for_publish(5)
    assert info.is_published()


# What happens to a publish across an outage, before the first connect and
# at close(): tests/test_outbox.py.


# ---------------------------------------------------------------------------
# concurrency
# ---------------------------------------------------------------------------

@pytest.mark.timeout(150)
def test_threads_publish_while_on_message_publishes(quiet_broker, make_client, unique_topic):
    n_threads, per_thread = 8, 2000
    total = n_threads * per_thread
    in_prefix, echo_prefix = unique_topic + "in/", unique_topic + "echo/"

    received = collections.defaultdict(list)     # thread -> seq as received by a
    echoes = collections.defaultdict(list)       # thread -> seq as received by b
    echo_errors = []
    lock = threading.Lock()
    done_a, done_b = threading.Event(), threading.Event()
    counts = {"a": 0, "b": 0}

    def on_message_a(client, userdata, msg):
        t, seq = msg.payload.split(b":")
        info = client.publish(echo_prefix + t.decode(), msg.payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            echo_errors.append(info.rc)
        with lock:
            received[int(t)].append(int(seq))
            counts["a"] += 1
            if counts["a"] == total:
                done_a.set()

    def on_message_b(client, userdata, msg):
        t, seq = msg.payload.split(b":")
        with lock:
            echoes[int(t)].append(int(seq))
            counts["b"] += 1
            if counts["b"] == total:
                done_b.set()

    b = make_client()
    b.on_message = on_message_b
    b.connect(quiet_broker.url("tcp"))
    b.subscribe(echo_prefix + "#", 1)
    b.loop_start()

    a = make_client()
    a.on_message = on_message_a
    a.connect(quiet_broker.url("tcp"))
    a.subscribe(in_prefix + "#", 1)
    a.loop_start()

    publish_errors = []

    def publisher(t):
        last = None
        try:
            for seq in range(per_thread):
                last = a.publish("{}{}".format(in_prefix, t), "{}:{}".format(t, seq).encode(), qos=1)
                if last.rc != mqtt.MQTT_ERR_SUCCESS:
                    publish_errors.append((t, seq, last.rc))
            last.wait_for_publish(60)
        except Exception as exc:
            publish_errors.append((t, exc))

    started = time.monotonic()
    threads = [threading.Thread(target=publisher, args=(t,), daemon=True) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "publisher threads stuck: deadlock? stats {}".format(
        a.stats())
    assert done_a.wait(60), "a got {} of {}; stats {}".format(counts["a"], total, a.stats())
    assert done_b.wait(60), "b got {} of {}; stats a {} b {}".format(counts["b"], total, a.stats(), b.stats())
    elapsed = time.monotonic() - started
    assert publish_errors == [] and echo_errors == []
    time.sleep(0.2)   # anything extra (duplicates) would show up now
    with lock:
        assert counts == {"a": total, "b": total}
        for t in range(n_threads):
            # exactly once, and in each publisher's order
            assert received[t] == list(range(per_thread)), t
            assert echoes[t] == list(range(per_thread)), t
    print("{} + {} echoed QoS 1 messages in {:.1f} s".format(total, total, elapsed))


@pytest.mark.timeout(90)
def test_back_pressure_bounds_the_queue_and_loses_nothing(quiet_broker, make_client, unique_topic):
    topic = unique_topic + "bp"
    n = 5000
    bound = 100
    got = []
    samples = []
    backlog = []
    done = threading.Event()

    def on_message(client, userdata, msg):
        stats = client.stats()
        samples.append(stats["queued"])
        # received by the C core but not yet handed to on_message: the queue
        # plus the rest of the batch the loop is working through
        backlog.append(stats["messages_in"] - len(got))
        got.append(int(msg.payload))
        if len(got) < 1000:
            time.sleep(0.0005)      # slow at first: the queue fills up
        if len(got) == n:
            done.set()

    sub = make_client(queue_max=bound)
    sub.on_message = on_message
    sub.connect(quiet_broker.url("tcp"))
    sub.subscribe(topic, 1)
    sub.loop_start()
    assert sub.stats()["queue_max"] == bound

    pub = make_client()
    pub.connect(quiet_broker.url("tcp"))
    last = None
    for i in range(n):
        last = pub.publish(topic, str(i), 1)
    last.wait_for_publish(30)
    assert done.wait(60), "received {} of {}; stats {}".format(len(got), n, sub.stats())
    stats = sub.stats()
    assert got == list(range(n))
    assert stats["messages_in"] == n
    assert stats["producer_waits"] > 0, stats
    assert max(samples) <= bound + 5, max(samples)
    assert max(samples) >= bound // 2, "the queue never filled: the test proves nothing"
    assert max(backlog) <= 2 * bound + 1, max(backlog)
    assert stats["queued"] == 0


@pytest.mark.timeout(120)
def test_close_and_disconnect_under_load(quiet_broker, make_client, unique_topic):
    topic = unique_topic + "flood"
    flooder = make_client()
    flooder.connect(quiet_broker.url("tcp"))
    stop = threading.Event()
    flood_errors = []
    flood_count = [0]

    def flood():
        payload = b"x" * 200
        while not stop.is_set():
            info = flooder.publish(topic, payload, qos=1 if flood_count[0] % 2 else 0)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                flood_errors.append(info.rc)
                return
            flood_count[0] += 1

    baseline_threads = threading.active_count()
    baseline_fds = None
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        modes = ["close", "disconnect-then-close", "close-backpressured", "close-no-loop"]
        for i in range(20):
            mode = modes[i % len(modes)]
            got = [0]
            slow = mode == "close-backpressured"

            def make_on_message(got, slow):
                def on_message(client, userdata, msg):
                    got[0] += 1
                    if slow:
                        time.sleep(0.002)
                return on_message

            on_message = make_on_message(got, slow)

            c = mqtt.Client(V2, queue_max=20) if slow else mqtt.Client(V2)
            c.on_message = on_message
            c.connect(quiet_broker.url("tcp"))
            c.subscribe(topic, 1)
            if mode == "close-no-loop":
                wait_until(lambda: c.stats()["messages_in"] >= 50, 10, "messages to arrive")
            else:
                c.loop_start()
                wait_until(lambda: got[0] >= 50, 10, "messages to arrive")
            if baseline_fds is None:
                c.close()
                baseline_fds = open_fds()
                continue
            started = time.monotonic()
            if mode == "disconnect-then-close":
                assert c.disconnect() == mqtt.MQTT_ERR_SUCCESS
                assert time.monotonic() - started < 3, "disconnect() took {:.1f} s".format(
                    time.monotonic() - started)
                assert not c.is_connected()
            c.close()
            elapsed = time.monotonic() - started
            assert elapsed < 3, "{} took {:.1f} s (iteration {})".format(mode, elapsed, i)
            assert not c.is_connected()
            assert c._thread is None
            del c
        assert t.is_alive() and not flood_errors, flood_errors
    finally:
        stop.set()
        t.join(10)
    # the process is healthy: no leftover threads or descriptors, clients still work
    gc.collect()
    wait_until(lambda: threading.active_count() <= baseline_threads, 5, "loop threads to end")
    assert open_fds() <= baseline_fds + 2, (baseline_fds, open_fds())
    check = make_client()
    check.connect(quiet_broker.url("tcp"))
    check.subscribe(unique_topic + "after", 1)
    check.publish(unique_topic + "after", b"fine", 1).wait_for_publish(5)
    assert [m.payload for m in check.messages(timeout=5, max_messages=1)] == [b"fine"]


@pytest.mark.timeout(120)
def test_close_while_paho_waits_in_our_message_callback(quiet_broker, make_client, unique_topic):
    """paho's receive thread runs our messageArrived with its mutex released
    and, once we return, goes on using the handle (it removes the message
    from the handle's queue).  A close() that destroys the handle in that
    window made paho write into freed memory, which later crashed its
    receive thread walking its list of handles (seen once per few full
    runs; under ASan a heap-use-after-free in MQTTClient_run).  Here the
    receive thread is parked in our callback (the subscriber's queue is
    full, nobody consumes) when close() runs, over and over."""
    topic = unique_topic + "parked"
    flooder = make_client()
    flooder.connect(quiet_broker.url("tcp"))
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            if flooder.publish(topic, b"x" * 64, qos=0).rc != mqtt.MQTT_ERR_SUCCESS:
                return
            time.sleep(0.0001)

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    parked = 0
    try:
        for _ in range(40):
            if time.monotonic() > deadline:
                break
            c = mqtt.Client(V2, queue_max=4)
            c.connect(quiet_broker.url("tcp"))
            c.subscribe(topic, 0)
            # no loop: the queue fills and paho's thread waits in our callback
            wait_until(lambda: c.stats()["producer_waits"] > 0, 5, "a parked receive thread")
            parked += 1
            c.close()
            del c
        assert t.is_alive(), "the flooder stopped"
    finally:
        stop.set()
        t.join(10)
    assert parked >= 10, "the receive thread was parked in only {} closes".format(parked)
    # paho is healthy: a new client still connects, publishes and receives
    check = make_client()
    check.connect(quiet_broker.url("tcp"))
    check.subscribe(unique_topic + "after", 1)
    check.publish(unique_topic + "after", b"fine", 1).wait_for_publish(5)
    assert [m.payload for m in check.messages(timeout=5, max_messages=1)] == [b"fine"]


@pytest.mark.timeout(60)
def test_close_stops_delivery_promptly_with_a_slow_callback(broker, make_client, unique_topic):
    topic = unique_topic + "slowclose"
    calls = []
    c = make_client()
    c.on_message = lambda client, userdata, msg: (calls.append(msg.payload), time.sleep(0.1))
    c.connect(broker.url("tcp"))
    c.subscribe(topic, 1)
    pub = make_client()
    pub.connect(broker.url("tcp"))
    for i in range(30):
        pub.publish(topic, str(i), 1)
    wait_until(lambda: c.stats()["messages_in"] == 30, 10, "30 queued messages")
    c.loop_start()
    wait_until(lambda: calls, 5, "the first callback")
    started = time.monotonic()
    c.close()
    elapsed = time.monotonic() - started
    delivered = len(calls)
    assert elapsed < 1.0, "close() took {:.1f} s and let {} more callbacks run".format(elapsed, delivered - 1)
    assert delivered <= 3


# ---------------------------------------------------------------------------
# memory: garbage collection and reference counts
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["close-with-loop", "close-then-del-during-traffic", "del-without-close-no-loop"])
def test_client_is_garbage_collected(broker, unique_topic, how):
    topic = unique_topic + "gc"
    c = mqtt.Client(V2, userdata={"big": bytearray(1024)})
    got = []
    # a reference cycle: the callback refers to the client
    c.on_message = lambda client, userdata, msg: got.append((c, msg))
    c.connect(broker.url("tcp"))
    c.subscribe(topic, 1)
    if how != "del-without-close-no-loop":
        c.loop_start()
        c.publish(topic, b"x", 1).wait_for_publish(5)
        wait_until(lambda: got, 5, "a message")
    if how == "close-then-del-during-traffic":
        for _ in range(50):
            c.publish(topic, b"y", 0)
    conn_ref = weakref.ref(c._conn)
    ref = weakref.ref(c)
    if how != "del-without-close-no-loop":
        c.close()
    del c, got
    gc.collect()
    assert ref() is None, gc.get_referrers(ref())
    assert conn_ref() is None


def _refcounts(*objs):
    gc.collect()
    return [sys.getrefcount(o) for o in objs]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("route", ["on_message", "message_callback_add"])
def test_reference_counts_are_stable(broker, make_client, unique_topic, route):
    topic = unique_topic + "refs"
    n = 10000
    userdata = object()
    payload = os.urandom(64)
    received = [0]
    done = threading.Event()

    def callback(client, userdata_, msg):
        received[0] += 1
        if received[0] == n:
            done.set()

    c = make_client(userdata=userdata)
    if route == "on_message":
        c.on_message = callback
    else:
        c.message_callback_add(topic, callback)
    c.on_publish = lambda client, ud, mid, rc, props: None
    c.connect(broker.url("tcp"))
    c.subscribe(topic, 1)
    before = _refcounts(callback, userdata, payload)

    c.loop_start()
    for i in range(n):
        info = c.publish(topic, payload, qos=1 if i % 10 == 0 else 0)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
    info.wait_for_publish(10)
    assert done.wait(60), "received {} of {}".format(received[0], n)
    c.loop_stop()
    del info
    assert _refcounts(callback, userdata, payload) == before

    # error paths keep nothing either
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "x"
    for _ in range(1000):
        for bad in (lambda: c.publish("a/+", payload, 1),
                    lambda: c.publish(topic, payload, 3),
                    lambda: c.publish(b"\xff\xfe", payload, 0),
                    lambda: c.publish("", payload, 0),
                    lambda: c.publish(topic, {"p": payload}, 0),
                    lambda: c.publish(topic, payload, 0, properties=payload),
                    lambda: c.subscribe("a/#/b", 1),
                    lambda: c.message_callback_add("a/#/b", callback)):
            try:
                bad()
            except (ValueError, TypeError, AttributeError):   # the type is checked elsewhere
                pass
            else:
                raise AssertionError("no error")
    assert _refcounts(callback, userdata, payload) == before

    c.close()
    for _ in range(1000):
        try:
            c.publish(topic, payload, 1, properties=props)
        except errors.ClosedError:
            pass
        else:
            raise AssertionError("no ClosedError")
    assert _refcounts(callback, userdata, payload) == before


# ---------------------------------------------------------------------------
# interpreter exit
# ---------------------------------------------------------------------------

EXIT_SCRIPT = textwrap.dedent('''
    import sys, threading, time
    import sermas_bus.client as mqtt
    from sermas_bus import errors

    url, topic, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    got = threading.Event()
    count = [0]

    def on_message(client, userdata, msg):
        count[0] += 1
        if count[0] >= (2 if mode == "slow-callback-backlog" else 20):
            got.set()
        if mode == "backpressured":
            time.sleep(0.001)
        elif mode == "slow-callback-backlog":
            time.sleep(0.2)

    # backpressured: paho's receive thread waits for room at exit
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, queue_max=5 if mode == "backpressured" else 10000)
    c.on_message = on_message
    c.connect(url)
    c.subscribe(topic, 1)
    if mode == "slow-callback-backlog":
        # a backlog waits when the loop starts
        deadline = time.monotonic() + 10
        while c.stats()["messages_in"] < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
    c.loop_start()

    if mode == "publisher-thread":
        def publish_forever():
            try:
                while True:
                    c.publish(topic + "/own", b"x" * 100, qos=1)
            except errors.SermasBusError:
                pass       # closed by the exit hook
        threading.Thread(target=publish_forever, daemon=True).start()

    if not got.wait(20):
        print("no messages", file=sys.stderr)
        sys.exit(3)
    print("exiting with", count[0], "messages", flush=True)
    # no close(), no loop_stop(): just leave
''')


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", [
    "plain", "backpressured", "publisher-thread",
    "slow-callback-backlog",
])
def test_interpreter_exit_with_open_client(quiet_broker, make_client, unique_topic, tmp_path, mode):
    topic = unique_topic + "exit"
    script = tmp_path / "exit_script.py"
    script.write_text(EXIT_SCRIPT)
    flooder = make_client()
    flooder.connect(quiet_broker.url("tcp"))
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            flooder.publish(topic, b"m" * 100, qos=1)

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONFAULTHANDLER="1")
    try:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, str(script), quiet_broker.url("tcp"), topic, mode],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, timeout=15)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        t.join(10)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, (proc.returncode, out, err)
    assert "exiting with" in out
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    assert elapsed < 15


# ---------------------------------------------------------------------------
# fork
# ---------------------------------------------------------------------------

def run_in_child(func, timeout=20.0):
    """fork(); run func() in the child and return its JSON-able result, or
    {"hung": True} if the child did not finish in time (it is then killed)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: never return into pytest
        code = 0
        try:
            os.close(r)
            try:
                result = func()
            except BaseException as exc:   # report anything
                result = {"child exception": "{}: {}".format(type(exc).__name__, exc)}
            os.write(w, json.dumps(result).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([r], [], [], max(0.0, left))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"hung": True, "partial": data.decode(errors="replace")}
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    return json.loads(data.decode())


def _attempt(results, name, func):
    try:
        results[name] = "returned {!r}".format(func())
    except errors.ForkError:
        results[name] = "ForkError"
    except Exception as exc:
        results[name] = "{}: {}".format(type(exc).__name__, exc)


@pytest.fixture
def parent_client(broker, make_client, unique_topic):
    topic = unique_topic + "fork"
    inbox = Inbox()
    c = make_client()
    c.on_message = inbox
    c.connect(broker.url("tcp"))
    c.subscribe(topic, 1)
    c.loop_start()
    c.publish(topic, b"before-fork", 1).wait_for_publish(5)
    inbox.wait(1)
    return c, inbox, topic


def _parent_still_works(c, inbox, topic):
    assert c.is_connected()
    n = len(inbox.payloads)
    c.publish(topic, b"after-fork", 1).wait_for_publish(5)
    assert inbox.wait(n + 1)[-1].payload == b"after-fork"


def test_fork_child_cannot_use_the_parents_client(parent_client):
    c, inbox, topic = parent_client

    def child():
        results = {}
        _attempt(results, "publish", lambda: c.publish(topic, b"from-child", 1))
        _attempt(results, "connect", lambda: c.connect("127.0.0.1", 1883))
        _attempt(results, "reconnect", lambda: c.reconnect())
        # must not touch the parent's connection (they share the socket)
        _attempt(results, "disconnect", lambda: c.disconnect())
        _attempt(results, "close", lambda: c.close())
        return results

    results = run_in_child(child)
    assert results.get("hung") is None, results
    assert results["publish"] == "ForkError"
    assert results["connect"] == "ForkError"
    assert results["reconnect"] == "ForkError"
    assert not results["disconnect"].startswith(("Traceback", "ConnectionError"))
    # the parent keeps working, and saw nothing from the child
    _parent_still_works(c, inbox, topic)
    assert b"from-child" not in inbox.payloads


def test_fork_child_gets_fork_error_from_every_operation(parent_client):
    c, inbox, topic = parent_client

    def child():
        results = {}
        _attempt(results, "subscribe", lambda: c.subscribe(topic + "/x", 1))
        _attempt(results, "unsubscribe", lambda: c.unsubscribe(topic))
        _attempt(results, "loop", lambda: c.loop(0.1))
        return results

    results = run_in_child(child, timeout=3)
    _parent_still_works(c, inbox, topic)
    assert results == {"subscribe": "ForkError", "unsubscribe": "ForkError", "loop": "ForkError"}


def test_fork_parent_keeps_working_while_child_exits(parent_client):
    c, inbox, topic = parent_client
    results = run_in_child(lambda: {"ok": True})
    assert results == {"ok": True}
    _parent_still_works(c, inbox, topic)


def test_fork_child_of_a_connected_parent_gets_a_clear_error(broker, parent_client):
    """paho.mqtt.c's process-wide state (receive thread, locks) cannot survive
    fork() while a connection is open: a new client in such a child must fail
    at once with ForkError saying what to do, not time out or hang."""
    c, inbox, topic = parent_client
    url = broker.url("tcp")

    def child():
        fresh = mqtt.Client(V2)
        fresh.connect_timeout_set(3)
        start = time.monotonic()
        try:
            fresh.connect(url)
            return {"connected": True}
        except errors.ForkError as exc:
            return {"error": "ForkError", "spawn": "spawn" in str(exc), "fast": time.monotonic() - start < 1}
        finally:
            fresh.close()

    results = run_in_child(child, timeout=8)
    assert results == {"error": "ForkError", "spawn": True, "fast": True}
    _parent_still_works(c, inbox, topic)


def test_fork_before_connecting_child_can_use_a_new_client(broker, tmp_path):
    """Forking while no connection is open is fine: the child connects,
    publishes and receives.  Run in a fresh interpreter, so that no other
    test's connection is open at fork time."""
    script = tmp_path / "fork_child.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        import sermas_bus.client as mqtt
        warm = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        warm.connect({broker.url("tcp")!r}); warm.close()       # paho was used, then let go
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
                c.connect({broker.url("tcp")!r})
                c.subscribe("fork-test/child", 1)
                c.publish("fork-test/child", b"child-ok", 1).wait_for_publish(5)
                got = [m.payload for m in c.messages(timeout=5, max_messages=1)]
                c.close()
                code = 0 if got == [b"child-ok"] else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.timeout(60)
def test_a_full_queue_in_one_client_does_not_deadlock_another(quiet_broker, make_client, unique_topic):
    """paho.mqtt.c has ONE receive thread per process.  A client whose inbound
    queue is full (its loop not running) must not stop another client of the
    same process from getting its PUBACKs: the writer's window wait would
    otherwise hang for ever.  Nothing is lost for the reader either."""
    topic = unique_topic + "shared-thread"
    reader = make_client(queue_max=50)
    reader.connect(quiet_broker.url("tcp"))
    reader.subscribe(topic, 1)                       # no loop: its queue fills up
    writer = make_client()
    writer.connect(quiet_broker.url("tcp"))
    infos = [writer.publish(topic, b"%d" % i, qos=1) for i in range(300)]
    for info in infos:
        info.wait_for_publish(10)                    # hung here before the fix
    got = [int(m.payload) for m in reader.messages(timeout=5, max_messages=300)]
    assert got == list(range(300))


@pytest.mark.timeout(120)
def test_close_while_other_threads_publish(quiet_broker, unique_topic):
    """close() destroys paho's handle only after every thread has left its
    paho call: publishers racing close() get ClosedError or MQTT_ERR_NO_CONN,
    never a crash; repeated, at QoS 0 and 1."""
    for round_ in range(10):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.connect(quiet_broker.url("tcp"))
        outcomes = collections.Counter()
        start = threading.Barrier(4)

        def publisher(qos):
            start.wait()
            for i in range(100000):
                try:
                    info = c.publish(unique_topic + "race", b"x" * 64, qos=qos)
                except errors.ClosedError:
                    outcomes["closed"] += 1
                    return
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    outcomes["no_conn"] += 1
                    return
            outcomes["finished"] += 1

        threads = [threading.Thread(target=publisher, args=(q,)) for q in (0, 1, 1)]
        for t in threads:
            t.start()
        start.wait()
        time.sleep(0.05 + 0.02 * round_)
        c.close()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        assert sum(outcomes.values()) == 3, outcomes


@pytest.mark.timeout(120)
def test_close_racing_reconnect_never_hangs(quiet_broker):
    """Regression: close() disconnected under another thread's paho connect,
    which then waited for ever (and close() with it): hung within ~20 tries."""
    url = quiet_broker.url("tcp")
    for i in range(25):
        c = mqtt.Client(V2)
        c.connect(url)

        def reconnect_loop():
            for _ in range(5):
                try:
                    c.reconnect()
                except (errors.ClosedError, errors.ConnectError):
                    return

        t = threading.Thread(target=reconnect_loop, daemon=True)
        t.start()
        time.sleep(0.01 * (i % 7))
        closed = threading.Event()
        threading.Thread(target=lambda: (c.close(), closed.set()), daemon=True).start()
        assert closed.wait(20), f"close() hung at iteration {i}"
        t.join(20)
        assert not t.is_alive(), f"reconnect() hung at iteration {i}"
        assert c.protocol == mqtt.MQTTv5, "a connect cut short by close() made the client fall back"


def test_a_user_property_that_is_not_utf8_still_delivers_the_message(make_client):
    """Regression (found by the properties fuzzer): a received UserProperty
    whose bytes are not UTF-8 made the properties conversion raise, so the
    message could not be delivered.  It is decoded with U+FFFD, like the
    other string properties, and the message arrives."""
    from fake_broker import build_packet, encode_remaining_length
    topic = b"t/bad-utf8"
    user = bytes([0x26]) + b"\x00\x01k" + b"\x00\x02\xff\xfe"      # UserProperty ("k", b"\xff\xfe")
    props = encode_remaining_length(len(user)) + user
    publish = build_packet(3, 0, struct.pack("!H", len(topic)) + topic + props + b"payload")
    with FakeBroker(refuse_v5=False, after_suback=publish) as fb:
        inbox = Inbox()
        c = make_client()
        c.on_message = inbox
        c.connect("127.0.0.1", fb.port)
        c.loop_start()
        c.subscribe("t/#", 0)
        (m,) = inbox.wait(1)
        assert m.payload == b"payload"
        assert m.properties.UserProperty == [("k", "\ufffd\ufffd")]
