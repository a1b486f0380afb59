"""sermas_bus.aio against real mosquitto brokers, with plain asyncio.run (no pytest-asyncio)."""
from __future__ import annotations

import asyncio
import os
import selectors
import signal
import threading
import time

import pytest

import sermas_bus.client as mqtt
from sermas_bus import errors
from sermas_bus.aio import AsyncClient, AsyncSermasClient
from sermas_bus.testing import Mosquitto


def run(coro, selector=None):
    """asyncio.run, or the same on a SelectorEventLoop with the given selector."""
    if selector is None:
        return asyncio.run(coro)
    loop = asyncio.SelectorEventLoop(selector())
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


class Ticker:
    """Measures how long the event loop goes without running a 5 ms sleeper."""

    def __init__(self, period=0.005):
        self.period, self.max_gap, self.ticks = period, 0.0, 0

    async def run(self):
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.period)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last - self.period)
            self.ticks += 1
            last = now

    def __enter__(self):
        self.task = asyncio.get_running_loop().create_task(self.run())
        return self

    def __exit__(self, *exc):
        self.task.cancel()


async def collect(c, n, timeout=10):
    got = []
    async for m in c.messages(timeout=timeout):
        got.append(m)
        if len(got) == n:
            break
    return got


def sigstop(broker):
    pid = broker.pid
    os.kill(pid, signal.SIGSTOP)
    return pid


def sigcont(pid):
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------
# round trips, loops
# ---------------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["tcp", "ws"])
def test_publish_receive_round_trip(broker, unique_topic, kind):
    async def main():
        async with AsyncClient(host=broker.url(kind)) as c:
            assert c.is_connected()
            await c.subscribe(unique_topic + "#", qos=1)
            info = await c.publish(unique_topic + "a", b"hello", qos=1)
            assert info.is_published()
            await c.publish(unique_topic + "b", "text", qos=0)
            got = await collect(c, 2, timeout=5)
            return [(m.topic, m.payload, m.qos) for m in got], c

    got, c = run(main())
    assert got == [(unique_topic + "a", b"hello", 1), (unique_topic + "b", b"text", 0)]
    assert not c.is_connected()      # closed on exit


@pytest.mark.timeout(30)
@pytest.mark.parametrize("selector", ["EpollSelector", "PollSelector", "SelectSelector"])
def test_selector_event_loops(broker, unique_topic, selector):
    async def main():
        c = AsyncClient()
        await c.connect(broker.url("tcp"))
        try:
            await c.subscribe(unique_topic + "x")
            for i in range(50):
                await c.publish(unique_topic + "x", str(i))
            return [m.payload for m in await collect(c, 50, timeout=5)]
        finally:
            await c.close()

    assert run(main(), getattr(selectors, selector)) == [str(i).encode() for i in range(50)]


@pytest.mark.timeout(30)
def test_client_made_inside_a_running_loop_and_outside_one(broker, unique_topic):
    """Notebook usage: everything happens inside a loop someone else runs."""
    outside = AsyncClient(client_id="made-outside")

    async def cell_1():
        inside = AsyncClient(host=broker.url("tcp"))     # constructed with the loop running
        await inside.__aenter__()
        await outside.connect(broker.url("tcp"))
        await inside.subscribe(unique_topic + "nb")
        return inside

    async def notebook():
        inside = await cell_1()
        await outside.publish(unique_topic + "nb", b"from-outside")
        got = await collect(inside, 1, timeout=5)
        await inside.close()
        await outside.close()
        return got[0].payload

    assert run(notebook()) == b"from-outside"


