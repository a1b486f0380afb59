#!/usr/bin/env python3
"""Connect / close latency: sermas_bus vs paho-mqtt vs bare paho.mqtt.c.

Starts ONE private mosquitto (TCP + websockets listeners on free loopback
ports, never the system broker) and, in a fresh process per row, times N
connect + close cycles (default 20):

  sermas tcp / ws      sermas_bus.client.Client: Client() + connect() | close()
  paho-mqtt tcp / ws   paho-mqtt 2.x, MQTT 5: connect() + loop until CONNACK |
                       disconnect() + loop until the socket is closed
  C tcp / ws           bench/c_connect.c on paho.mqtt.c: create + setCallbacks +
                       connect5 | disconnect + destroy (built here, cached in bench/bin/)
  sermas fall-back     Client() against a broker that refuses MQTT 5: a small
                       asyncio proxy answers a v5 CONNECT with CONNACK code 1 and
                       closes, and pipes 3.1.1 connections to mosquitto; the
                       client's remembered fall-back is cleared each cycle

"ws" rows go to mosquitto's own websockets listener, whose libwebsockets
service loop (mosquitto 2.0.x) adds ~100 ms per round trip on its side: see the
paho-mqtt ws row, which has no client-side sleeps.  "wsf" rows go through a
minimal websocket-to-TCP bridge in this script instead, which answers at once,
so they show the clients' own websocket cost.

"first" is cycle 1 alone (a process's first connect pays paho's receive-thread
start-up); median and p90 are over all N cycles.

  python bench/bench_connect.py                 # all rows, N=20 (~15 s)
  python bench/bench_connect.py --only sermas,fallback -n 10
  PYTHONPATH=/path/to/tree python bench/bench_connect.py   # another build
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
C_SRC = BENCH / "c_connect.c"
C_BIN = BENCH / "bin" / "c_connect"

ROWS = ["sermas-tcp", "sermas-ws", "sermas-wsf", "paho-tcp", "paho-ws", "paho-wsf",
        "c-tcp", "c-ws", "c-wsf", "sermas-fallback"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ workers
# Each runs in its own process (python bench_connect.py --worker KIND URL N)
# and prints one line: RESULT {"connect_ms": [...], "close_ms": [...]}.

def _worker_sermas(url, n, transport):
    import logging

    import sermas_bus
    from sermas_bus import client as mqtt

    logging.disable(logging.WARNING)   # the fall-back row warns on every cycle
    fall_back = transport == "fallback"
    conn, clos = [], []
    for i in range(n):
        if fall_back:
            mqtt._VERSION_THAT_WORKED.clear()   # make every cycle try MQTT 5 first
        t0 = time.perf_counter()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-s-%d-%d" % (os.getpid(), i),
                        transport="websockets" if transport in ("ws", "wsf") else "tcp")
        c.connect(url)
        t1 = time.perf_counter()
        if fall_back:
            assert c._mqtt_version == mqtt.MQTTv311, c._mqtt_version
        c.close()
        t2 = time.perf_counter()
        conn.append((t1 - t0) * 1e3)
        clos.append((t2 - t1) * 1e3)
    return {"connect_ms": conn, "close_ms": clos, "module": sermas_bus.__file__}


def _worker_paho(url, n, transport):
    import paho.mqtt.client as mqtt

    u = urlparse(url)
    conn, clos = [], []
    for i in range(n):
        state = {"up": False, "down": False}
        t0 = time.perf_counter()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-p-%d-%d" % (os.getpid(), i),
                        protocol=mqtt.MQTTv5, transport="websockets" if transport in ("ws", "wsf") else "tcp")
        if transport in ("ws", "wsf"):
            c.ws_set_options(path=u.path or "/mqtt")
        c.on_connect = lambda *a: state.__setitem__("up", True)
        c.on_disconnect = lambda *a: state.__setitem__("down", True)
        c.connect(u.hostname, u.port, keepalive=60)
        deadline = time.monotonic() + 10
        while not state["up"]:
            if time.monotonic() > deadline:
                raise RuntimeError("paho-mqtt: no CONNACK in 10 s")
            c.loop(0.05)
        t1 = time.perf_counter()
        c.disconnect()
        deadline = time.monotonic() + 10
        while not state["down"] and time.monotonic() < deadline:
            c.loop(0.05)
        t2 = time.perf_counter()
        conn.append((t1 - t0) * 1e3)
        clos.append((t2 - t1) * 1e3)
    return {"connect_ms": conn, "close_ms": clos}


def worker_main(kind, url, n):
    client, transport = kind.split("-", 1)
    if client == "sermas":
        res = _worker_sermas(url, n, transport)
    elif client == "paho":
        res = _worker_paho(url, n, transport)
    else:
        raise SystemExit("unknown worker " + kind)
    print("RESULT " + json.dumps(res), flush=True)


# ------------------------------------------------------------------ C build

def build_c():
    """Build bench/bin/c_connect if it is missing or older than its source."""
    if C_BIN.exists() and C_BIN.stat().st_mtime >= C_SRC.stat().st_mtime:
        return
    cc = shutil.which(os.environ.get("CC", "cc"))
    if not cc:
        raise RuntimeError("no C compiler: install the Debian package 'build-essential' (or 'gcc')")
    C_BIN.parent.mkdir(exist_ok=True)
    # paho-mqtt3cs: the library sermas_bus links (TLS-capable; ws:// needs no TLS)
    cmd = [cc, "-O2", "-Wall", str(C_SRC), "-lpaho-mqtt3cs", "-lpthread", "-o", str(C_BIN)]
    log("building: " + " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("building {} failed (Debian: libpaho-mqtt-dev):\n{}".format(C_BIN, r.stderr))


# ------------------------------------------- fronts in front of mosquitto

def _nodelay(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pipe(reader, writer, frame=None):
    """Copy reader to writer (through frame(), if given) until EOF."""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(frame(data) if frame else data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


class Fronts:
    """Two 127.0.0.1 servers in front of mosquitto's TCP listener, on an
    asyncio loop in a daemon thread:

    refuse_port  behaves like a 3.1.1-only broker: a CONNECT with protocol
                 level 5 gets CONNACK 20 02 00 01 (unacceptable protocol
                 version) and the socket is closed; anything else is piped
                 through unchanged.
    ws_port      a minimal websocket-to-TCP bridge (RFC 6455 server side:
                 upgrade, unmask client frames, binary frames back) that
                 answers at once, unlike mosquitto 2.0's libwebsockets loop."""

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.refuse_port = self.ws_port = None
        self.stats = {"refused_v5": 0, "piped": 0, "ws": 0}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fronts did not start")
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        servers = [self._loop.run_until_complete(asyncio.start_server(h, "127.0.0.1", 0))
                   for h in (self._refuse_v5, self._ws_bridge)]
        self.refuse_port, self.ws_port = (srv.sockets[0].getsockname()[1] for srv in servers)
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            for srv in servers:
                srv.close()
            self._loop.close()

    async def _upstream(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        _nodelay(writer)
        return reader, writer

    @staticmethod
    async def _read_packet(reader):
        """One whole MQTT packet (fixed header + body), however TCP splits it."""
        header = await reader.readexactly(1)
        length, mul = 0, 1
        for _ in range(4):
            b = await reader.readexactly(1)
            header += b
            length += (b[0] & 127) * mul
            mul *= 128
            if not b[0] & 128:
                break
        return header + await reader.readexactly(length), len(header)

    async def _refuse_v5(self, reader, writer):
        _nodelay(writer)
        up_writer = None
        try:
            packet, hlen = await self._read_packet(reader)
            body = packet[hlen:]
            # variable header: 00 04 'M' 'Q' 'T' 'T' <protocol level> ...
            if packet[0] >> 4 == 1 and len(body) > 6 and body[6] == 5:
                self.stats["refused_v5"] += 1
                writer.write(b"\x20\x02\x00\x01")
                await writer.drain()
                return
            self.stats["piped"] += 1
            up_reader, up_writer = await self._upstream()
            up_writer.write(packet)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            if up_writer is not None:
                up_writer.close()

    @staticmethod
    def _frame(data):
        """A server-to-client binary frame (unmasked)."""
        n = len(data)
        if n < 126:
            head = bytes([0x82, n])
        elif n < 65536:
            head = bytes([0x82, 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x82, 127]) + n.to_bytes(8, "big")
        return head + data

    async def _ws_bridge(self, reader, writer):
        _nodelay(writer)
        up_writer = None
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in request.split(b"\r\n")[1:]:
                if b":" in line:
                    k, v = line.split(b":", 1)
                    headers[k.strip().lower()] = v.strip()
            accept = base64.b64encode(hashlib.sha1(headers[b"sec-websocket-key"] + self.GUID).digest())
            up_reader, up_writer = await self._upstream()
            self.stats["ws"] += 1
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
            await writer.drain()

            async def client_to_broker():
                try:
                    while True:
                        b0, b1 = await reader.readexactly(2)
                        n = b1 & 127
                        if n == 126:
                            n = int.from_bytes(await reader.readexactly(2), "big")
                        elif n == 127:
                            n = int.from_bytes(await reader.readexactly(8), "big")
                        mask = await reader.readexactly(4) if b1 & 128 else b"\0\0\0\0"
                        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(await reader.readexactly(n)))
                        opcode = b0 & 15
                        if opcode == 8:       # close
                            break
                        if opcode == 9:       # ping -> pong
                            writer.write(bytes([0x8A, len(payload)]) + payload)
                        elif opcode in (0, 1, 2):
                            up_writer.write(payload)
                            await up_writer.drain()
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                    pass
                finally:
                    up_writer.close()

            await asyncio.gather(client_to_broker(), _pipe(up_reader, writer, self._frame))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, KeyError):
            pass
        finally:
            writer.close()
            if up_writer is not None:
                up_writer.close()


