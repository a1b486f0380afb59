"""The sermas_jwt_auth plugin's C logic without a broker: tests/plugin_harness.c
includes plugin/sermas_jwt_auth.c, stubs the broker API, and is built here
with AddressSanitizer, UBSan and LeakSanitizer.  Token verification is fed
valid tokens, every kind of broken token and a few thousand random mutations;
the topic rules a table; the plugin life cycle thousands of fake clients."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pathlib
import random
import shutil
import subprocess

import pytest

from sermas_bus.tokens import make_jwt

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECRET = b"unit-test-secret-\x00\xff"
NOW = 1_800_000_000.0

READ, WRITE, SUBSCRIBE, UNSUBSCRIBE = 1, 2, 4, 8


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler")
    if not (os.path.exists("/usr/include/mosquitto_broker.h") and os.path.exists("/usr/include/cjson/cJSON.h")):
        pytest.skip("mosquitto-dev / libcjson-dev headers not installed")
    out = tmp_path_factory.mktemp("harness") / "harness"
    cmd = [gcc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1", "-fno-omit-frame-pointer",
           "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
           str(ROOT / "tests" / "plugin_harness.c"), "-o", str(out), "-lcrypto", "-lcjson"]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert res.returncode == 0, res.stdout
    return out


def run(harness, lines):
    """Feed command lines, return the answer lines; any sanitizer report fails."""
    data = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=99",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    res = subprocess.run([str(harness)], input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env, timeout=120)
    assert res.returncode == 0 and not res.stderr, res.stderr.decode(errors="replace")[-4000:]
    answers = res.stdout.decode().splitlines()
    assert len(answers) == len(lines)
    return answers


def verify(harness, tokens, secret=SECRET, now=NOW):
    return run(harness, [b"V " + secret.hex().encode() + b" " + repr(now).encode() + b" " +
                         (t if isinstance(t, bytes) else t.encode("utf-8", "surrogateescape"))
                         for t in tokens])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**kw):
    out = {"sub": "svc", "appId": "myapp", "clientId": "svc", "iat": int(NOW), "exp": NOW + 60, "jti": 1}
    out.update(kw)
    return out


def jws(header, body, secret=SECRET):
    head = b64(header if isinstance(header, bytes) else json.dumps(header).encode())
    payload = b64(body if isinstance(body, bytes) else json.dumps(body).encode())
    sig = hmac.new(secret, "{}.{}".format(head, payload).encode(), hashlib.sha256).digest()
    return "{}.{}.{}".format(head, payload, b64(sig))


def with_sig(token, change):
    """token with its signature bytes changed by change(bytes) -> bytes."""
    head, sig = token.rsplit(".", 1)
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    return head + "." + b64(change(raw))


HS256 = {"alg": "HS256", "typ": "JWT"}
CASES = [
    # (token, expected answer prefix)
    (make_jwt(claims(), SECRET), "OK myapp 1800000060.000"),
    (make_jwt(claims(exp=NOW + 0.25), SECRET), "OK myapp 1800000000.250"),
    (make_jwt(claims(appId="app-\u00e9", exp=NOW + 1), SECRET), "OK app-\u00e9 "),
    (jws({"alg": "HS256"}, claims(nbf=NOW - 1)), "OK myapp"),
    (jws(b'{"alg" : "HS256"}  ', b' {"appId":"a","exp":1e10} '), "OK a 10000000000.000 - 0"),
    (make_jwt(claims(permissions=["dialogue:messages", "ui:content"]), SECRET),
     "OK myapp 1800000060.000 ,dialogue:messages,ui:content, 0"),
    (make_jwt(claims(permissions=[]), SECRET), "OK myapp 1800000060.000 , 0"),   # no permission at all
    (make_jwt(claims(superuser=True), SECRET), "OK myapp 1800000060.000 - 1"),
    (make_jwt(claims(permissions="dialogue:messages"), SECRET), "ERR 13 "),      # not an array
    (make_jwt(claims(permissions=["dialogue"]), SECRET), "ERR 13 "),            # no scope
    (make_jwt(claims(permissions=["a:b,c:d"]), SECRET), "ERR 13 "),
    (make_jwt(claims(permissions=["a:+"]), SECRET), "ERR 13 "),
    (make_jwt(claims(permissions=[1]), SECRET), "ERR 13 "),
    ("-", "ERR 2 "),                                                   # no username
    ("", "BAD COMMAND"),
    ("x" * 20000, "ERR 3 "),                                           # too long
    ("abc", "ERR 4 "),
    ("a.b", "ERR 4 "),
    ("a.b.c.d", "ERR 4 "),
    (".b.c", "ERR 4 "),
    ("a..c", "ERR 4 "),
    ("a!.b.c", "ERR 5 "),                                              # header not base64url
    ("YQ.b.c", "ERR 5 "),                                              # header not JSON
    (b64(b"[1]") + ".b.c", "ERR 5 "),                                  # header not an object
    (b64(b'{"alg":"HS256"}\x00x') + ".b.c", "ERR 5 "),                 # NUL inside
    (b64(b'{"alg":"HS256"}') + "=.b.c", "ERR 5 "),                     # padding
    (jws({"alg": "none"}, claims()).rsplit(".", 1)[0] + ".", "ERR 6 "),
    (jws({"alg": "HS512"}, claims()), "ERR 6 "),
    (jws({"alg": "hs256"}, claims()), "ERR 6 "),
    (jws({"alg": ["HS256"]}, claims()), "ERR 6 "),
    (jws({}, claims()), "ERR 6 "),
    (jws({"alg": "HS256", "crit": ["exp"]}, claims()), "ERR 6 "),
    (make_jwt(claims(), b"other secret"), "ERR 7 "),
    (with_sig(make_jwt(claims(), SECRET), lambda sig: sig[:31]), "ERR 7 "),
    (with_sig(make_jwt(claims(), SECRET), lambda sig: sig + b"\0"), "ERR 7 "),
    (make_jwt(claims(), SECRET) + "AA", "ERR 4 "),                     # impossible length
    (make_jwt(claims(), SECRET)[:-1] + "!", "ERR 4 "),                 # not base64url
    (jws(HS256, b"[1]"), "ERR 8 "),
    (jws(HS256, b'{"appId":"a","exp":1e10'), "ERR 8 "),
    (jws(HS256, b'{"appId":"a","exp":1e10}x'), "ERR 8 "),
    (jws(HS256, claims(appId="")), "ERR 9 "),
    (jws(HS256, claims(appId="a/b")), "ERR 9 "),
    (jws(HS256, claims(appId="+")), "ERR 9 "),
    (jws(HS256, claims(appId="#")), "ERR 9 "),
    (jws(HS256, claims(appId=7)), "ERR 9 "),
    (jws(HS256, claims(appId="a" * 257)), "ERR 9 "),
    (jws(HS256, {"appId": "a"}), "ERR 10 "),
    (jws(HS256, claims(exp="9999999999")), "ERR 10 "),
    (jws(HS256, b'{"appId":"a","exp":1e999}'), "ERR 10 "),
    (jws(HS256, claims(exp=NOW)), "ERR 11 "),                          # exp must be in the future
    (jws(HS256, claims(exp=NOW - 0.001)), "ERR 11 "),
    (jws(HS256, claims(exp=-1)), "ERR 11 "),
    (jws(HS256, claims(nbf=NOW + 1)), "ERR 12 "),
    (jws(HS256, claims(nbf="0")), "ERR 12 "),
]


def test_verify_cases(harness):
    answers = verify(harness, [t for t, _ in CASES])
    for (token, expected), got in zip(CASES, answers):
        assert got.startswith(expected), (token[:80], got, expected)


def test_non_canonical_base64_is_refused(harness):
    """A byte string has one accepted encoding: changing the unused low bits of
    the signature's last character keeps the decoded bytes but is refused."""
    token = make_jwt(claims(), SECRET)
    head, sig = token.rsplit(".", 1)
    assert len(sig) == 43    # 32 bytes: the last character carries 2 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    assert last & 3 == 0
    variants = [head + "." + sig[:-1] + alphabet[last | low] for low in (1, 2, 3)]
    answers = verify(harness, [token] + variants)
    assert answers[0].startswith("OK myapp")
    assert answers[1:] == ["ERR 4 username is not a JWT (header.claims.signature, base64url)"] * 3


