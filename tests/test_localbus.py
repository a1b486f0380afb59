"""sermas_bus.testing.LocalBus: a real mosquitto with the sermas_jwt_auth plugin
(plugin/sermas_jwt_auth.c) and the platform's token endpoints, exercised with
sermas_bus.client."""

from __future__ import annotations

import base64
import gc
import importlib.metadata
import json
import os
import pathlib
import queue
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest

import sermas_bus.client as mqtt
from sermas_bus import localbus
from sermas_bus.auth import AuthRejected, AuthRequestError, AuthServerError, ClientCredentials, UserLogin, post_json
from sermas_bus.errors import NotAuthorizedError, PublishError
from sermas_bus.testing import LocalBus
from sermas_bus.tokens import make_jwt, verify_jwt
from support import pgrep

# the plugin's fixtures, imported rather than listed in pytest_plugins: once the
# package is installed its pytest11 entry point registers the same module, and
# pytest refuses to register one module under two names
from sermas_bus.pytest_plugin import local_bus, local_bus_config  # noqa: F401

pytest_plugins = ["pytester"]

WAIT = 10.0
APPS = {
    "myapp": {"clients": {"svc": "svc-secret"}, "users": {"alice": "alice-pw"}},
    "other": {"clients": {"svc2": "svc2-secret"}},
}


@pytest.fixture(scope="module")
def bus():
    with LocalBus(apps=APPS, token_ttl=300) as b:
        yield b


class Probe:
    """A sermas_bus client whose callbacks feed queues (loop_start)."""

    def __init__(self, token=None, password="sermas", protocol=None, transport="tcp", **kw):
        if protocol is not None:
            kw["protocol"] = protocol
        self.client_id = "probe-" + uuid.uuid4().hex[:12]
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  transport=transport, **kw)
        if token is not None:
            self.client.username_pw_set(token, password)
        self.subacks: "queue.Queue" = queue.Queue()
        self.messages: "queue.Queue" = queue.Queue()
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put([int(r.value) for r in rcs])
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)

    def connect(self, url):
        """Connect; a refusal (reported through on_connect, as in paho) is
        raised here so the plugin's answers can be asserted directly."""
        self.client.connect(url)
        if self.client.last_connect_error is not None:
            raise self.client.last_connect_error
        self.client.loop_start()
        return self

    def subscribe(self, topic, qos=1):
        """Subscribe and return the SUBACK reason code."""
        self.client.subscribe(topic, qos)
        (code,) = self.subacks.get(timeout=WAIT)
        return code

    def publish(self, topic, payload=b"x", qos=1):
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(WAIT)

    def close(self):
        self.client.close()


