"""Run by tests/test_wheel.py with the interpreter of a fresh virtualenv that
has only the repaired wheel installed, inside a mount namespace where the
system's paho.mqtt.c and cJSON files are hidden:

    python wheel_smoke.py WSS_URL CA_FILE TOPIC

Prints one line per check; exits non-zero on the first failure."""
import ctypes
import os
import sys


def main() -> None:
    url, ca_file, topic = sys.argv[1:4]
    for lib in ("libpaho-mqtt3cs.so.1", "libcjson.so.1"):
        try:
            ctypes.CDLL(lib)
        except OSError:
            print("hidden", lib)
        else:
            raise SystemExit("the system's {} is still loadable: the test proves nothing".format(lib))

    import sermas_bus
    import sermas_bus.client as mqtt

    here = os.path.dirname(sermas_bus.__file__)
    if not here.startswith(sys.prefix):
        raise SystemExit("imported {}, not the wheel installed in {}".format(here, sys.prefix))
    with open("/proc/self/maps") as f:
        loaded = sorted({line.split()[-1] for line in f if "paho" in line or "cjson" in line})
    if not loaded or not all("/sermas_bus.libs/" in path for path in loaded):
        raise SystemExit("paho/cJSON not loaded from the wheel: {}".format(loaded))
    print("loaded", " ".join(os.path.basename(p) for p in loaded))
    print("versions", sermas_bus.paho_version, sermas_bus.cjson_version, sermas_bus.openssl_version)

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.tls_set(ca_certs=ca_file)
    c.connect(url)
    c.subscribe(topic, 1)
    c.publish(topic, b"from the wheel", 1).wait_for_publish(10)
    got = [m.payload for m in c.messages(timeout=10, max_messages=1)]
    c.close()
    if got != [b"from the wheel"]:
        raise SystemExit("round trip over wss failed: {!r}".format(got))
    print("roundtrip ok")


if __name__ == "__main__":
    main()