def test_random_mutations_are_all_refused(harness):
    """Every change to a valid token is refused, and nothing crashes (ASan/UBSan)."""
    rng = random.Random(1234)
    valid = [make_jwt(claims(appId="app%d" % i, exp=NOW + 1 + i), SECRET) for i in range(20)]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/!\" {}\\\u00e9"
    mutated = []
    while len(mutated) < 4000:
        t = list(rng.choice(valid))
        for _ in range(rng.randint(1, 3)):
            if not t:
                break
            op = rng.randrange(4)
            i = rng.randrange(len(t))
            if op == 0:
                t[i] = rng.choice(alphabet)
            elif op == 1:
                del t[i]
            elif op == 2:
                t.insert(i, rng.choice(alphabet))
            else:
                t = t[:i]
        s = "".join(t)
        if s and s not in valid:
            mutated.append(s)
    garbage = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 400))) for _ in range(1000)]
    answers = verify(harness, valid + mutated + garbage)
    assert all(a.startswith("OK app") for a in answers[:len(valid)])
    refused = answers[len(valid):]
    bad = [(tok, a) for tok, a in zip(mutated + garbage, refused) if not a.startswith("ERR")]
    assert not bad, bad[:5]


def test_random_signed_claims(harness):
    """Correctly signed tokens with arbitrary JSON claims: accepted exactly
    when exp is a future number and appId a usable string."""
    rng = random.Random(99)
    values = [None, True, 0, -1, NOW - 1, NOW + 5, NOW + 5.5, 1e308, "x", "", "a/b", "app", [], {}, "\u00fc"]
    tokens, expected = [], []
    for _ in range(2000):
        body = {}
        for key in ("appId", "exp", "nbf", "sub"):
            if rng.random() < 0.7:
                body[key] = rng.choice(values)
        tokens.append(jws(HS256, body))
        app, exp, nbf = body.get("appId"), body.get("exp"), body.get("nbf", NOW - 1)
        ok = (isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp > NOW
              and (isinstance(nbf, (int, float)) and not isinstance(nbf, bool) and nbf <= NOW)
              and isinstance(app, str) and 0 < len(app.encode()) <= 256 and not set(app) & set("/+#"))
        expected.append(ok)
    answers = verify(harness, tokens)
    for token, ok, got in zip(tokens, expected, answers):
        assert got.startswith("OK") == ok, (token, got)