@pytest.mark.timeout(120)
def test_inside_a_jupyter_kernel(broker, unique_topic):
    """Top-level await across notebook cells, on the kernel's own running loop."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import sermas_bus

    root = os.path.dirname(os.path.dirname(os.path.abspath(sermas_bus.__file__)))
    cells = [
        f"import sys; sys.path.insert(0, {root!r})\n"
        "import sermas_bus, asyncio\nfrom sermas_bus.aio import AsyncClient\n"
        "assert asyncio.get_running_loop().is_running()",
        f"c = AsyncClient()\nawait c.connect({broker.url('tcp')!r})\nawait c.subscribe({unique_topic + '#'!r})",
        f"info = await c.publish({unique_topic + 'nb'!r}, b'from a notebook')\nassert info.is_published()",
        "got = [m.payload async for m in c.messages(timeout=5, max_messages=1)]\n"
        "await c.close()\nprint(sermas_bus.__file__, got)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in cells])
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert out.strip() == f"{os.path.join(root, 'sermas_bus', '__init__.py')} [b'from a notebook']"


# ---------------------------------------------------------------------------
# await publish
# ---------------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("qos", [1, 2])
def test_await_publish_returns_on_the_acknowledgement(broker, unique_topic, qos):
    async def main():
        async with AsyncClient(host=broker.url("tcp")) as c:
            await c.publish(unique_topic + "warm", b"w")
            started = time.monotonic()
            info = await c.publish(unique_topic + "ack", b"x", qos=qos)
            elapsed = time.monotonic() - started
            # acknowledged, not merely sent: the C core's slot says DONE
            assert info.is_published()
            assert info.rc == mqtt.MQTT_ERR_SUCCESS
            assert c._pending == {}
            return elapsed

    assert run(main()) < 0.5


@pytest.mark.timeout(30)
def test_await_publish_times_out_without_blocking_the_loop(fresh_broker, unique_topic):
    async def main():
        async with AsyncClient(host=fresh_broker.url("tcp")) as c:
            await c.subscribe(unique_topic + "#")
            pid = sigstop(fresh_broker)
            try:
                with Ticker() as ticker:
                    started = time.monotonic()
                    with pytest.raises(errors.TimeoutError) as ei:
                        await c.publish(unique_topic + "stopped", b"late", timeout=0.5)
                    elapsed = time.monotonic() - started
            finally:
                sigcont(pid)
            assert isinstance(ei.value, TimeoutError)     # also the builtin
            assert 0.45 <= elapsed < 2, elapsed
            assert ticker.ticks >= 40 and ticker.max_gap < 0.1, (ticker.ticks, ticker.max_gap)
            # the broker wakes up: the message was kept in flight and arrives
            got = await collect(c, 1, timeout=5)
            assert [m.payload for m in got] == [b"late"]
            await c.publish(unique_topic + "after", b"ok", timeout=5)
            assert [m.payload for m in await collect(c, 1, timeout=5)] == [b"ok"]

    run(main())


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", ["disconnect", "kill"])
def test_await_publish_survives_an_outage(fresh_broker, unique_topic, how):
    """The connection goes before the PUBACK: the message stays in the outbox
    and the await completes once it is delivered after the reconnect."""
    async def main():
        c = AsyncClient(host=fresh_broker.url("tcp"))
        c.reconnect_delay_set(0.1, 0.3)
        async with c:
            pid = sigstop(fresh_broker)
            try:
                task = asyncio.create_task(c.publish(unique_topic + "kept", b"x", timeout=20))
                await asyncio.sleep(0.2)
                assert not task.done()
                if how == "disconnect":
                    await c.disconnect(timeout=0.2)
                else:
                    fresh_broker.kill()
            finally:
                sigcont(pid)
            await asyncio.sleep(0.3)
            assert not task.done(), "the await ended although the message was not delivered"
            if how == "disconnect":
                await c.connect(fresh_broker.url("tcp"))
            else:
                await asyncio.get_running_loop().run_in_executor(None, fresh_broker.start)
            info = await asyncio.wait_for(task, 15)
            assert info.is_published()
            assert await c.flush(5)
            assert c._pending == {}

    run(main())


@pytest.mark.timeout(40)
def test_await_publish_raises_connection_lost_on_close(unique_topic):
    async def main():
        c = AsyncClient()
        task = asyncio.create_task(c.publish(unique_topic + "gone", b"x", timeout=20))
        await asyncio.sleep(0.1)
        assert not task.done()
        started = time.monotonic()
        await c.close()
        with pytest.raises(errors.ConnectionLostError):
            await task
        assert time.monotonic() - started < 5
        nc = AsyncClient()
        try:
            with pytest.raises(errors.NotConnectedError):
                await nc.publish(unique_topic + "nc", b"x", qos=0)
        finally:
            await nc.close()

    run(main())


@pytest.mark.timeout(40)
def test_reconnects_with_back_off_and_restores_subscriptions(fresh_broker, unique_topic):
    async def main():
        connects = []
        c = AsyncClient(host=fresh_broker.url("tcp"))
        c.reconnect_delay_set(0.1, 0.5)

        async def on_connect(client, userdata, flags, rc, props):
            await asyncio.sleep(0)
            connects.append(client)

        c.on_connect = on_connect
        async with c:
            await c.subscribe(unique_topic + "r")
            fresh_broker.kill()
            with Ticker() as ticker:
                await asyncio.sleep(0.5)
                # start the broker off the loop: its readiness wait must not count as a stall
                await asyncio.get_running_loop().run_in_executor(None, fresh_broker.start)
                deadline = time.monotonic() + 10
                while len(connects) < 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
            assert len(connects) == 2 and all(x is c for x in connects)
            assert ticker.max_gap < 0.1, ticker.max_gap          # connects ran off the loop
            await c.publish(unique_topic + "r", b"again", timeout=5)
            assert [m.payload for m in await collect(c, 1, timeout=5)] == [b"again"]

    run(main())


# ---------------------------------------------------------------------------
# messages(), callbacks
# ---------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_messages_iterator_max_messages_and_timeout(broker, unique_topic):
    async def main():
        async with AsyncClient(host=broker.url("tcp")) as c:
            await c.subscribe(unique_topic + "m")
            for i in range(5):
                await c.publish(unique_topic + "m", str(i))
            first = [m.payload async for m in c.messages(max_messages=3, timeout=5)]
            started = time.monotonic()
            rest = [m.payload async for m in c.messages(timeout=0.3)]
            waited = time.monotonic() - started
            return first, rest, waited

    first, rest, waited = run(main())
    assert first == [b"0", b"1", b"2"]
    assert rest == [b"3", b"4"]
    assert 0.25 <= waited < 1.5


@pytest.mark.timeout(30)
def test_async_and_sync_callbacks(broker, unique_topic):
    async def main():
        seen = []
        async with AsyncClient(host=broker.url("tcp"), userdata="ud") as c:
            async def on_message(client, userdata, msg):
                assert client is c and userdata == "ud"
                await asyncio.sleep(0.01)
                seen.append(("default", msg.payload))

            async def on_cmd(client, userdata, msg):
                # an async callback may await publish (the reply) without deadlock
                await client.publish(unique_topic + "reply", b"re:" + msg.payload)
                seen.append(("cmd", msg.payload))

            def on_sync(msg):
                seen.append(("sync", msg.payload))

            c.on_message = on_message
            c.message_callback_add(unique_topic + "cmd/+", on_cmd)
            c.message_callback_add(unique_topic + "sync", on_sync)
            await c.subscribe(unique_topic + "#")
            await c.publish(unique_topic + "cmd/1", b"a")
            await c.publish(unique_topic + "sync", b"b")
            await c.publish(unique_topic + "other", b"c")
            deadline = time.monotonic() + 5
            while len(seen) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return sorted(seen)

    assert run(main()) == sorted([("cmd", b"a"), ("sync", b"b"), ("default", b"c"), ("default", b"re:a")])


@pytest.mark.timeout(30)
def test_exception_in_async_callback_is_logged_and_delivery_goes_on(broker, unique_topic, caplog):
    async def main():
        got = []
        async with AsyncClient(host=broker.url("tcp")) as c:
            async def on_message(msg):
                if msg.payload == b"boom":
                    raise RuntimeError("kaboom")
                got.append(msg.payload)
            c.on_message = on_message
            await c.subscribe(unique_topic + "e")
            await c.publish(unique_topic + "e", b"boom")
            await c.publish(unique_topic + "e", b"fine")
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        return got

    assert run(main()) == [b"fine"]
    assert any("kaboom" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------
# cancellation
# ---------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_cancelled_await_publish_loses_nothing(fresh_broker, unique_topic):
    async def main():
        async with AsyncClient(host=fresh_broker.url("tcp")) as c:
            await c.subscribe(unique_topic + "#")
            pid = sigstop(fresh_broker)
            try:
                task = asyncio.create_task(c.publish(unique_topic + "c", b"cancelled-await"))
                await asyncio.sleep(0.2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert len(c._pending) == 1          # still in flight, still counted
            finally:
                sigcont(pid)
            await c.publish(unique_topic + "c", b"next", timeout=5)
            got = [m.payload for m in await collect(c, 2, timeout=5)]
            assert c._pending == {}
            return got

    assert run(main()) == [b"cancelled-await", b"next"]


@pytest.mark.timeout(30)
def test_cancelled_iterator_leaves_the_rest_queued(broker, unique_topic):
    async def main():
        async with AsyncClient(host=broker.url("tcp")) as c:
            await c.subscribe(unique_topic + "it")
            for i in range(10):
                await c.publish(unique_topic + "it", str(i))
            taken, busy = [], asyncio.Event()

            async def consumer():
                async for m in c.messages():
                    taken.append(m.payload)
                    if len(taken) == 3:
                        busy.set()
                        await asyncio.sleep(3600)        # cancelled mid-stream here

            task = asyncio.create_task(consumer())
            await asyncio.wait_for(busy.wait(), 5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

            # an iterator cancelled while waiting for a message takes nothing either
            idle = asyncio.create_task(collect(c, 100, timeout=None))
            rest = [m.payload for m in await collect(c, 7, timeout=5)]
            idle.cancel()
            await asyncio.gather(idle, return_exceptions=True)
            await c.publish(unique_topic + "it", b"later")
            later = [m.payload for m in await collect(c, 1, timeout=5)]
            return taken, rest, later

    taken, rest, later = run(main())
    assert taken == [b"0", b"1", b"2"]
    assert rest == [str(i).encode() for i in range(3, 10)]
    assert later == [b"later"]


@pytest.mark.timeout(30)
def test_iterator_cancelled_while_waiting_takes_nothing(broker, unique_topic):
    async def main():
        async with AsyncClient(host=broker.url("tcp")) as c:
            await c.subscribe(unique_topic + "w")
            waiting = asyncio.create_task(collect(c, 1, timeout=None))
            await asyncio.sleep(0.1)
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            assert waiting.cancelled()
            await c.publish(unique_topic + "w", b"kept")
            await asyncio.sleep(0.1)                 # delivered into the queue, nobody waiting
            return [m.payload for m in await collect(c, 1, timeout=5)]

    assert run(main()) == [b"kept"]


# ---------------------------------------------------------------------------
# load, responsiveness, idleness, back-pressure
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pausable_broker():
    """A quiet tcp mosquitto of this module's own: tests SIGSTOP it briefly."""
    with Mosquitto(tcp=True, websockets=False, log_type="warning") as b:
        yield b


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["gather", "sequential"])
def test_1000_messages_keep_the_loop_responsive(pausable_broker, unique_topic, mode):
    """1000 QoS 1 messages out and back in, with the broker frozen for 200 ms
    midway (a hiccup a blocking wait for PUBACK would turn into a loop stall)."""
    n = 1000

    async def main():
        async with AsyncClient(host=pausable_broker.url("tcp")) as c:
            got = []
            done = asyncio.Event()

            async def on_message(msg):
                got.append(int(msg.payload))
                if len(got) == n:
                    done.set()

            async def hiccup():
                while len(got) < n // 3:
                    await asyncio.sleep(0.001)
                os.kill(pausable_broker.pid, signal.SIGSTOP)
                resume = threading.Timer(0.2, os.kill, (pausable_broker.pid, signal.SIGCONT))
                resume.start()
                return resume

            c.on_message = on_message
            await c.subscribe(unique_topic + "load")
            with Ticker() as ticker:
                await asyncio.sleep(0.05)
                pause = asyncio.create_task(hiccup())
                try:
                    if mode == "gather":
                        infos = await asyncio.gather(*(c.publish(unique_topic + "load", str(i))
                                                       for i in range(n)))
                    else:
                        infos = [await c.publish(unique_topic + "load", str(i)) for i in range(n)]
                    await asyncio.wait_for(done.wait(), 20)
                finally:
                    resume = await pause
                    resume.join()
                await asyncio.sleep(0.05)
            assert all(info.is_published() for info in infos)
            return got, ticker

    got, ticker = run(main())
    assert sorted(got) == list(range(n))
    assert ticker.ticks > 30        # > 200 ms of ticking at 5 ms
    assert ticker.max_gap < 0.1, f"the event loop stalled for {ticker.max_gap * 1000:.1f} ms"


