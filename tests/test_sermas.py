"""SermasClient and token handling against a real broker and a real HTTP token endpoint."""
import json
import logging
import threading
import time

import pytest

import sermas_bus
import sermas_bus.client as mqtt
from sermas_bus import SermasClient
from sermas_bus import json as sbjson
from sermas_bus.auth import (AuthBadAnswer, AuthRejected, AuthRequestError, AuthUnreachable,
                             ClientCredentials, Token, UserLogin, jwt_claims)
from sermas_bus.errors import TimeoutError as SbTimeoutError
from sermas_bus.sermas import broker_url_for
from sermas_bus.testing import Mosquitto
from sermas_bus.tokens import TokenServer, verify_jwt

APP = "testapp"


@pytest.fixture
def tokens():
    with TokenServer(ttl=300, clients={(APP, "svc"): "s3cret", (APP, "svc2"): "s3cret2"},
                     users={(APP, "alice"): "pw"}) as ts:
        yield ts


def _bus(broker, tokens=None, **kw):
    kw.setdefault("mqtt_url", broker.url("ws"))
    base = tokens.url if tokens is not None else "http://127.0.0.1:9"
    return SermasClient(base, app_id=APP, **kw)


def _listener(broker, filter_, got, qos=1):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"listener-{time.monotonic_ns()}")
    c.on_message = lambda cl, ud, m: got.append(m)
    c.connect(broker.url("tcp"))
    c.loop_start()
    c.subscribe(filter_, qos=qos)
    return c