# (access, app, permissions or "-", superuser, shared subscriptions allowed, topic, allowed)
TOPIC_RULES = [
    (WRITE, "myapp", "-", 0, 0, "app/myapp/dialogue/messages/s1", 1),
    (READ, "myapp", "-", 0, 0, "app/myapp/x/y", 1),
    (READ, "myapp", "-", 0, 0, "user/myapp/x/y", 1),
    (SUBSCRIBE, "myapp", "-", 0, 0, "app/myapp/dialogue/messages/+", 1),
    (SUBSCRIBE, "myapp", "-", 0, 0, "app/myapp/dialogue/messages/#", 1),
    (SUBSCRIBE, "myapp", "-", 0, 0, "app/myapp/dialogue/messages", 1),
    (UNSUBSCRIBE, "myapp", "-", 0, 0, "app/myapp/x/y", 1),
    # the platform grants <resource>:<scope>: both levels must be named
    (SUBSCRIBE, "myapp", "-", 0, 0, "app/myapp/#", 0),
    (SUBSCRIBE, "myapp", "-", 0, 0, "app/myapp/+", 0),
    (SUBSCRIBE, "myapp", "-", 0, 0, "app/myapp/+/messages", 0),
    (SUBSCRIBE, "myapp", "-", 0, 0, "app/myapp/dialogue/+", 0),
    (SUBSCRIBE, "myapp", "-", 0, 0, "app/myapp/dialogue/#", 0),
    (WRITE, "myapp", "-", 0, 0, "app/myapp/x", 0),
    (WRITE, "myapp", "-", 0, 0, "app/myapp/x/", 0),
    (WRITE, "myapp", "-", 0, 0, "app/myapp//x", 0),
    # permissions
    (WRITE, "myapp", ",dialogue:messages,ui:content,", 0, 0, "app/myapp/dialogue/messages/s1", 1),
    (SUBSCRIBE, "myapp", ",dialogue:messages,ui:content,", 0, 0, "app/myapp/ui/content/+", 1),
    (WRITE, "myapp", ",dialogue:messages,ui:content,", 0, 0, "app/myapp/ui/contents/x", 0),
    (WRITE, "myapp", ",dialogue:messages,ui:content,", 0, 0, "app/myapp/ui/conten/x", 0),
    (WRITE, "myapp", ",dialogue:messages,ui:content,", 0, 0, "app/myapp/dialogue/tool/x", 0),
    (WRITE, "myapp", ",dialogue:messages,ui:content,", 0, 0, "app/myapp/dialog/messages/x", 0),
    (WRITE, "myapp", ",", 0, 0, "app/myapp/dialogue/messages/s1", 0),
    # shared subscriptions: refused as on the platform, unless the broker allows them
    (SUBSCRIBE, "myapp", "-", 0, 0, "$share/g/app/myapp/x/y", 0),
    (SUBSCRIBE, "myapp", "-", 0, 1, "$share/g/app/myapp/x/y", 1),
    (UNSUBSCRIBE, "myapp", "-", 0, 1, "$share/g/app/myapp/x/y", 1),
    (SUBSCRIBE, "myapp", "-", 0, 1, "$share/g/app/myapp/#", 0),
    (WRITE, "myapp", "-", 0, 1, "$share/g/app/myapp/x/y", 0),     # $share only means something to (un)subscribe
    (SUBSCRIBE, "myapp", "-", 0, 1, "$share//app/myapp/x/y", 0),
    (SUBSCRIBE, "myapp", "-", 0, 1, "$share/g", 0),
    (SUBSCRIBE, "myapp", "-", 0, 1, "$share/g/app/other/x/y", 0),
    # superuser: everything
    (WRITE, "myapp", "-", 1, 0, "system/x", 1),
    (SUBSCRIBE, "myapp", ",", 1, 0, "app/other/#", 1),
    # never
    (SUBSCRIBE, "myapp", "-", 0, 0, "app/+/x/y", 0),
    (SUBSCRIBE, "myapp", "-", 0, 0, "app/#", 0),
    (SUBSCRIBE, "myapp", "-", 0, 0, "#", 0),
    (SUBSCRIBE, "myapp", "-", 0, 0, "+/myapp/x/y", 0),
    (SUBSCRIBE, "myapp", "-", 0, 0, "$SYS/#", 0),
    (READ, "myapp", "-", 0, 0, "$SYS/broker/uptime", 0),
    (WRITE, "myapp", "-", 0, 0, "system/x", 0),
    (WRITE, "myapp", "-", 0, 0, "app/other/x/y", 0),
    (WRITE, "myapp", "-", 0, 0, "app/myapp", 0),
    (WRITE, "myapp", "-", 0, 0, "app/myapp/", 0),
    (WRITE, "myapp", "-", 0, 0, "app/myappX/x/y", 0),
    (WRITE, "myapp", "-", 0, 0, "app/myap/x/y", 0),
    (WRITE, "myapp", "-", 0, 0, "App/myapp/x/y", 0),
    (WRITE, "myapp", "-", 0, 0, "app", 0),
    (WRITE, "myapp", "-", 0, 0, "/app/myapp/x/y", 0),
    (WRITE, "a", "-", 0, 0, "app/a/b/c", 1),
]


