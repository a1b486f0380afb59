"""``python -m sermas_bus.demo``: the SERMAS documentation's scenario on a local broker.

Starts a throw-away mosquitto (websockets on /mqtt, as the platform serves
it), connects a listener with QoS 1 + noLocal as the SERMAS docs do, lets a
second client publish dialogue and UI events, prints what arrives and a
summary.  (The JWT-authenticated LocalBus comes with the local-bus issue.)
"""
from __future__ import annotations

import json
import sys
import threading
import time

from . import client as mqtt
from .subscribeoptions import SubscribeOptions
from .testing import Mosquitto

APP = "demo"


def main(count: int = 2000) -> int:
    with Mosquitto(tcp=False, websockets=True) as broker:
        url = broker.url("ws").replace("ws://", "http://")   # as the SERMAS docs write it
        print(f"local broker: {url}")
        done = threading.Event()
        latencies: list = []
        received = 0

        def on_message(msg):
            nonlocal received
            event = json.loads(msg.payload)
            latencies.append(time.perf_counter() - event["sent"])
            received += 1
            if received <= 3 or received == count + 1:
                print(f"  <- {msg.topic}: {event.get('text') or event.get('content')}")
            if received == count + 1:
                done.set()

        listener = mqtt.Client(client_id="demo-listener", transport="websockets")
        listener.username_pw_set("<JWT access token>", "sermas")
        listener.on_message = on_message
        listener.connect(url)
        listener.loop_start()
        options = SubscribeOptions(qos=1, noLocal=True)
        listener.subscribe([(f"app/{APP}/dialogue/messages/+", options), (f"app/{APP}/ui/content", options)])
        listener.publish(f"app/{APP}/ui/content", b'{"own": true}', qos=1).wait_for_publish(5)

        speaker = mqtt.Client(client_id="demo-speaker", transport="websockets")
        speaker.connect(url)
        start = time.perf_counter()
        last = None
        for i in range(count):
            event = {"appId": APP, "sessionId": "s1", "actor": "agent", "text": f"hello #{i}",
                     "language": "en-GB", "messageId": f"m{i}", "sent": time.perf_counter()}
            last = speaker.publish(f"app/{APP}/dialogue/messages/s1", json.dumps(event), qos=1)
        ui = {"appId": APP, "content": "a UI card", "sent": time.perf_counter()}
        speaker.publish(f"app/{APP}/ui/content", json.dumps(ui), qos=1).wait_for_publish(10)
        last.wait_for_publish(10)
        ok = done.wait(15)
        elapsed = time.perf_counter() - start
        speaker.close()
        listener.close()
        latencies.sort()
        print(f"\nreceived {received} of {count + 1} events (own message filtered by noLocal: "
              f"{'yes' if ok and received == count + 1 else 'NO'})")
        if latencies:
            print(f"throughput {received / elapsed:,.0f} events/s over websockets, QoS 1; "
                  f"latency p50 {latencies[len(latencies) // 2] * 1e3:.2f} ms, "
                  f"p99 {latencies[int(len(latencies) * 0.99)] * 1e3:.2f} ms")
        return 0 if ok and received == count + 1 else 1


if __name__ == "__main__":
    sys.exit(main())