@pytest.mark.timeout(30)
def test_idle_client_does_not_spin(broker, unique_topic):
    async def main():
        async with AsyncClient(host=broker.url("tcp")) as c:
            await c.subscribe(unique_topic + "idle")
            await c.publish(unique_topic + "idle", b"x")
            await collect(c, 1, timeout=5)
            await asyncio.sleep(0.1)
            cpu0, thread0 = time.process_time(), time.thread_time()
            await asyncio.sleep(1.0)
            return time.process_time() - cpu0, time.thread_time() - thread0

    process_cpu, loop_cpu = run(main())
    assert loop_cpu < 0.05, f"event loop thread used {loop_cpu:.3f} s of CPU in 1 s idle"
    assert process_cpu < 0.1, f"process used {process_cpu:.3f} s of CPU in 1 s idle"


def _paho_writer(broker, topic, n):
    """Publish n QoS 1 messages from pure-Python paho-mqtt: not through
    paho.mqtt.c, whose one receive thread per process is the one the reader's
    back-pressure holds (a writer in this process would stall with it)."""
    import paho.mqtt.client as paho

    w = paho.Client(paho.CallbackAPIVersion.VERSION2)
    w.connect("127.0.0.1", broker.port)
    w.loop_start()
    try:
        infos = [w.publish(topic, str(i), qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        w.disconnect()
        w.loop_stop()


@pytest.mark.timeout(60)
def test_back_pressure_without_a_consumer_loses_nothing(broker, unique_topic):
    """Nobody reads: the loop stops draining at queue_max, the C queue and then
    the broker hold the rest; an await publish still completes meanwhile."""
    n, qmax = 600, 50

    async def main():
        async with AsyncClient(host=broker.url("tcp"), queue_max=qmax) as reader:
            await reader.subscribe(unique_topic + "bp")
            await asyncio.get_running_loop().run_in_executor(None, _paho_writer, broker, unique_topic + "bp", n)
            await asyncio.sleep(0.3)
            held, paused = len(reader._inbox), not reader._reading
            # the reader can still publish and get its acknowledgement (queued
            # behind the held messages: it drains past queue_max for it)
            await reader.publish(unique_topic + "elsewhere", b"x", timeout=5)
            got = [int(m.payload) for m in await collect(reader, n, timeout=10)]
            return held, paused, got

    held, paused, got = run(main())
    assert paused and held <= 2 * qmax, held      # one batch past the mark at most
    assert got == list(range(n))


@pytest.mark.timeout(30)
def test_close_ends_iterators_and_fails_pending_publishes(fresh_broker, unique_topic):
    async def main():
        c = AsyncClient(host=fresh_broker.url("tcp"))
        await c.__aenter__()
        await c.subscribe(unique_topic + "z")
        reader = asyncio.create_task(collect(c, 10, timeout=None))
        pid = sigstop(fresh_broker)
        try:
            pub = asyncio.create_task(c.publish(unique_topic + "z", b"x"))
            await asyncio.sleep(0.1)
            await c.close()
            with pytest.raises(errors.ConnectionLostError):
                await pub
            assert await asyncio.wait_for(reader, 5) == []
        finally:
            sigcont(pid)
        with pytest.raises(errors.ClosedError):
            await c.publish(unique_topic + "z", b"y")

    run(main())


def test_bad_arguments_raise_before_anything_is_sent(broker):
    async def main():
        async with AsyncClient(host=broker.url("tcp")) as c:
            with pytest.raises(ValueError):
                await c.publish("a/+", b"x")
            with pytest.raises(ValueError):
                await c.publish("a", b"x", qos=3)
            with pytest.raises(TypeError):
                c.on_message = lambda a, b: None
            assert c._pending == {}

    run(main())


# ---------------------------------------------------------------------------
# AsyncSermasClient
# ---------------------------------------------------------------------------

APP = "testapp"


def _abus(broker, tokens=None, **kw):
    kw.setdefault("mqtt_url", broker.url("ws"))
    base = tokens.url if tokens is not None else "http://127.0.0.1:9"
    return AsyncSermasClient(base, app_id=APP, **kw)


async def _until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return pred()


@pytest.mark.timeout(30)
def test_sermas_publish_and_subscribe_with_async_and_sync_callbacks(broker):
    seen, raw, agent = [], [], []
    early = _abus(broker)

    @early.on("dialogue.messages", sessionId="s1")      # no event loop yet, not connected
    async def said(event, msg):
        await asyncio.sleep(0)
        seen.append(("async", event["text"], msg.name, msg.params["sessionId"]))

    async def main():
        early.subscribe("dialogue.agentSpeech", lambda e, m: agent.append(e))   # loop running, not connected
        async with early as bus, _abus(broker) as pub:
            sub = await bus.subscribe("ui.content", lambda e, m: raw.append(e))
            assert sub.active and sub.filter == f"app/{APP}/ui/content"
            info = await pub.publish("dialogue.messages", {"sessionId": "s1", "text": "hi"})
            assert info.is_published()                           # awaited the PUBACK
            await pub.publish("dialogue.messages", {"text": "other session"}, sessionId="s2")
            await pub.publish("ui.content", b"\x00raw")
            await pub.publish("dialogue.agentSpeech", b"audio", sessionId="s1", messageId="m", chunkId="c")
            assert await _until(lambda: seen and raw and agent)
            await sub.unsubscribe()
            await pub.publish("ui.content", b"after unsubscribe")
            await pub.publish("dialogue.messages", {"text": "again"}, sessionId="s1")
            assert await _until(lambda: len(seen) == 2)
            await asyncio.sleep(0.1)
            with pytest.raises(ValueError, match="sessionId"):
                await pub.publish("dialogue.messages", {"text": "no session"})

    run(main())
    assert agent == [b"audio"]
    assert seen == [("async", "hi", "dialogue.messages", "s1"), ("async", "again", "dialogue.messages", "s1")]
    assert raw == [b"\x00raw"]


@pytest.mark.timeout(30)
def test_sermas_events_and_wait_for(broker):
    async def main():
        async with _abus(broker) as bus, _abus(broker) as pub:
            async def later(delay=0.1):
                await asyncio.sleep(delay)
                for i in range(5):
                    await pub.publish("session.sessionChanged", {"sessionId": f"s{i}", "i": i})

            async with bus.events("session.sessionChanged", timeout=5, max_events=5) as stream:
                task = asyncio.create_task(later(0))             # subscribed already: nothing missed
                got = [(e["i"], m.params["sessionId"]) async for e, m in stream]
                await task
            assert got == [(i, f"s{i}") for i in range(5)]

            task = asyncio.create_task(later(0.3))
            event = await bus.wait_for("session.sessionChanged", lambda e: e["i"] == 3, timeout=10)
            await task
            assert event["i"] == 3

            async def is_four(e):
                return e["i"] == 4
            task = asyncio.create_task(later(0.3))
            assert (await bus.wait_for("session.sessionChanged", is_four, timeout=10))["i"] == 4
            await task

            started = time.monotonic()
            with pytest.raises(errors.TimeoutError):
                await bus.wait_for("xr.occlusion", timeout=0.3)
            assert time.monotonic() - started < 2
            # the temporary subscriptions are gone
            assert bus.sync._filter_ids == {}

    run(main())


@pytest.mark.timeout(30)
def test_sermas_event_stream_cancelled_mid_stream(broker):
    async def main():
        async with _abus(broker) as bus, _abus(broker) as pub:
            stream = bus.events("session.sessionChanged")
            await stream.__aenter__()
            for i in range(6):
                await pub.publish("session.sessionChanged", {"sessionId": "s", "i": i})
            taken = []

            async def consume():
                async for e, _m in stream:
                    taken.append(e["i"])
                    if len(taken) == 2:
                        await asyncio.sleep(3600)

            task = asyncio.create_task(consume())
            assert await _until(lambda: len(taken) == 2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            rest = []
            while len(rest) < 4:
                e, _m = await stream.__anext__()
                rest.append(e["i"])
            await stream.aclose()
            return taken, rest

    assert run(main()) == ([0, 1], [2, 3, 4, 5])


@pytest.fixture
def tokens():
    from sermas_bus.tokens import TokenServer
    with TokenServer(ttl=300, clients={(APP, "svc"): "s3cret"}) as ts:
        yield ts


@pytest.mark.timeout(60)
def test_sermas_token_refresh_in_an_executor_loses_no_qos1(tokens):
    """Tokens live 3 s and are refreshed 2 s before exp: the reconnect with
    the new token runs off the loop while QoS 1 events stream in."""
    tokens.ttl = 3.0
    n = 1000

    async def main(broker):
        got = []
        async with _abus(broker, tokens, client_id="svc", client_secret="s3cret", refresh_margin=2.0) as bus, \
                _abus(broker) as pub:
            first = bus.token.access_token
            await bus.subscribe("dialogue.messages", lambda e, m: got.append(e["i"]), sessionId="stream")
            with Ticker() as ticker:
                for i in range(n):
                    await pub.publish("dialogue.messages", {"i": i}, sessionId="stream")
                    await asyncio.sleep(0.002)
                assert await _until(lambda: len(set(got)) == n, timeout=20), f"missing {n - len(set(got))}"
            assert bus.refreshes >= 1 and bus.token.access_token != first
            return got, ticker, first, bus.token.access_token

    with Mosquitto(tcp=True, websockets=True, log_type="warning") as broker:
        got, ticker, first, last = run(main(broker))
    assert sorted(set(got)) == list(range(n))
    assert ticker.max_gap < 0.1, f"the event loop stalled for {ticker.max_gap * 1000:.1f} ms"