@pytest.fixture
def probes():
    made = []

    def make(*args, **kw):
        p = Probe(*args, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def wait_for_log(bus, text, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        log = bus.log()
        if text in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError("{!r} not in the broker log:\n{}".format(text, log[-3000:]))
        time.sleep(0.05)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims(app="myapp", ttl=300.0, **extra):
    now = time.time()
    out = {"sub": "svc", "appId": app, "clientId": "svc", "iat": int(now), "exp": now + ttl,
           "jti": 1, "kind": "client"}
    out.update(extra)
    return out


def signed(header, body, secret):
    """A JWS with an arbitrary header, HMAC-SHA256 signed."""
    import hashlib
    import hmac
    signing_input = "{}.{}".format(b64(json.dumps(header).encode()), b64(json.dumps(body).encode()))
    sig = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return "{}.{}".format(signing_input, b64(sig))


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ------------------------------------------------------------------ lifecycle
def test_urls_and_attributes(bus):
    assert bus.api_url.startswith("http://127.0.0.1:")
    port = int(bus.api_url.rsplit(":", 1)[1])
    assert bus.mqtt_url == "ws://127.0.0.1:%d/mqtt" % port           # one port, as the platform
    assert bus.url("ws") == "ws://127.0.0.1:%d/mqtt" % bus.broker.ws_port   # mosquitto's own listener
    assert bus.tcp_url == "tcp://127.0.0.1:%d" % bus.broker.port
    assert isinstance(bus.secret, bytes) and len(bus.secret) == 32
    assert bus.is_running()
    assert "running" in repr(bus)
    assert "sermas_jwt_auth: HS256 JWT authentication" in bus.log()
    # the secret file is private
    assert os.stat(bus.secret_file).st_mode & 0o777 == 0o600
    with open(bus.secret_file, "rb") as f:
        assert f.read() == bus.secret


def test_up_and_down_leaves_nothing():
    b = LocalBus(apps=APPS).start()
    pid = b.broker.pid
    dirs = [b.tmpdir, b.broker.tmpdir]
    conf = b.broker.conf_path
    api_port = int(b.api_url.rsplit(":", 1)[1])
    token_thread = b.token_server._thread
    ports = list(b.broker.listeners.values())
    assert all(os.path.isdir(d) for d in dirs)
    found = pgrep("-f", conf, stdout=subprocess.PIPE, text=True)
    assert str(pid) in found.stdout.split()

    b.close()
    assert not pid_alive(pid)
    assert pgrep("-f", conf, stdout=subprocess.DEVNULL).returncode == 1
    for d in dirs:
        assert not os.path.exists(d), d
    for port in [api_port] + ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not token_thread.is_alive()
    assert not b.is_running()
    b.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        b.start()


def test_finalizer_cleans_up_a_forgotten_bus():
    b = LocalBus(apps=APPS).start()
    pid, dirs = b.broker.pid, [b.tmpdir, b.broker.tmpdir]
    del b
    gc.collect()
    assert not pid_alive(pid)
    assert not any(os.path.exists(d) for d in dirs)


def test_not_started():
    b = LocalBus()
    try:
        with pytest.raises(RuntimeError, match="not started"):
            b.mqtt_url
        with pytest.raises(RuntimeError, match="not started"):
            b.issue_token("myapp")
        assert "stopped" in repr(b)
    finally:
        b.close()


def test_bad_configuration():
    with pytest.raises(ValueError, match="appId"):
        LocalBus(apps={"a/b": {}})
    with pytest.raises(ValueError, match="unknown keys"):
        LocalBus(apps={"a": {"client": {}}})
    with pytest.raises(ValueError, match="secret"):
        LocalBus(apps={"a": {"clients": {"c": ""}}})
    with pytest.raises(ValueError, match="secret must be"):
        LocalBus(secret=b"")


def test_missing_plugin_names_the_debian_packages(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="mosquitto-dev, libssl-dev and libcjson-dev"):
        LocalBus(plugin=str(tmp_path / "nope.so"))
    monkeypatch.setenv(localbus.PLUGIN_ENV, str(tmp_path / "nope.so"))
    with pytest.raises(RuntimeError, match="apt-get install mosquitto-dev"):
        LocalBus()


def test_missing_mosquitto_names_the_debian_package(monkeypatch):
    from sermas_bus import testing
    monkeypatch.setattr(testing.shutil, "which", lambda name: None)
    monkeypatch.setattr(testing.os, "access", lambda path, mode: False)
    with pytest.raises(RuntimeError, match=r"Debian package 'mosquitto' \(apt-get install mosquitto\)"):
        LocalBus()


def test_plugin_is_not_a_python_module():
    """The plugin is a plain shared library: no Python symbols, only the three
    plugin entry points exported."""
    path = localbus.plugin_path()
    assert path.endswith("/_sermas_jwt_auth.so")
    nm = subprocess.run(["nm", "-D", path], stdout=subprocess.PIPE, text=True)
    if nm.returncode != 0:
        pytest.skip("nm not available")
    names = [line.split()[-1] for line in nm.stdout.splitlines() if line.strip()]
    assert not [n for n in names if n.startswith(("Py", "_Py"))]
    exported = sorted(line.split()[-1] for line in nm.stdout.splitlines() if " T " in line)
    assert exported == ["mosquitto_plugin_cleanup", "mosquitto_plugin_init", "mosquitto_plugin_version"]


# ------------------------------------------------------------- authentication
@pytest.mark.parametrize("kind", ["tcp", "ws"])
def test_valid_token_connects(bus, probes, kind):
    token = bus.issue_token("myapp", "svc")
    p = probes(token, transport="websockets" if kind == "ws" else "tcp")
    p.connect(bus.url(kind))
    assert p.client.is_connected()
    log = wait_for_log(bus, "client {} authenticated for app myapp".format(p.client_id))
    # mosquitto logs the username; LocalBus.log() hides the token
    wait_for_log(bus, "as {} (p5, c1, k60, u'<jwt>')".format(p.client_id))
    assert token not in log and token in bus.broker.log()


def test_password_is_not_needed(bus, probes):
    p = probes(bus.issue_token("myapp"), password=None).connect(bus.tcp_url)
    assert p.client.is_connected()


def test_fractional_exp(bus, probes):
    token = make_jwt(claims(ttl=3.25), bus.secret)
    assert isinstance(verify_jwt(token, bus.secret)["exp"], float)
    p = probes(token).connect(bus.tcp_url)
    assert p.client.is_connected()


REFUSALS = {
    "bad signature": (lambda bus: make_jwt(claims(), b"not the broker's secret"),
                      "JWT signature does not verify with this broker's secret"),
    "tampered claims": (lambda bus: tamper(make_jwt(claims(), bus.secret)),
                        "JWT signature does not verify"),
    "expired": (lambda bus: bus.issue_token("myapp", ttl=-1), "JWT has expired"),
    "garbage": (lambda bus: "not-a-token", "username is not a JWT"),
    "not base64": (lambda bus: "a!.b.c", "JWT header is not a base64url-encoded JSON object"),
    "claims not an object": (lambda bus: signed({"alg": "HS256"}, [1], bus.secret),
                             "JWT claims are not a base64url-encoded JSON object"),
    "signature not base64": (lambda bus: make_jwt(claims(), bus.secret)[:-1] + "!", "not a JWT"),
    "four parts": (lambda bus: make_jwt(claims(), bus.secret) + ".x", "not a JWT"),
    "no username": (lambda bus: None, "no username"),
    "alg none": (lambda bus: "{}.{}.".format(b64(b'{"alg":"none"}'), b64(json.dumps(claims()).encode())),
                 "JWT alg is not HS256"),
    "alg HS512": (lambda bus: signed({"alg": "HS512", "typ": "JWT"}, claims(), bus.secret),
                  "JWT alg is not HS256"),
    "crit header": (lambda bus: signed({"alg": "HS256", "crit": ["x"]}, claims(), bus.secret),
                    "JWT alg is not HS256"),
    "no appId": (lambda bus: make_jwt({"sub": "svc", "exp": time.time() + 60}, bus.secret),
                 "no usable appId"),
    "appId with slash": (lambda bus: make_jwt(claims(app="my/app"), bus.secret), "no usable appId"),
    "exp as string": (lambda bus: make_jwt(claims(exp="9999999999"), bus.secret), "no numeric exp"),
    "nbf in the future": (lambda bus: make_jwt(claims(nbf=time.time() + 3600), bus.secret), "not valid yet"),
}


def tamper(token):
    header, body, sig = token.split(".")
    c = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    c["appId"] = "other"
    return "{}.{}.{}".format(header, b64(json.dumps(c).encode()), sig)


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_tokens(bus, probes, case):
    make_token, reason = REFUSALS[case]
    token = make_token(bus)
    p = probes(token)
    with pytest.raises(NotAuthorizedError, match=r"Not authorized \(CONNACK code 135\)") as err:
        p.connect(bus.tcp_url)
    assert err.value.reason_code == 0x87
    assert "valid, unexpired JWT" in str(err.value)
    # the broker log says why, and never shows the refused token
    log = wait_for_log(bus, "refused client {} from 127.0.0.1: ".format(p.client_id))
    line = [ln for ln in log.splitlines() if "refused client " + p.client_id in ln][0]
    assert reason in line
    assert token is None or token not in bus.broker.log()


def test_refused_over_websockets_and_mqtt311(bus, probes):
    p = probes(bus.issue_token("myapp", ttl=-5), transport="websockets")
    with pytest.raises(NotAuthorizedError, match="CONNACK code 135"):
        p.connect(bus.mqtt_url)
    p = probes("garbage", protocol=mqtt.MQTTv311)
    with pytest.raises(NotAuthorizedError, match=r"not authorised \(CONNACK code 5\)") as err:
        p.connect(bus.tcp_url)
    assert err.value.reason_code == 5


# -------------------------------------------------------------- authorisation
def test_publish_subscribe_on_own_app(bus, probes):
    p = probes(bus.issue_token("myapp", "svc")).connect(bus.tcp_url)
    assert p.subscribe("app/myapp/dialogue/messages/+") == 1
    p.publish("app/myapp/dialogue/messages/s1", b'{"appId": "myapp"}')
    msg = p.messages.get(timeout=WAIT)
    assert (msg.topic, msg.payload) == ("app/myapp/dialogue/messages/s1", b'{"appId": "myapp"}')


def test_messages_between_clients_of_the_same_app_over_ws_and_tcp(bus, probes):
    sub = probes(bus.issue_token("myapp", "svc"), transport="websockets").connect(bus.mqtt_url)
    pub = probes(bus.issue_token("myapp", "other-client")).connect(bus.tcp_url)
    assert sub.subscribe("app/myapp/ui/status/#") == 1
    pub.publish("app/myapp/ui/status", b"ok")
    assert sub.messages.get(timeout=WAIT).payload == b"ok"


@pytest.mark.parametrize("topic,allowed", [
    ("app/myapp/x/y", True),
    ("app/myapp/dialogue/messages/#", True),
    ("app/myapp/dialogue/messages", True),
    ("user/myapp/session/1", True),
    # the platform's rule: <resource>/<scope> named, no shared subscriptions
    ("app/myapp/x", False),
    ("app/myapp/#", False),
    ("app/myapp/+/y", False),
    ("app/myapp/dialogue/+", False),
    ("$share/workers/app/myapp/tasks/x/+", False),
    ("app/other/x", False),
    ("app/+/x", False),
    ("app/#", False),
    ("#", False),
    ("+/myapp/x", False),
    ("$SYS/#", False),
    ("$SYS/broker/uptime", False),
    ("system/x", False),
    ("user/other/x", False),
    ("app/myapp", False),
    ("app/myapp/", False),
    ("app/myappX/x", False),
    ("$share/workers/app/other/x", False),
])
def test_subscribe_acl(bus, probes, topic, allowed):
    p = probes(bus.issue_token("myapp")).connect(bus.tcp_url)
    assert p.subscribe(topic) == (1 if allowed else 0x87)


@pytest.mark.parametrize("topic,allowed", [
    ("app/myapp/dialogue/messages/s1", True),
    ("app/myapp/dialogue/messages/+", True),
    ("app/myapp/ui/content/#", True),
    ("app/myapp/ui/status/+", False),
    ("app/myapp/dialogue/tool/+", False),
])
def test_permissions_limit_a_token_to_its_resource_scopes(bus, probes, topic, allowed):
    """A token with permissions (as Keycloak client scopes) may use only
    app/<appId>/<resource>/<scope>/... for the <resource>:<scope> it holds."""
    token = bus.issue_token("myapp", "limited", permissions=["dialogue:messages", "ui:content"])
    p = probes(token).connect(bus.tcp_url)
    assert p.subscribe(topic) == (1 if allowed else 0x87)


def test_superuser_token_reaches_system_topics(bus, probes):
    p = probes(bus.issue_token("myapp", "platform", superuser=True)).connect(bus.tcp_url)
    assert p.subscribe("system/#") == 1
    assert p.subscribe("app/other/#") == 1


def test_shared_subscriptions_only_where_the_broker_allows_them(probes):
    token_app = {"myapp": {"clients": {"svc": "s"}}}
    for allowed in (False, True):
        with localbus.LocalBus(apps=token_app, shared_subscriptions=allowed) as shared_bus:
            p = probes(shared_bus.issue_token("myapp", "svc")).connect(shared_bus.tcp_url)
            assert p.subscribe("$share/workers/app/myapp/tasks/x/+") == (1 if allowed else 0x87)
            assert p.subscribe("$share/workers/app/myapp/#") == 0x87   # the filter's own rule still holds


def test_client_permissions_from_the_apps_config_reach_its_tokens():
    apps = {"myapp": {"clients": {"svc": {"secret": "s3", "permissions": ["dialogue:messages"]}}}}
    with localbus.LocalBus(apps=apps) as b:
        token = ClientCredentials(b.api_url, "myapp", "svc", "s3").fetch()
        assert token.claims["permissions"] == ["dialogue:messages"]
        refreshed = ClientCredentials(b.api_url, "myapp", "svc", "s3").refresh(token)
        assert refreshed.claims["permissions"] == ["dialogue:messages"]
    with pytest.raises(ValueError, match="'<resource>:<scope>'"):
        localbus.LocalBus(apps={"myapp": {"clients": {"svc": {"secret": "s", "permissions": ["ui"]}}}})


def test_other_apps_topic_refused(bus, probes):
    me = probes(bus.issue_token("myapp")).connect(bus.tcp_url)
    them = probes(bus.issue_token("other", "svc2")).connect(bus.tcp_url)
    assert them.subscribe("app/other/secret/data/#") == 1
    # MQTT 5: SUBACK 0x87, and a QoS 1 publish is answered with PUBACK 0x87
    assert me.subscribe("app/other/secret/data/#") == 0x87
    with pytest.raises(PublishError, match=r"Not authorized \(reason code 0x87\)"):
        me.publish("app/other/secret/data/x", b"intrusion", qos=1)
    # QoS 0 cannot be answered: mosquitto drops it
    me.publish("app/other/secret/data/y", b"intrusion", qos=0)
    # MQTT 3.1.1: SUBACK 0x80, and the PUBACK cannot carry a reason: the
    # publish "succeeds" and mosquitto 2.0.11 drops the message
    old = probes(bus.issue_token("myapp"), protocol=mqtt.MQTTv311).connect(bus.tcp_url)
    assert old.subscribe("app/other/secret/data/#") == 0x80
    old.publish("app/other/secret/data/z", b"intrusion", qos=1)
    them.publish("app/other/secret/data/mine", b"own")
    assert them.messages.get(timeout=WAIT).payload == b"own"   # nothing before it
    assert them.messages.empty()
    log = wait_for_log(bus, "denied write 'app/other/secret/data/z'")
    assert "Denied PUBLISH from {}".format(old.client_id) in log


def sleep_past(token, secret):
    """Sleep until token has expired; fail if it expired before this call
    (the test's steps before it were too slow for the token's life)."""
    left = verify_jwt(token, secret)["exp"] - time.time()   # raises if already expired
    time.sleep(left + 0.3)


def test_token_expiring_while_connected_loses_access(bus, probes):
    token = bus.issue_token("myapp", ttl=3)
    expiring = probes(token).connect(bus.tcp_url)
    assert expiring.subscribe("app/myapp/expiry/data/#") == 1
    expiring.publish("app/myapp/expiry/data/a", b"before")
    assert expiring.messages.get(timeout=WAIT).payload == b"before"
    other = probes(bus.issue_token("myapp")).connect(bus.tcp_url)
    assert other.subscribe("app/myapp/expiry/data/#") == 1

    sleep_past(token, bus.secret)
    # still connected, but nothing is allowed any more: not to publish ...
    assert expiring.client.is_connected()
    with pytest.raises(PublishError, match="0x87"):
        expiring.publish("app/myapp/expiry/data/b", b"after")
    # ... nor to subscribe ...
    assert expiring.subscribe("app/myapp/expiry2/data/#") == 0x87
    # ... nor to receive on the subscription it made before
    other.publish("app/myapp/expiry/data/c", b"for everyone")
    assert other.messages.get(timeout=WAIT).payload == b"for everyone"
    with pytest.raises(queue.Empty):
        expiring.messages.get(timeout=0.5)
    wait_for_log(bus, "token of client {} (app myapp) has expired".format(expiring.client_id))


# -------------------------------------------------------------------- tokens
def test_refresh_flow(bus, probes):
    """A token is refreshed through the refresh endpoint before it expires
    (the endpoint needs a valid Bearer, as on the platform); once the old one
    has expired, a reconnect with the new one restores access."""
    answer = bus.issue("myapp", "svc", ttl=3)
    p = probes(answer["access_token"]).connect(bus.tcp_url)
    assert p.subscribe("app/myapp/refresh/data/#") == 1
    refresh = {"refreshToken": answer["refresh_token"], "appId": "myapp", "clientId": "svc",
               "clientSecret": "svc-secret"}
    with pytest.raises(AuthRejected, match="HTTP 401"):            # not public
        post_json(bus.api_url + "/api/platform/token/refresh_token", refresh)
    fresh = post_json(bus.api_url + "/api/platform/token/refresh_token", refresh, bearer=answer["access_token"])
    assert fresh["access_token"] != answer["access_token"]
    assert verify_jwt(fresh["access_token"], bus.secret)["appId"] == "myapp"
    sleep_past(answer["access_token"], bus.secret)
    with pytest.raises(PublishError):
        p.publish("app/myapp/refresh/data/a", b"expired")
    with pytest.raises(AuthRejected, match="HTTP 401"):            # an expired bearer is refused
        post_json(bus.api_url + "/api/platform/token/refresh_token", refresh, bearer=answer["access_token"])
    p.client.reauthenticate(fresh["access_token"], "sermas")
    assert p.client.is_connected()
    assert p.subscribe("app/myapp/refresh/data/#") == 1
    p.publish("app/myapp/refresh/data/b", b"fresh")
    assert p.messages.get(timeout=WAIT).payload == b"fresh"
    # a refresh token works once; the platform passes Keycloak's refusal on as a 500
    with pytest.raises(AuthServerError, match="HTTP 500"):
        post_json(bus.api_url + "/api/platform/token/refresh_token", refresh, bearer=fresh["access_token"])
    # without a refresh token but with the secret: a fresh client-credentials token
    again = post_json(bus.api_url + "/api/platform/token/refresh_token",
                      {"appId": "myapp", "clientId": "svc", "clientSecret": "svc-secret"},
                      bearer=fresh["access_token"])
    assert verify_jwt(again["access_token"], bus.secret)["clientId"] == "svc"


def test_user_refresh_needs_the_client_id(bus):
    """/api/auth/refresh is public and needs clientId (default <appId>-application)."""
    login = post_json(bus.api_url + "/api/auth/login",
                      {"appId": "myapp", "username": "alice", "password": "alice-pw"})
    with pytest.raises(AuthServerError, match="HTTP 500"):
        post_json(bus.api_url + "/api/auth/refresh", {"refreshToken": login["refresh_token"]})
    user = UserLogin(bus.api_url, "myapp", "alice", "alice-pw")
    assert user.client_id == "myapp-application"
    token = user.fetch()
    fresh = post_json(bus.api_url + "/api/auth/refresh",
                      {"refreshToken": token.refresh_token, "clientId": user.client_id})
    assert verify_jwt(fresh["access_token"], bus.secret)["sub"] == "alice"
    token = user.fetch()
    refreshed = user.refresh(token)       # through /api/auth/refresh, not a new login
    path, body = bus._state.tokens.requests[-1]
    assert path == "/api/auth/refresh" and body["clientId"] == "myapp-application"
    assert refreshed.access_token != token.access_token


def test_client_credentials_and_user_login(bus, probes):
    creds = ClientCredentials(bus.api_url, "myapp", "svc", "svc-secret")
    token = creds.fetch()
    assert token.claims["appId"] == "myapp" and token.claims["clientId"] == "svc"
    p = probes(token.access_token).connect(bus.mqtt_url.replace("ws://", "http://"))
    assert p.subscribe("app/myapp/x/y") == 1
    token2 = creds.refresh(token)
    assert any(path.endswith("/refresh_token") for path, _ in bus.token_server.requests)
    assert token2.access_token != token.access_token

    user = UserLogin(bus.api_url, "myapp", "alice", "alice-pw").fetch()
    assert user.claims["kind"] == "user" and user.claims["sub"] == "alice"
    u = probes(user.access_token, transport="websockets").connect(bus.mqtt_url)
    assert u.subscribe("user/myapp/alice/inbox/#") == 1
    assert u.subscribe("app/other/x/y") == 0x87


def test_tls_listeners():
    with LocalBus(apps=APPS, tls=True) as b:
        assert os.path.isfile(b.ca_file)
        for kind, transport in (("mqtts", "tcp"), ("wss", "websockets")):
            p = Probe(b.issue_token("myapp"), transport=transport)
            try:
                p.client.tls_set(ca_certs=b.ca_file)
                p.connect(b.url(kind))
                assert p.subscribe("app/myapp/tls/check") == 1
            finally:
                p.close()
            bad = Probe("garbage", transport=transport)
            try:
                bad.client.tls_set(ca_certs=b.ca_file)
                with pytest.raises(NotAuthorizedError):
                    bad.connect(b.url(kind))
            finally:
                bad.close()


# ------------------------------------------------------------- pytest plugin
def test_local_bus_fixture(local_bus, probes):
    from sermas_bus import pytest_plugin as pp
    assert local_bus.is_running()
    token = ClientCredentials(local_bus.api_url, pp.DEFAULT_APP, pp.DEFAULT_CLIENT,
                              pp.DEFAULT_CLIENT_SECRET).fetch()
    p = probes(token.access_token, transport="websockets").connect(local_bus.mqtt_url)
    topic = "app/{}/ui/status".format(pp.DEFAULT_APP)
    assert p.subscribe(topic) == 1
    p.publish(topic, b"hi")
    assert p.messages.get(timeout=WAIT).payload == b"hi"


def test_entry_point_is_declared():
    pyproject = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
    text = pyproject.read_text()
    assert '[project.entry-points.pytest11]\nsermas_bus = "sermas_bus.pytest_plugin"' in text


def _entry_point_installed():
    eps = importlib.metadata.entry_points()
    group = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", [])   # 3.9
    return any(ep.name == "sermas_bus" and ep.value == "sermas_bus.pytest_plugin" for ep in group)


def test_fixture_in_a_pytest_run(pytester):
    """A project's test session gets ``local_bus`` from the plugin (the
    entry point when the package is installed with it, else ``-p``) and
    configures it through ``local_bus_config``."""
    pytester.makeconftest("""
        import pytest

        @pytest.fixture(scope="session")
        def local_bus_config():
            return {"apps": {"demo": {"clients": {"c": "s"}}}, "token_ttl": 60}
    """)
    pytester.makepyfile("""
        import sermas_bus.client as mqtt
        from sermas_bus.auth import ClientCredentials

        BUSES = []

        def test_connect(local_bus):
            BUSES.append(local_bus)
            token = ClientCredentials(local_bus.api_url, "demo", "c", "s").fetch()
            assert 59 < token.seconds_left() <= 60
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            c.username_pw_set(token.access_token, "sermas")
            c.connect(local_bus.mqtt_url)
            c.close()

        def test_same_bus_for_the_session(local_bus):
            assert BUSES == [local_bus]
    """)
    args = [] if _entry_point_installed() else ["-p", "sermas_bus.pytest_plugin"]
    result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_client_refresh_falls_back_to_the_credentials_after_a_500(bus):
    """Regression: the platform answers a refused refresh token with HTTP 500;
    only 4xx fell back to a fresh fetch, so a stale refresh token broke the
    client's token refresh."""
    creds = ClientCredentials(bus.api_url, "myapp", "svc", "svc-secret")
    token = creds.fetch()
    creds.refresh(token)                        # uses (and so spends) its refresh token
    again = creds.refresh(token)                # the spent one: HTTP 500, then a fresh fetch
    assert verify_jwt(again.access_token, bus.secret)["clientId"] == "svc"
    paths = [path for path, _body in bus._state.tokens.requests[-2:]]
    assert paths == ["/api/platform/token/refresh_token", "/api/platform/token/access_token"]


def test_localbus_publishes_as_the_platform(bus, probes):
    """LocalBus.publish: MQTT 3.1.1, QoS 0, superuser, the platform's fill rules."""
    p = probes(bus.issue_token("myapp", "svc")).connect(bus.tcp_url)
    assert p.subscribe("app/myapp/dialogue/messages/+") == 1
    topic = bus.publish("dialogue.messages", {"appId": "myapp", "sessionId": "top",
                                              "record": {"sessionId": "rec"}, "text": "hi"})
    assert topic == "app/myapp/dialogue/messages/rec"           # record.* overrides the top level
    msg = p.messages.get(timeout=WAIT)
    assert (msg.topic, msg.qos, json.loads(msg.payload)["text"]) == (topic, 0, "hi")
    assert bus.publish("dialogue.messages", b"raw", appId="myapp", sessionId="s2") == \
        "app/myapp/dialogue/messages/s2"
    assert p.messages.get(timeout=WAIT).payload == b"raw"
    with pytest.raises(ValueError, match="missing parameter 'appId'"):   # no appId: nothing is filled
        bus.publish("dialogue.messages", {"sessionId": "s3"})
    assert "as sermas-platform-" in bus.log() and "(p2, c1" in bus.log()   # mosquitto says p2 for MQTT 3.1.1


# ------------------------------------------------------------- one port
def test_sermas_client_needs_only_the_api_url(bus):
    """As on the platform: the REST API and /mqtt share one port, so the
    broker URL derived from base_url works with no mqtt_url (regression: it
    pointed at a port with no broker)."""
    from sermas_bus import SermasClient
    got = queue.Queue()
    assert bus.mqtt_url == bus.api_url.replace("http://", "ws://") + "/mqtt"
    with SermasClient(bus.api_url, app_id="myapp", client_id="svc", client_secret="svc-secret") as me, \
            SermasClient(bus.api_url, app_id="myapp", client_id="svc", client_secret="svc-secret") as other:
        assert me.mqtt_url == bus.mqtt_url
        me.subscribe("dialogue.messages", lambda event, msg: got.put(event))
        other.publish("dialogue.messages", {"sessionId": "s1", "text": "one port"}).wait_for_publish(10)
        assert got.get(timeout=WAIT)["text"] == "one port"


def test_front_refuses_what_is_not_mqtt_over_websockets(bus):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(bus.api_url + "/mqtt", timeout=5)
    info.value.close()
    assert info.value.code == 400
    with pytest.raises(AuthRequestError, match="404"):
        post_json(bus.api_url + "/api/nothing", {})


def test_one_port_with_tls():
    """tls=True: the front is HTTPS and /mqtt is wss://, with the bus's CA."""
    import ssl as _ssl
    from sermas_bus import SermasClient
    with LocalBus(apps=APPS, tls=True) as tls_bus:
        assert tls_bus.api_url.startswith("https://") and tls_bus.mqtt_url.startswith("wss://")
        ctx = _ssl.create_default_context(cafile=tls_bus.ca_file)
        with urllib.request.urlopen(urllib.request.Request(
                tls_bus.api_url + "/api/platform/token", data=json.dumps(
                    {"appId": "myapp", "clientId": "svc", "clientSecret": "svc-secret"}).encode(),
                headers={"Content-Type": "application/json"}), context=ctx, timeout=5) as resp:
            token = json.loads(resp.read())["access_token"]
        got = queue.Queue()
        with SermasClient(tls_bus.api_url, app_id="myapp", token=token, tls_context=ctx) as me:
            me.subscribe("ui.content", lambda event, msg: got.put(event), no_local=False)
            me.publish("ui.content", {"x": 1}).wait_for_publish(10)
            assert got.get(timeout=WAIT) == {"x": 1}


@pytest.mark.parametrize("data, size", [
    (b"\x30", None), (b"\x30\x00", 2), (b"\xd0\x00\xd0\x00", 2), (b"\x30\x7f", 129),
    (b"\x30\x80", None), (b"\x30\x80\x01", 131), (b"\x30\xff\xff\xff\x7f", 5 + 268435455),
    (b"\x30\xff\xff\xff\xff\x01", 6),     # malformed: passed through whole
])
def test_front_frames_one_mqtt_packet_per_websocket_frame(data, size):
    from sermas_bus._front import _packet_size
    assert _packet_size(bytearray(data)) == size


# ------------------------------------------------------------- discovery
@pytest.fixture
def restore_topics():
    from sermas_bus import topics
    saved = topics.table
    topics.table = topics.TopicTable.from_dict(topics.load_table())
    yield topics
    topics.table = saved


def test_discovery_endpoints_as_the_platform(bus):
    from sermas_bus.auth import get_json
    tree = get_json(bus.api_url + "/api/platorm/topics")["resources"]
    assert "messages" in tree["dialogue"] and "content" in tree["ui"]
    with pytest.raises(AuthRejected):
        get_json(bus.api_url + "/api/platform/app/myapp/client/svc/topics")
    token = bus.issue_token("myapp", "svc")
    listed = get_json(bus.api_url + "/api/platform/app/myapp/client/svc/topics", bearer=token)
    assert "app/:appId/dialogue/messages/:sessionId" in listed
    with pytest.raises(AuthRequestError, match="404"):
        get_json(bus.api_url + "/api/platform/app/myapp/client/nobody/topics", bearer=token)


def test_discovery_follows_the_clients_permissions():
    from sermas_bus.auth import get_json
    apps = {"myapp": {"clients": {"svc": {"secret": "s", "permissions": ["dialogue:messages"]}}}}
    with LocalBus(apps=apps) as b:
        token = ClientCredentials(b.api_url, "myapp", "svc", "s").fetch().access_token
        assert get_json(b.api_url + "/api/platform/app/myapp/client/svc/topics", bearer=token) == \
            ["app/:appId/dialogue/messages/:sessionId"]
        assert get_json(b.api_url + "/api/platorm/topics/user", bearer=token) == \
            {"resources": {"dialogue": ["messages"]}}


def test_discover_topics_merges_modules_and_older_releases(restore_topics):
    from sermas_bus import SermasClient
    extra = {"mymod": {"thing": "app/:appId/mymod/thing/:id"},
             # an older release: agentSpeech without :messageId
             "dialogue": {"agentSpeech": "app/:appId/dialogue/speech/:sessionId/:chunkId"}}
    with LocalBus(apps=APPS, extra_topics=extra) as b:
        bus = SermasClient(b.api_url, app_id="myapp", client_id="svc", client_secret="svc-secret")
        result = bus.discover_topics()
        assert result["added"] == {"mymod.thing": "app/:appId/mymod/thing/:id"}
        assert result["changed"] == {"dialogue.agentSpeech": (
            "app/:appId/dialogue/speech/:sessionId/:messageId/:chunkId",
            "app/:appId/dialogue/speech/:sessionId/:chunkId")}
        assert "mymod" in result["resources"]
        assert restore_topics.match("app/myapp/mymod/thing/7") == ("mymod.thing", {"appId": "myapp", "id": "7"})
        assert bus.topic("dialogue.agentSpeech", sessionId="s", chunkId="0") == "app/myapp/dialogue/speech/s/0"
        assert bus.discover_topics()["added"] == {}        # a second time: nothing new
        bus.close()


def test_discover_topics_offline_keeps_the_table(restore_topics):
    from sermas_bus import SermasClient
    from sermas_bus.auth import AuthUnreachable
    before = {n: restore_topics.template(n) for n in restore_topics.names()}
    bus = SermasClient("http://127.0.0.1:9", app_id="myapp", token=_expiring_free_token())
    with pytest.raises(AuthUnreachable, match="cannot reach"):
        bus.discover_topics()
    assert {n: restore_topics.template(n) for n in restore_topics.names()} == before


def _expiring_free_token():
    from sermas_bus.tokens import make_jwt
    return make_jwt({"appId": "myapp", "clientId": "svc", "exp": time.time() + 600}, b"k")


def test_sermas_share_and_wildcards_are_refused_as_on_the_platform(bus):
    from sermas_bus import SermasClient
    from sermas_bus.errors import SubscriptionRefusedError
    with SermasClient(bus.api_url, app_id="myapp", client_id="svc", client_secret="svc-secret") as me:
        with pytest.raises(SubscriptionRefusedError, match="refuses shared subscriptions") as info:
            me.subscribe("dialogue.messages", lambda e, m: None, share="workers")
        assert info.value.filter == "$share/workers/app/myapp/dialogue/messages/+"
        with pytest.raises(SubscriptionRefusedError, match=r"app/myapp/dialogue/messages/\+ instead"):
            me.subscribe("app/myapp/#", lambda e, m: None)