def _wait(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_broker_url_is_derived_like_the_platform():
    assert broker_url_for("http://localhost:8080") == "ws://localhost:8080/mqtt"
    assert broker_url_for("https://sermas.example.org") == "wss://sermas.example.org/mqtt"
    assert broker_url_for("https://h:8443/api") == "wss://h:8443/mqtt"
    with pytest.raises(ValueError, match="base_url"):
        broker_url_for("ftp://x")


def test_app_id_required():
    with pytest.raises(ValueError, match="app_id"):
        SermasClient("http://localhost:8080")


def test_publish_by_name_fills_params_from_kwargs_payload_and_app(broker):
    got = []
    listener = _listener(broker, f"app/{APP}/#", got)
    try:
        with _bus(broker) as bus:
            bus.publish("dialogue.messages", {"sessionId": "s1", "text": "from payload"}).wait_for_publish(5)
            bus.publish("dialogue.messages", {"text": "from kwarg"}, sessionId="s2").wait_for_publish(5)
            bus.publish("dialogue.messages", {"record": {"sessionId": "s3"}, "text": "from record"}).wait_for_publish(5)
            bus.publish("ui.content", b"\x00raw bytes\xff").wait_for_publish(5)
            bus.publish("app/:appId/custom/:thing", "text", thing=7).wait_for_publish(5)
            with pytest.raises(ValueError, match="sessionId"):
                bus.publish("dialogue.messages", {"text": "no session"})
            with pytest.raises(ValueError, match="'a/b'"):
                bus.publish("dialogue.messages", {}, sessionId="a/b")
        assert _wait(lambda: len(got) == 5)
        by_topic = {m.topic: m for m in got}
        assert json.loads(by_topic[f"app/{APP}/dialogue/messages/s1"].payload)["text"] == "from payload"
        assert f"app/{APP}/dialogue/messages/s2" in by_topic
        assert f"app/{APP}/dialogue/messages/s3" in by_topic
        assert by_topic[f"app/{APP}/ui/content"].payload == b"\x00raw bytes\xff"
        assert by_topic[f"app/{APP}/custom/7"].payload == b"text"
        # JSON is compact and identical to json.dumps' compact form
        ev = {"sessionId": "s1", "text": "from payload"}
        assert by_topic[f"app/{APP}/dialogue/messages/s1"].payload == sbjson.dumps(ev)
        assert sbjson.dumps(ev) == json.dumps(ev, separators=(",", ":"), ensure_ascii=False).encode()
    finally:
        listener.close()


def test_subscribe_by_name_decodes_and_names_events(broker):
    events = []
    with _bus(broker) as sub_bus, _bus(broker) as pub_bus:
        sub_bus.subscribe("dialogue.messages", lambda e, m: events.append((e, m)))
        sub_bus.subscribe("dialogue.agentSpeech", lambda e, m: events.append((e, m)), sessionId="s9")
        time.sleep(0.2)
        pub_bus.publish("dialogue.messages", {"sessionId": "s1", "text": "hi", "n": 1, "x": 1.5})
        pub_bus.publish("dialogue.agentSpeech", b"\x01\x02audio", sessionId="s9", messageId="m", chunkId="c")
        pub_bus.publish("dialogue.agentSpeech", b"other session", sessionId="s8", messageId="m", chunkId="c")
        pub_bus.publish("dialogue.messages", b"{not json", sessionId="s2").wait_for_publish(5)
        assert _wait(lambda: len(events) == 3)
    (e1, m1), = [x for x in events if x[1].params.get("sessionId") == "s1"]
    assert e1 == {"sessionId": "s1", "text": "hi", "n": 1, "x": 1.5} and isinstance(e1["n"], int)
    assert m1.name == "dialogue.messages" and m1.params == {"appId": APP, "sessionId": "s1"}
    assert m1.qos == 1 and m1.is_json and m1.raw == sbjson.dumps(e1)
    (e2, m2), = [x for x in events if x[1].name == "dialogue.agentSpeech"]
    assert e2 == b"\x01\x02audio" and not m2.is_json
    assert m2.params == {"appId": APP, "sessionId": "s9", "messageId": "m", "chunkId": "c"}
    (e3, m3), = [x for x in events if x[1].params.get("sessionId") == "s2"]
    assert e3 == b"{not json" and not m3.is_json        # handed over raw, never dropped


def test_no_local_by_default_and_decorator(broker):
    seen = []
    with _bus(broker) as bus, _bus(broker) as other:
        @bus.on("ui.content")
        def on_content(event, msg):
            seen.append(event["who"])

        time.sleep(0.2)
        bus.publish("ui.content", {"who": "me"}).wait_for_publish(5)
        other.publish("ui.content", {"who": "other"}).wait_for_publish(5)
        assert _wait(lambda: "other" in seen)
        time.sleep(0.3)
    assert seen == ["other"]


def test_unsubscribe_removes_broker_subscription_only_when_unused(broker):
    a, b = [], []
    with _bus(broker) as bus, _bus(broker) as pub:
        sa = bus.subscribe("ui.content", lambda e, m: a.append(e))
        sb = bus.subscribe("ui.content", lambda e, m: b.append(e))
        time.sleep(0.2)
        pub.publish("ui.content", {"n": 1}).wait_for_publish(5)
        assert _wait(lambda: len(a) == 1 and len(b) == 1)
        sa.unsubscribe()
        pub.publish("ui.content", {"n": 2}).wait_for_publish(5)
        assert _wait(lambda: len(b) == 2)
        assert len(a) == 1
        assert bus._filter_ids                # still subscribed at the broker for b
        sb.unsubscribe()
        assert not bus._filter_ids
        pub.publish("ui.content", {"n": 3}).wait_for_publish(5)
        time.sleep(0.3)
        assert len(b) == 2


@pytest.mark.parametrize("protocol", [None, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_overlapping_subscriptions_deliver_each_event_once_per_callback(broker, protocol):
    """On MQTT 5 the broker sends one copy per matching subscription and
    subscription identifiers route each copy to its own callbacks only; on
    3.1.1 only the widest filter goes to the broker and events are routed by
    topic (mosquitto sends one copy there anyway; NATS and amqtt send one per
    filter: see test_interop's overlapping test, the regression test)."""
    a, b, c = [], [], []
    with _bus(broker, protocol=protocol) as bus, _bus(broker) as pub:
        bus.subscribe("dialogue.messages", lambda e, m: a.append(e["n"]))
        bus.subscribe("dialogue.messages", lambda e, m: b.append(e["n"]), sessionId="s2")
        bus.subscribe(f"app/{APP}/#", lambda e, m: c.append(e["n"]))
        time.sleep(0.2)
        pub.publish("dialogue.messages", {"n": 1}, sessionId="s1")
        pub.publish("dialogue.messages", {"n": 2}, sessionId="s2").wait_for_publish(5)
        assert _wait(lambda: len(c) >= 2 and len(a) >= 2 and len(b) >= 1)
        time.sleep(0.3)
    assert sorted(a) == [1, 2] and b == [2] and sorted(c) == [1, 2]


def test_mqtt311_narrow_subscription_survives_removing_the_wide_one(broker):
    """With only the widest filter at the broker (3.1.1), removing it must
    subscribe the narrower ones first: nothing is lost or doubled."""
    narrow, wide = [], []
    with _bus(broker, protocol=mqtt.MQTTv311) as bus, _bus(broker) as pub:
        bus.subscribe("dialogue.messages", lambda e, m: narrow.append(e["n"]), sessionId="s1")
        handle = bus.subscribe(f"app/{APP}/#", lambda e, m: wide.append(e["n"]))
        assert set(bus.client._engine.at_broker) == {f"app/{APP}/#"}
        pub.publish("dialogue.messages", {"n": 1}, sessionId="s1").wait_for_publish(5)
        assert _wait(lambda: narrow == [1] and wide == [1])
        handle.unsubscribe()
        assert set(bus.client._engine.at_broker) == {f"app/{APP}/dialogue/messages/s1"}
        pub.publish("dialogue.messages", {"n": 2}, sessionId="s1").wait_for_publish(5)
        assert _wait(lambda: narrow == [1, 2])
        time.sleep(0.3)
    assert narrow == [1, 2] and wide == [1]


def test_events_and_wait_for(broker):
    with _bus(broker) as bus, _bus(broker) as pub:
        def later():
            time.sleep(0.3)
            for i in range(5):
                pub.publish("session.sessionChanged", {"sessionId": f"s{i}", "i": i})
        t = threading.Thread(target=later)
        t.start()
        event = bus.wait_for("session.sessionChanged", lambda e: e["i"] == 3, timeout=10)
        t.join()
        assert event["i"] == 3
        with pytest.raises(SbTimeoutError):
            bus.wait_for("xr.occlusion", timeout=0.3)
        t = threading.Thread(target=later)
        t.start()
        got = [e["i"] for e, m in bus.events("session.sessionChanged", timeout=5, max_events=5)]
        t.join()
        assert got == [0, 1, 2, 3, 4]


def test_share_group_splits_a_stream_without_loss_or_duplicates(broker):
    n = 400
    w1, w2 = [], []
    with _bus(broker) as c1, _bus(broker) as c2, _bus(broker) as pub:
        c1.subscribe("detection.userDetection", lambda e, m: w1.append(e["i"]), share="workers")
        c2.subscribe("detection.userDetection", lambda e, m: w2.append(e["i"]), share="workers")
        time.sleep(0.3)
        infos = [pub.publish("detection.userDetection", {"i": i}) for i in range(n)]
        for info in infos:
            info.wait_for_publish(10)
        assert _wait(lambda: len(w1) + len(w2) >= n)
        time.sleep(0.2)
    assert sorted(w1 + w2) == list(range(n))
    assert w1 and w2, "the broker should spread the group over both consumers"
    with pytest.raises(ValueError, match="share group"):
        SermasClient("http://x:1", app_id=APP).subscribe("ui.content", print, share="a/b")


def test_client_credentials_token_is_the_mqtt_username(tokens):
    with Mosquitto(tcp=True, websockets=True) as broker:
        with _bus(broker, tokens, client_id="svc", client_secret="s3cret") as bus:
            assert bus.is_connected()
            claims = verify_jwt(bus.token.access_token, tokens.secret)
            assert claims["clientId"] == "svc" and claims["appId"] == APP
            assert _wait(lambda: f"u'{bus.token.access_token}'" in broker.log())


def test_token_refresh_reconnects_without_losing_qos1(tokens, caplog):
    """Access tokens live 3 s; the client refreshes 2 s before exp and
    reconnects with the new token, while another client streams QoS 1."""
    tokens.ttl = 3.0
    caplog.set_level(logging.DEBUG, logger="sermas_bus")
    n = 1500
    got = []
    with Mosquitto(tcp=True, websockets=True) as broker:
        with _bus(broker, tokens, client_id="svc", client_secret="s3cret", refresh_margin=2.0) as bus, \
                _bus(broker) as pub:
            first = bus.token.access_token
            bus.subscribe("dialogue.messages", lambda e, m: got.append(e["i"]), sessionId="stream")
            time.sleep(0.2)
            for i in range(n):
                pub.publish("dialogue.messages", {"i": i}, sessionId="stream")
                time.sleep(0.002)
            assert _wait(lambda: len(set(got)) == n, timeout=20), f"missing {n - len(set(got))}"
            assert bus.refreshes >= 1
            assert bus.token.access_token != first
            log = broker.log()
            assert f"u'{first}'" in log and f"u'{bus.token.access_token}'" in log
    assert sorted(set(got)) == list(range(n))
    for record in caplog.records:            # tokens never reach the logs
        assert first not in record.getMessage()


def test_user_login_and_static_token(tokens):
    with Mosquitto(tcp=True, websockets=True) as broker:
        with _bus(broker, tokens, username="alice", password="pw") as bus:
            assert bus.token.claims["kind"] == "user" and bus.token.claims["sub"] == "alice"
        answer = tokens.issue(APP, "svc")
        with _bus(broker, tokens, token=answer["access_token"], refresh_token=answer["refresh_token"],
                  client_id="svc", client_secret="s3cret") as bus:
            old = bus.token.access_token
            bus.refresh_token()
            assert bus.token.access_token != old and bus.is_connected()
        calls = []
        with _bus(broker, tokens, token_provider=lambda: calls.append(1) or tokens.issue(APP, "p")) as bus:
            assert calls and bus.token.claims["sub"] == "p"


def test_rest_errors_are_clear(tokens):
    with pytest.raises(AuthRejected, match="401"):
        ClientCredentials(tokens.url, APP, "svc", "wrong").fetch()
    with pytest.raises(AuthRejected):
        UserLogin(tokens.url, APP, "alice", "nope").fetch()
    with pytest.raises(AuthRequestError, match="404"):
        ClientCredentials(tokens.url + "/nothing-here", APP, "svc", "s3cret").fetch()
    with pytest.raises(AuthUnreachable, match="cannot reach"):
        ClientCredentials("http://127.0.0.1:9", APP, "svc", "s3cret", timeout=2).fetch()
    with pytest.raises(AuthBadAnswer, match="access_token"):
        Token.from_answer({"token_type": "Bearer"})
    secret_holder = ClientCredentials(tokens.url, APP, "svc", "s3cret")
    assert "s3cret" not in repr(secret_holder)
    tok = secret_holder.fetch()
    assert tok.access_token not in repr(tok) and tok.refresh_token not in repr(tok)
    assert jwt_claims(tok.access_token)["appId"] == APP
    with pytest.raises(ValueError, match="not a JWT"):
        jwt_claims("abc")


def test_package_exports():
    assert sermas_bus.SermasClient is SermasClient
    assert hasattr(sermas_bus, "json") and hasattr(sermas_bus, "topics")


def test_topic_parameters_come_from_dataclass_payloads(broker):
    """Regression: the JSON encoder sends a dataclass as the object of its
    fields, but topic parameters were read from dict payloads only, so
    publishing a dataclass event failed with 'missing parameter'."""
    import dataclasses

    @dataclasses.dataclass
    class Record:
        sessionId: str

    @dataclasses.dataclass
    class Changed:
        appId: str
        record: Record
        operation: str = "updated"

    got = []
    with _bus(broker) as bus, _bus(broker) as pub:
        bus.subscribe("session.sessionChanged", lambda e, m: got.append((m.params["sessionId"], e)))
        time.sleep(0.2)
        pub.publish("session.sessionChanged", Changed(APP, Record("s9"))).wait_for_publish(5)
        assert _wait(lambda: got)
    assert got == [("s9", {"appId": APP, "record": {"sessionId": "s9"}, "operation": "updated"})]
