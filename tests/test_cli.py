"""The sermas-bus command line, end to end against a LocalBus."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sermas_bus.localbus import LocalBus
from support import pgrep

APP = "cliapp"


@pytest.fixture(scope="module")
def bus():
    with LocalBus(apps={APP: {"clients": {"svc": "s3cret"}}}, token_ttl=120) as b:
        yield b


def cli_env(bus, **extra):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("SERMAS_"):
            del env[k]
    env.update({"SERMAS_URL": bus.api_url, "SERMAS_MQTT_URL": bus.mqtt_url, "SERMAS_APP_ID": APP,
                "SERMAS_CLIENT_ID": "svc", "SERMAS_CLIENT_SECRET": "s3cret"})
    env.update(extra)
    return env


def run(args, env=None, timeout=60, input=None):
    return subprocess.run([sys.executable, "-m", "sermas_bus", *args], env=env, capture_output=True,
                          timeout=timeout, input=input)


def test_topics_list_resolve_render():
    out = run(["topics"])
    assert out.returncode == 0
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 57 and any(line.startswith("dialogue.messages ") for line in lines)
    out = run(["topics", "--resolve", "app/a/dialogue/task/handler"])
    assert json.loads(out.stdout) == {"topic": "app/a/dialogue/task/handler", "name": "dialogue.taskFieldHandler",
                                      "params": {"appId": "a"}}
    out = run(["topics", "--render", "dialogue.messages", "-p", "appId=a", "-p", "sessionId=s"])
    assert out.stdout.decode().strip() == "app/a/dialogue/messages/s"
    out = run(["topics", "--render", "dialogue.messages", "--subscribe", "-p", "appId=a"])
    assert out.stdout.decode().strip() == "app/a/dialogue/messages/+"
    out = run(["topics", "--resolve", "nothing/here"])
    assert out.returncode == 1


def test_token_prints_claims_not_the_token(bus):
    out = run(["token"], env=cli_env(bus))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["claims"]["appId"] == APP and doc["claims"]["clientId"] == "svc"
    assert 0 < doc["expires_in_s"] <= 120 and doc["refreshable"] is True
    assert "access_token" not in doc and b"eyJ" not in out.stdout
    out = run(["token", "--show-token"], env=cli_env(bus))
    assert json.loads(out.stdout)["access_token"].startswith("eyJ")


def test_exit_codes(bus):
    assert run(["token"], env=cli_env(bus, SERMAS_CLIENT_SECRET="wrong")).returncode == 3
    assert run(["pub", "ui.content", "{}"], env=cli_env(bus, SERMAS_APP_ID="")).returncode == 2
    out = run(["pub", "ui.content", "{}", "--mqtt-url", "ws://127.0.0.1:9/mqtt"], env=cli_env(bus))
    assert out.returncode == 4 and b"could not connect" in out.stderr
    out = run(["token"], env=cli_env(bus, SERMAS_URL="http://127.0.0.1:9"))
    assert out.returncode == 4 and b"cannot reach" in out.stderr
    out = run(["pub", "ui.content", "not json"], env=cli_env(bus))
    assert out.returncode == 2 and b"--raw" in out.stderr


def test_pub_and_sub_end_to_end(bus):
    env = cli_env(bus)
    sub = subprocess.Popen([sys.executable, "-m", "sermas_bus", "sub", "dialogue.messages", "--count", "3",
                            "--timeout", "20"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(2.0)                      # let it connect and subscribe
        for i in range(2):
            out = run(["pub", "dialogue.messages", json.dumps({"sessionId": f"s{i}", "text": f"hi {i}"})], env=env)
            assert out.returncode == 0, out.stderr
        out = run(["pub", "dialogue.messages", "--raw", "-p", "sessionId=bin", "--file", os.devnull], env=env)
        assert out.returncode == 0, out.stderr
        stdout, stderr = sub.communicate(timeout=30)
    finally:
        sub.kill()
    assert sub.returncode == 0, stderr
    lines = [json.loads(x) for x in stdout.decode().splitlines()]
    assert [x["params"]["sessionId"] for x in lines] == ["s0", "s1", "bin"]
    assert lines[0]["name"] == "dialogue.messages" and lines[0]["event"]["text"] == "hi 0"
    assert lines[0]["topic"] == f"app/{APP}/dialogue/messages/s0"


def test_sub_times_out_with_exit_1(bus):
    out = run(["sub", "xr.occlusion", "--count", "1", "--timeout", "1"], env=cli_env(bus))
    assert out.returncode == 1 and b"received 0 of 1" in out.stderr


def test_bus_command_runs_a_local_bus_in_the_foreground():
    with subprocess.Popen([sys.executable, "-m", "sermas_bus", "bus", "--app-id", "fg", "--client-id", "c",
                           "--client-secret", "x"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            settings = {}
            deadline = time.monotonic() + 30
            while len(settings) < 5 and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if "=" in line:
                    k, v = line.strip().split("=", 1)
                    settings[k] = v
            assert set(settings) == {"SERMAS_URL", "SERMAS_MQTT_URL", "SERMAS_APP_ID", "SERMAS_CLIENT_ID",
                                     "SERMAS_CLIENT_SECRET"}
            out = run(["pub", "ui.content", '{"ok": true}'], env=dict(os.environ, **settings))
            assert out.returncode == 0, out.stderr
            brokers = pgrep("-P", str(proc.pid), "mosquitto", capture_output=True)
            assert brokers.stdout.split(), "the bus command should run a mosquitto child"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 0
            time.sleep(0.5)
            for pid in brokers.stdout.split():      # the broker went with it
                assert subprocess.run(["kill", "-0", pid], capture_output=True).returncode != 0
        finally:
            proc.kill()


def test_demo_scenario_passes():
    out = subprocess.run([sys.executable, "-m", "sermas_bus", "demo", "--duration", "3"],
                         capture_output=True, timeout=90, env={k: v for k, v in os.environ.items()
                                                               if not k.startswith("SERMAS_")})
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    assert "lost 0" in text and "own message echoed: no" in text and "demo: OK" in text
    refreshes = int(text.split("token refreshes with reconnect: ")[1].split()[0])
    assert refreshes >= 1


def test_bench_quick():
    out = run(["bench", "--count", "2000"], timeout=120)
    assert out.returncode == 0, out.stderr
    assert b"QoS 1 end to end" in out.stdout and b"all received" in out.stdout
    assert b"[bench]" in out.stderr          # progress lines