def test_topic_rules(harness):
    """The platform's ACL rule (see the plugin's header comment)."""
    answers = run(harness, ["T {} {} {} {} {} {}".format(*row[:-1]) for row in TOPIC_RULES])
    assert [int(a) for a in answers] == [row[-1] for row in TOPIC_RULES], \
        [row for row, a in zip(TOPIC_RULES, answers) if int(a) != row[-1]]


def test_lifecycle_many_clients(harness, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(48))
    assert run(harness, ["S {}".format(secret)]) == ["OK"]


def test_init_errors(harness, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 70000)
    ok = tmp_path / "ok"
    ok.write_bytes(b"k")
    answers = run(harness, [
        "I secret_file {}".format(ok),
        "I secret_file {}".format(tmp_path / "missing"),
        "I secret_file {}".format(empty),
        "I secret_file {}".format(big),
        "I secret_file ",
        "I allow_anonymous false",
    ])
    # MOSQ_ERR_SUCCESS = 0, MOSQ_ERR_INVAL = 3; no callback left registered
    assert answers == ["0 3", "3 0", "3 0", "3 0", "3 0", "3 0"]


def test_plugin_source_has_no_python():
    text = (ROOT / "plugin" / "sermas_jwt_auth.c").read_text()
    assert "Python.h" not in text and "Py_" not in text
