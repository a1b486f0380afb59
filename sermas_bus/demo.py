"""``sermas-bus demo`` / ``make demo``: the SERMAS documentation's scenario, end to end.

With no ``SERMAS_URL`` it starts a ``LocalBus`` (mosquitto with JWT
authentication and the SERMAS ACL, plus the platform's token endpoints) and:

1. a *listener* service gets a token from the REST endpoint, connects over
   websockets (``ws://…/mqtt``) and subscribes with QoS 1 + noLocal;
2. a *speaker* service publishes dialogue messages and UI events, with topic
   parameters taken from the payloads;
3. the listener prints what it receives; access tokens live a few seconds,
   so both refresh them mid-run and reconnect with the new token;
4. a summary: messages, loss, duplicates, refreshes, latency, throughput.

With ``SERMAS_URL`` (and ``SERMAS_APP_ID``, ``SERMAS_CLIENT_ID``,
``SERMAS_CLIENT_SECRET``) it runs the same scenario against that platform.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Tuple

from .sermas import SermasClient

APP = "demo"


@contextlib.contextmanager
def _platform(token_ttl: float) -> Iterator[Tuple[Dict[str, Any], str]]:
    """(client settings for listener and speaker, description)."""
    url = os.environ.get("SERMAS_URL")
    if url:
        common = {"base_url": url, "app_id": os.environ.get("SERMAS_APP_ID"),
                  "client_id": os.environ.get("SERMAS_CLIENT_ID"),
                  "client_secret": os.environ.get("SERMAS_CLIENT_SECRET")}
        if not all(common.values()):
            raise SystemExit("SERMAS_URL is set: also set SERMAS_APP_ID, SERMAS_CLIENT_ID, SERMAS_CLIENT_SECRET")
        yield {"listener": dict(common), "speaker": dict(common)}, f"the SERMAS platform at {url}"
        return
    from .testing import LocalBus
    apps = {APP: {"clients": {"listener": "listener-secret", "speaker": "speaker-secret"}}}
    with LocalBus(apps=apps, token_ttl=token_ttl) as bus:
        def settings(who: str) -> Dict[str, Any]:
            # one port, as the platform: the broker URL is derived from base_url
            return {"base_url": bus.api_url, "app_id": APP, "client_id": who,
                    "client_secret": f"{who}-secret"}
        yield ({"listener": settings("listener"), "speaker": settings("speaker")},
               f"a local bus (broker {bus.mqtt_url}, API {bus.api_url}, tokens live {token_ttl:.0f} s)")


def main(duration: float = 6.0, rate: float = 2000.0, token_ttl: float = 4.0) -> int:
    received: Dict[int, float] = {}
    duplicates = 0
    shown = 0
    lock = threading.Lock()

    def on_event(event: Any, msg: Any) -> None:
        nonlocal duplicates, shown
        now = time.perf_counter()
        with lock:
            if event["seq"] in received:
                duplicates += 1
                return
            received[event["seq"]] = now - event["sent"]
            if shown < 4 or event.get("last"):
                shown += 1
                what = event.get("text") or event.get("content")
                print(f"  <- {msg.name} {msg.params}: {what!r}", flush=True)

    with _platform(token_ttl) as (settings, where):
        print(f"sermas-bus demo on {where}")
        margin = max(1.0, token_ttl / 2)
        with SermasClient(**settings["listener"], refresh_margin=margin) as listener, \
                SermasClient(**settings["speaker"], refresh_margin=margin) as speaker:
            print(f"listener connected over {listener.mqtt_url} with a JWT from the REST API "
                  f"(expires in {listener.token.seconds_left():.1f} s)")
            listener.subscribe("dialogue.messages", on_event)          # QoS 1, noLocal
            listener.subscribe("ui.content", on_event)
            listener.publish("ui.content", {"seq": -1, "sent": time.perf_counter(), "content": "own"})

            sent = 0
            start = time.perf_counter()
            interval = 1.0 / rate
            while time.perf_counter() - start < duration:
                now = time.perf_counter()
                if sent % 10 == 9:
                    speaker.publish("ui.content", {"seq": sent, "sent": now, "content": f"UI card #{sent}"})
                else:
                    speaker.publish("dialogue.messages", {"seq": sent, "sent": now, "sessionId": f"s{sent % 3}",
                                                          "actor": "agent", "text": f"hello #{sent}"})
                sent += 1
                time.sleep(max(0.0, start + sent * interval - time.perf_counter()))
            speaker.publish("dialogue.messages", {"seq": sent, "sent": time.perf_counter(), "sessionId": "s0",
                                                  "actor": "agent", "text": "bye", "last": True}
                            ).wait_for_publish(10)
            sent += 1
            elapsed = time.perf_counter() - start
            deadline = time.monotonic() + 15
            while len(received) < sent and time.monotonic() < deadline:
                time.sleep(0.05)
            refreshes = listener.refreshes + speaker.refreshes

    lost = sent - len([s for s in received if s >= 0])
    own = -1 in received
    lat: List[float] = sorted(received.values())
    print(f"\nsent {sent} events in {elapsed:.1f} s ({sent / elapsed:,.0f}/s), received {len(received)}, "
          f"lost {lost}, duplicates {duplicates}, own message echoed: {'YES (noLocal broken)' if own else 'no'}")
    print(f"token refreshes with reconnect: {refreshes}")
    if lat:
        print(f"latency p50 {lat[len(lat) // 2] * 1e3:.2f} ms, p99 {lat[int(len(lat) * 0.99)] * 1e3:.2f} ms")
    # tokens of a real platform live minutes: a refresh is only expected locally
    ok = lost == 0 and not own and (refreshes >= 1 or "SERMAS_URL" in os.environ)
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