# ------------------------------------------------------------------ driver

def run_row(row, urls, n, env):
    url = urls[row.split("-", 1)[1]]
    if row.startswith("c-"):
        argv = [str(C_BIN), url.replace("mqtt://", "tcp://"), str(n)]
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", row, url, str(n)]
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError("{} failed (exit {}):\n{}{}".format(row, p.returncode, p.stdout[-2000:], p.stderr[-3000:]))
    return json.loads(lines[-1][len("RESULT "):])


def p90(values):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20, help="connect+close cycles per row (default 20)")
    ap.add_argument("--only", default="", help="comma-separated row prefixes, e.g. sermas,c-tcp")
    ap.add_argument("--json", help="also write the raw numbers here")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "URL", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args.worker[0], args.worker[1], int(args.worker[2]))
        return 0

    rows = [r for r in ROWS if not args.only or any(r.startswith(p) for p in args.only.split(","))]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    sys.path.insert(0, env["PYTHONPATH"].split(os.pathsep)[0])
    from sermas_bus.testing import Mosquitto

    if any(r.startswith("c-") for r in rows):
        try:
            build_c()
        except RuntimeError as exc:
            log("skipping the C rows: {}".format(exc))
            rows = [r for r in rows if not r.startswith("c-")]

    results = {}
    with Mosquitto(tcp=True, websockets=True, log_type="warning") as broker:
        urls = {"tcp": broker.url("tcp"), "ws": broker.url("ws")}
        with Fronts(broker.port) as fronts:
            urls["fallback"] = "tcp://127.0.0.1:{}".format(fronts.refuse_port)
            urls["wsf"] = "ws://127.0.0.1:{}/mqtt".format(fronts.ws_port)
            for row in rows:
                log("{} ...".format(row))
                results[row] = run_row(row, urls, args.n, env)
            stats = dict(fronts.stats)

    module = next((r["module"] for r in results.values() if "module" in r), None)
    print("connect / close latency, ms ({} cycles each; sermas_bus from {})".format(args.n, module or "-"))
    print("{:<16} {:>9} {:>9} {:>9} | {:>9} {:>9}".format(
        "row", "conn med", "conn p90", "first", "close med", "close p90"))
    for row, r in results.items():
        c, x = r["connect_ms"], r["close_ms"]
        print("{:<16} {:>9.2f} {:>9.2f} {:>9.2f} | {:>9.2f} {:>9.2f}".format(
            row, statistics.median(c), p90(c), c[0], statistics.median(x), p90(x)))
    print("fronts: {}".format(stats))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
