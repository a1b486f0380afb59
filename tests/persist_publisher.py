"""A publisher process for the durable-outbox tests (tests/test_persistence.py).

    python persist_publisher.py stream DIR CLIENT_ID PORT QOS FACE TOPIC
        publishes "0", "1", ... to TOPIC at QOS with persistence=DIR
        and prints "A <n>" once message n was accepted (publish() handed it
        to the outbox and the store); runs until
        killed (the test SIGKILLs it), at most 200,000 messages.
    python persist_publisher.py drain DIR CLIENT_ID PORT QOS FACE TOPIC
        opens DIR again, connects and waits until the outbox is empty; prints
        "R <json report>" after opening and "DRAINED True" once it is.

FACE: "sync" (sermas_bus.client.Client) or "aio" (sermas_bus.aio.AsyncClient).
The session is kept (MQTT 3.1.1, clean_session=False), as a durable
publisher must: in-flight messages are resumed, not re-sent as new.
"""
import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sermas_bus import aio  # noqa: E402
from sermas_bus import client as mqtt  # noqa: E402

LIMIT = 200_000


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def sync_main(mode, directory, client_id, port, qos, topic):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id, clean_session=False,
                    protocol=mqtt.MQTTv311, persistence=directory)
    say("R " + json.dumps(c.persistence_report))
    c.max_inflight_messages_set(200)
    c.connect("127.0.0.1", port, keepalive=5)
    c.loop_start()
    if mode == "stream":
        for n in range(LIMIT):
            c.publish(topic, str(n), qos=qos)
            say(f"A {n}")
    say(f"DRAINED {c.flush(20.0)}")
    c.disconnect()
    c.loop_stop()


async def aio_main(mode, directory, client_id, port, qos, topic):
    c = aio.AsyncClient(client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311,
                        persistence=directory)
    say("R " + json.dumps(c._client.persistence_report))
    await c.connect("127.0.0.1", port, keepalive=5)
    if mode == "stream":
        # AsyncClient.publish returns once acknowledged; the message is
        # accepted (in the outbox and the store) when its call into the
        # client returns, which is what this wrapper reports
        inner = c._client.publish

        def accepted(topic, payload, *args):
            info = inner(topic, payload, *args)
            say(f"A {payload}")
            return info
        c._client.publish = accepted
        pending = set()
        for n in range(LIMIT):
            pending.add(asyncio.ensure_future(c.publish(topic, str(n), qos=qos)))
            if len(pending) >= 200:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    say(f"DRAINED {await c.flush(20.0)}")
    await c.disconnect()


def main():
    mode, directory, client_id, port, qos, face, topic = sys.argv[1:8]
    if face == "aio":
        asyncio.run(aio_main(mode, directory, client_id, int(port), int(qos), topic))
    else:
        sync_main(mode, directory, client_id, int(port), int(qos), topic)


if __name__ == "__main__":
    main()
