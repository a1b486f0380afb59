"""A publish / receive / close / reconnect workload, run under valgrind's
memcheck by tests/test_valgrind.py (kept small: memcheck is ~30x slower).

    python valgrind_workload.py PORT STORE_DIR
"""
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sermas_bus.client as mqtt  # noqa: E402
from sermas_bus import json as sbjson  # noqa: E402
from sermas_bus.properties import Properties  # noqa: E402
from sermas_bus.packettypes import PacketTypes  # noqa: E402

port, store = int(sys.argv[1]), sys.argv[2]
V2 = mqtt.CallbackAPIVersion.VERSION2
got = []
done = threading.Event()


def on_message(client, userdata, msg):
    got.append(sbjson.loads(msg.payload)["n"])
    _ = msg.properties
    if len(got) >= 600:
        done.set()


sub = mqtt.Client(V2, "vg-sub", protocol=mqtt.MQTTv5)
sub.on_message = on_message
sub.connect("127.0.0.1", port)
sub.subscribe("vg/#", 1)
sub.loop_start()
props = Properties(PacketTypes.PUBLISH)
props.UserProperty = [("k", "v")]
n = 0
for cycle in range(3):
    # a durable publisher: some messages offline, then connected; closed each time
    pub = mqtt.Client(V2, "vg-pub", protocol=mqtt.MQTTv5, persistence=store)
    for _ in range(50):
        pub.publish("vg/t", sbjson.dumps({"n": n, "text": "offline"}), qos=1, properties=props)
        n += 1
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for _ in range(150):
        pub.publish("vg/t", sbjson.dumps({"n": n, "nested": {"a": [1, 2.5, None]}}), qos=n % 3)
        n += 1
    pub.reconnect()
    pub.flush(30)
    pub.disconnect()
    pub.loop_stop()
    pub.close()
done.wait(60)
sub.disconnect()
sub.loop_stop()
sub.close()
print("received", len(got), "of", n)
