"""Fault injection on the network path and the broker: a QoS 1 stream keeps
every message through a cut connection, a black hole (no RST, found by the
keep-alive), a slow link, a packet cut in half, and a frozen broker (SIGSTOP
longer than the keep-alive).  The publisher goes through tests/fault_proxy.py;
the subscriber talks to the broker directly.  QoS 1 may duplicate; nothing
may be lost."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from fault_proxy import FaultProxy, wait_accepted
from support import UNDER_ASAN, Inbox, wait_until

RATE = 1000          # messages per second
SECONDS = 3.0        # of stream
KEEPALIVE = 2        # s: a black hole is found within ~2-3 of these


def _subscriber(make_client, broker, topic):
    inbox = Inbox()
    sub = make_client()
    sub.on_message = inbox
    sub.connect(broker.host, broker.port)        # keep-alive 60 s: rides out a 5 s freeze
    sub.subscribe(topic, 1)
    sub.loop_start()
    return inbox


def _stream(publish, n, rate=RATE):
    """Publish n numbered messages at `rate`/s on a thread; returns it."""
    def run():
        start = time.monotonic()
        for i in range(n):
            ahead = start + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            publish(i)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _assert_all_arrived(inbox, n, timeout=30):
    deadline = time.monotonic() + timeout
    while len({m.payload for m in inbox.messages}) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    got = {int(m.payload) for m in inbox.messages}
    lost = sorted(set(range(n)) - got)
    assert not lost, f"{len(lost)} of {n} lost, e.g. {lost[:10]}"


def _publisher(make_client, port):
    pub = make_client()
    pub.reconnect_delay_set(min_delay=0.05, max_delay=0.2)
    pub.connect_timeout_set(3)
    pub.connect("127.0.0.1", port, keepalive=KEEPALIVE)
    pub.loop_start()
    return pub


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault", ["cut", "blackhole", "delay", "half_packet"])
def test_qos1_stream_survives_network_faults(fresh_broker, make_client, unique_topic, fault):
    topic = unique_topic + fault
    inbox = _subscriber(make_client, fresh_broker, topic)
    n = int(RATE * SECONDS)
    with FaultProxy(fresh_broker.host, fresh_broker.port) as proxy:
        pub = _publisher(make_client, proxy.port)
        stream = _stream(lambda i: pub.publish(topic, str(i), 1), n)
        time.sleep(1.0)
        assert getattr(proxy, fault)(*((0.3,) if fault == "delay" else ())) == 1
        if fault == "delay":
            time.sleep(1.0)
            proxy.delay(0.0)
        stream.join(SECONDS + 30)
        assert not stream.is_alive(), "the publisher blocked"
        if fault != "delay":
            # the client found the fault and came back through the proxy
            assert wait_accepted(proxy, 2, 4 * KEEPALIVE + 10), f"no reconnect after {fault}"
        assert pub.flush(30), "the outbox did not drain"
        _assert_all_arrived(inbox, n)
        if fault == "delay":
            assert proxy.accepted == 1, "a slow link is not a dead one"


@pytest.mark.timeout(90)
def test_frozen_broker_is_detected_and_nothing_is_lost(fresh_broker, make_client, unique_topic):
    """SIGSTOP for 5 s (2.5 keep-alives): the publisher notices (no PINGRESP),
    reconnects once the broker runs again, and resends what was not acknowledged."""
    topic = unique_topic + "frozen"
    inbox = _subscriber(make_client, fresh_broker, topic)
    lost_events = []
    pub = make_client()
    pub.reconnect_delay_set(min_delay=0.05, max_delay=0.2)
    pub.connect_timeout_set(3)
    pub.on_disconnect = lambda *args: lost_events.append(time.monotonic())
    pub.connect(fresh_broker.host, fresh_broker.port, keepalive=KEEPALIVE)
    pub.loop_start()
    n = int(RATE * SECONDS)
    stream = _stream(lambda i: pub.publish(topic, str(i), 1), n)
    time.sleep(1.0)
    pid = fresh_broker.pid
    frozen_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: lost_events, 4 * KEEPALIVE + 2, "the frozen broker was noticed")
    finally:
        time.sleep(max(0.0, 5.0 - (time.monotonic() - frozen_at)))
        os.kill(pid, signal.SIGCONT)
    assert lost_events[0] - frozen_at < 4 * KEEPALIVE + 2
    stream.join(SECONDS + 30)
    wait_until(pub.is_connected, 20, "reconnected after SIGCONT")
    assert pub.flush(30), "the outbox did not drain"
    _assert_all_arrived(inbox, n)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("face", ["client", "sermas"])
@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_cut_connection_both_faces_both_transports(fresh_broker, make_client, unique_topic, face, transport):
    from sermas_bus import SermasClient
    topic = unique_topic + "cut"
    inbox = _subscriber(make_client, fresh_broker, topic)
    upstream = fresh_broker.port if transport == "tcp" else fresh_broker.ws_port
    n = int(RATE * SECONDS)
    with FaultProxy(fresh_broker.host, upstream) as proxy:
        url = f"tcp://127.0.0.1:{proxy.port}" if transport == "tcp" else f"ws://127.0.0.1:{proxy.port}/mqtt"
        if face == "client":
            pub = make_client()
            pub.reconnect_delay_set(min_delay=0.05, max_delay=0.2)
            pub.connect(url)
            pub.loop_start()
            publish, flush, close = (lambda i: pub.publish(topic, str(i), 1)), pub.flush, pub.close
        else:
            bus = SermasClient(mqtt_url=url, app_id="app", max_queued=100_000)
            bus.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)
            bus.connect()
            publish, flush, close = (lambda i: bus.publish(topic, str(i).encode(), qos=1)), bus.flush, bus.close
        try:
            stream = _stream(publish, n)
            time.sleep(1.0)
            assert proxy.cut() == 1
            stream.join(SECONDS + 30)
            assert wait_accepted(proxy, 2, 10), "no reconnect after the cut"
            assert flush(30), "the outbox did not drain"
            _assert_all_arrived(inbox, n)
        finally:
            close()


def _rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.timeout(180)
def test_consumer_slower_than_the_producer_for_a_minute(make_client, unique_topic):
    """1,000 QoS 1 msg/s in, 800/s consumed, for 60 s: the client's inbound
    queue (queue_max) holds the loop back, paho stops reading, the broker
    holds the backlog (configured without a queue limit, as a platform broker
    for such a consumer would be); our memory stays flat and nothing is lost."""
    from sermas_bus.testing import Mosquitto
    topic = unique_topic + "slow"
    with Mosquitto(tcp=True, websockets=False, log_type="warning",
                   extra_conf="max_queued_messages 0\n") as broker:
        got = []

        def slow(client, userdata, msg):
            got.append(int(msg.payload))
            time.sleep(1 / 800)

        sub = make_client(queue_max=1000)
        sub.on_message = slow
        sub.connect(broker.host, broker.port)
        sub.subscribe(topic, 1)
        sub.loop_start()
        pub = make_client()
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        n = 60 * RATE
        stream = _stream(lambda i: pub.publish(topic, str(i), 1), n)
        time.sleep(10)
        rss_early = _rss_kib()
        backlog_early = n and (10 * RATE - len(got))
        stream.join(90)
        assert not stream.is_alive(), "the producer was held back"
        rss_late = _rss_kib()
        assert pub.flush(30)
        assert sub.stats()["queued"] <= 1000 + 1024, sub.stats()
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        lost = sorted(set(range(n)) - set(got))
        print(f"slow consumer: {n} messages, backlog after 10 s {backlog_early}, "
              f"RSS {rss_early} -> {rss_late} KiB, lost {len(lost)}")
        assert not lost, f"{len(lost)} lost, e.g. {lost[:10]}"
        if not UNDER_ASAN:      # ASan's quarantine keeps freed memory resident
            assert rss_late - rss_early < 20 * 1024, "memory grew with the backlog"
