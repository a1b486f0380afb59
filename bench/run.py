#!/usr/bin/env python3
"""sermas_bus benchmark driver: sermas_bus vs paho-mqtt vs a paho.mqtt.c ceiling.

One run starts ONE private mosquitto (TCP + websockets listeners on free
loopback ports; never the system broker on 1883) and measures, with the same
~270-byte SERMAS dialogue event for every client:

  pub0-tcp / pub0-ws   QoS0 publish rate (json-encode per message); a
                       raw-socket C counter subscribes over TCP
  pub1-tcp / pub1-ws   QoS1 publish rate with the same in-flight window
  recv-tcp / recv-ws   receive rate with JSON decode in the callback; a
                       raw-socket C flooder publishes at QoS0 over TCP
  rtt-tcp  / rtt-ws    QoS0 round trip through the broker (one client
                       subscribed to the topic it publishes to), p50/p99

Clients: ``sermas`` (sermas_bus.client), ``paho`` (paho-mqtt 2.x, pure
Python), ``c`` (bench/c_ceiling.c on paho.mqtt.c MQTTClient).  Every
measurement runs in fresh processes; each is repeated --rounds times with
the client order rotated, and the table shows medians.  sermas_bus rows are
skipped, with a note, while sermas_bus.client cannot be imported.

Placement matters on a small VM (a cross-CPU wake-up costs ~20 us there):
by default (--pin split) the client under test runs alone on one CPU and
the broker plus the C helper share another.  The QoS1 window (--window) is
the same for every client and is also the broker's Receive Maximum.

  python bench/run.py                 # full run (~2.5 min on 2 cores)
  python bench/run.py --quick         # smoke run, < 60 s
  python bench/run.py --only paho,c --workloads pub0-tcp,rtt-tcp --json out.json
"""

import argparse
import ctypes
import json
import os
import platform
import pwd
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
C_SRC = BENCH / "c_ceiling.c"
C_BIN = BENCH / "bin" / "c_ceiling"
WORKLOAD = BENCH / "workload.py"

CLIENTS = ["sermas", "paho", "c"]
CLIENT_LABEL = {"sermas": "sermas_bus", "paho": "paho-mqtt", "c": "C ceiling"}
WORKLOADS = ["pub0-tcp", "pub0-ws", "pub1-tcp", "pub1-ws", "recv-tcp", "recv-ws", "rtt-tcp", "rtt-ws"]

# First-round message counts; later rounds rescale N so a run lasts --seconds.
FIRST_N = {
    "pub0": {"c": 200_000, "sermas": 200_000, "paho": 40_000},
    "pub1": {"c": 100_000, "sermas": 100_000, "paho": 20_000},
    "recv": {"c": 200_000, "sermas": 200_000, "paho": 40_000},
}
QUICK_N = {
    "pub0": {"c": 50_000, "sermas": 50_000, "paho": 10_000},
    "pub1": {"c": 20_000, "sermas": 20_000, "paho": 5_000},
    "recv": {"c": 50_000, "sermas": 50_000, "paho": 10_000},
}
N_MIN, N_MAX = 5_000, 500_000  # N_MAX stays well under max_queued_messages

# Targets for sermas_bus: (min ratio vs C, min ratio vs paho) for rates,
# max ratio vs C for latency.
TARGETS = {
    "pub0-tcp": {"c": 0.9, "paho": 2.5},
    "pub0-ws": {"c": 0.9, "paho": 5.0},
    "pub1-tcp": {"c": 0.9, "paho": 2.5},
    "pub1-ws": {"c": 0.9, "paho": 5.0},
    "recv-tcp": {"paho": 2.5},
    "recv-ws": {"paho": 2.5},
    "rtt-tcp": {"c_max": 1.2},
    "rtt-ws": {"c_max": 1.2},
}


class BenchError(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------ child processes

_live = set()  # every Popen we started and have not reaped yet


def _die_with_parent():
    """preexec_fn: children get SIGTERM if the driver dies (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


def _child_setup(cpus):
    def setup():
        _die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def cpu_plan(mode):
    """CPU sets for (broker, helper, client under test) under --pin MODE.

    split: the client under test gets a CPU of its own; the broker and the C
           helper (counter / flooder) share the other (with 3+ CPUs each of
           the three gets its own).  Stable numbers, client and broker on
           different cores as in a deployment.
    same:  everything on one CPU (no cross-CPU wake-ups: a latency floor).
    none:  leave placement to the scheduler (noisier on a shared 2-core VM).
    """
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "none" or len(cpus) < 2:
        return None, None, None
    if mode == "same":
        return {cpus[0]}, {cpus[0]}, {cpus[0]}
    if len(cpus) == 2:
        return {cpus[0]}, {cpus[0]}, {cpus[1]}
    return {cpus[0]}, {cpus[1]}, {cpus[2]}


class Proc:
    """A child process speaking the READY / RESULT {json} line protocol."""

    def __init__(self, name, argv, env=None, cpus=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.lines = queue.Queue()
        self.p = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=ROOT,
            preexec_fn=_child_setup(cpus),
        )
        _live.add(self.p)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _next_line(self, deadline):
        try:
            return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise BenchError(f"{self.name}: timed out") from None

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            line = self._next_line(deadline)
            if line is None:
                self.wait(5)
                raise BenchError(f"{self.name}: exited before READY{self.stderr_tail()}")
            if line == "READY":
                return

    def result(self, timeout):
        """The RESULT dict.  A process that hangs or fails after printing it
        keeps its numbers; the problem is recorded under "exit_problem"."""
        deadline = time.monotonic() + timeout
        res = None
        while res is None:
            line = self._next_line(deadline)
            if line is None:
                break
            if line.startswith("RESULT "):
                res = json.loads(line[len("RESULT "):])
        if res is None:
            rc = self.wait(max(1.0, deadline - time.monotonic()))
            raise BenchError(f"{self.name}: exit status {rc} without a RESULT{self.stderr_tail()}")
        try:
            rc = self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
            res["exit_problem"] = f"{self.name} hung after its RESULT (killed after 10 s)"
            return res
        _live.discard(self.p)
        if rc != 0:
            res["exit_problem"] = f"{self.name} exited with status {rc} after its RESULT{self.stderr_tail(3)}"
        return res

    def wait(self, timeout):
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"{self.name}: did not exit, killed{self.stderr_tail()}") from None
        finally:
            if self.p.returncode is not None:
                _live.discard(self.p)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        _live.discard(self.p)

    def stderr_tail(self, n=15):
        self.stderr.seek(0)
        text = self.stderr.read().strip().splitlines()[-n:]
        return ("\n    " + "\n    ".join(text)) if text else ""


def kill_all():
    for p in list(_live):
        if p.poll() is None:
            p.kill()
            p.wait()
        _live.discard(p)


# ------------------------------------------------------------------- broker


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_mosquitto():
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not exe:
        raise BenchError("mosquitto not found: install the Debian package 'mosquitto' (apt-get install mosquitto)")
    return exe


class BenchBroker:
    """A private mosquitto tuned for benchmarking.

    Same surface as sermas_bus.testing.Mosquitto (host, port, ws_port,
    url()).  It stays separate because the benchmark needs its own tuning;
    swap it out in start_broker() if that class grows an extra-config knob.
    """

    def __init__(self, window):
        self.exe = find_mosquitto()
        self.window = window
        self.host = "127.0.0.1"
        self.dir = tempfile.TemporaryDirectory(prefix="sermas-bench-")
        self.proc = None

    def config(self):
        return "\n".join(
            [
                "per_listener_settings false",
                # Run as ourselves: when started as root mosquitto would switch
                # to the 'mosquitto' user, which also clears PR_SET_PDEATHSIG
                # and would leak the broker if the driver were SIGKILLed.
                f"user {pwd.getpwuid(os.geteuid()).pw_name}",
                "allow_anonymous true",
                "persistence false",
                "log_dest none",
                "connection_messages false",
                "sys_interval 0",
                "set_tcp_nodelay true",
                # QoS0 to a slow subscriber is dropped once this many packets
                # are queued for it; keep it far above any N we send.
                "max_queued_messages 1000000",
                "max_queued_bytes 0",
                # Also the Receive Maximum in CONNACK: paho.mqtt.c clamps its
                # maxInflightMessages to it, so it must be >= the QoS1 window.
                f"max_inflight_messages {self.window}",
                f"listener {self.port} {self.host}",
                "protocol mqtt",
                f"listener {self.ws_port} {self.host}",
                "protocol websockets",
                "",
            ]
        )

    def url(self, kind="tcp"):
        if kind == "tcp":
            return f"tcp://{self.host}:{self.port}"
        if kind == "ws":
            return f"ws://{self.host}:{self.ws_port}/mqtt"
        raise ValueError(kind)

    def __enter__(self):
        for attempt in range(3):
            self.port, self.ws_port = _free_port(), _free_port()
            if self.port == self.ws_port:
                continue
            conf = Path(self.dir.name) / "mosquitto.conf"
            conf.write_text(self.config())
            self.err = open(Path(self.dir.name) / "stderr", "w+")
            self.proc = subprocess.Popen(
                [self.exe, "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=self.err,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            _live.add(self.proc)
            if self._wait_listening(5):
                return self
            self._stop()
        raise BenchError(f"mosquitto did not start (config {conf}):\n{self.config()}")

    def _wait_listening(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                for port in (self.port, self.ws_port):
                    socket.create_connection((self.host, port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            _live.discard(self.proc)
            self.proc = None

    def __exit__(self, *exc):
        self._stop()
        self.dir.cleanup()


def start_broker(window):
    """The one swap point for the broker (see BenchBroker)."""
    return BenchBroker(window)


# ----------------------------------------------------------------- C build


def build_c():
    """Build bench/bin/c_ceiling if it is missing or older than its source."""
    if C_BIN.exists() and C_BIN.stat().st_mtime >= C_SRC.stat().st_mtime:
        return
    cc = shutil.which(os.environ.get("CC", "cc"))
    if not cc:
        raise BenchError("no C compiler: install the Debian package 'build-essential' (or 'gcc')")
    for header, pkg in (("MQTTClient.h", "libpaho-mqtt-dev"), ("cjson/cJSON.h", "libcjson-dev")):
        if not any((Path(d) / header).exists() for d in ("/usr/include", "/usr/local/include")):
            raise BenchError(f"{header} not found: install the Debian package '{pkg}'")
    C_BIN.parent.mkdir(exist_ok=True)
    cmd = [cc, "-O2", "-Wall", str(C_SRC), "-lpaho-mqtt3c", "-lcjson", "-lpthread", "-o", str(C_BIN)]
    log("building: " + " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        hint = ""
        if "paho-mqtt3c" in r.stderr:
            hint = "\n(libpaho-mqtt3c missing: apt-get install libpaho-mqtt-dev)"
        elif "lcjson" in r.stderr:
            hint = "\n(libcjson missing: apt-get install libcjson-dev)"
        raise BenchError(f"building {C_BIN} failed:\n{r.stderr}{hint}")


# ------------------------------------------------------------- measurements


def child_env():
    """Environment for Python children: the in-tree sermas_bus comes first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Bench:
    def __init__(self, args, broker):
        self.a = args
        self.b = broker
        self.seq = 0
        self.env = child_env()
        broker_cpus, self.helper_cpus, self.client_cpus = cpu_plan(args.pin)
        if broker_cpus:
            os.sched_setaffinity(broker.pid, broker_cpus)

    # --- process builders
    def topic(self, wl, client):
        self.seq += 1
        return f"bench/{os.getpid()}/{wl}/{client}/{self.seq}"

    def py(self, role, client, transport, topic, n, qos=0, extra=()):
        port = self.b.ws_port if transport == "ws" else self.b.port
        argv = [sys.executable, WORKLOAD, role, "--client", client, "--host", self.b.host, "--port", port,
                "--transport", transport, "--topic", topic, "-n", n, "--qos", qos, "--window", self.a.window, *extra]
        return Proc(f"{client} {role}", argv, env=self.env, cpus=self.client_cpus)

    def c(self, mode, transport, topic, n, qos=0, extra=(), under_test=False):
        argv = [C_BIN, mode, "--uri", self.b.url(transport), "--topic", topic, "-n", n, "--qos", qos,
                "--window", self.a.window, *extra]
        return Proc(f"c {mode}", argv, cpus=self.client_cpus if under_test else self.helper_cpus)

    def client_proc(self, client, role, transport, topic, n, qos=0, extra=()):
        if client == "c":
            return self.c(role, transport, topic, n, qos, extra, under_test=True)
        return self.py(role, client, transport, topic, n, qos, extra)

    @staticmethod
    def timeout_for(n):
        return 60 + n / 2_000

    # --- workloads
    def pub(self, client, transport, qos, n):
        """Publisher under test; the raw-socket C counter (TCP, QoS0) counts arrivals."""
        topic = self.topic(f"pub{qos}-{transport}", client)
        procs = []
        try:
            sub = self.c("count", "tcp", topic, n, 0, ["--idle", 5])
            procs.append(sub)
            sub.wait_ready()
            pub = self.client_proc(client, "pub", transport, topic, n, qos)
            procs.append(pub)
            p = pub.result(self.timeout_for(n))
            s = sub.result(30)
        finally:
            for pr in procs:
                pr.kill()
        t_pub = (p["t_returned"] if qos == 0 else p["t_end"]) - p["t_start"]
        r = {
            "n": n,
            "rate": n / t_pub,
            "arrived": s["count"],
            "complete": s["count"] == n,
            "delivered_rate": n / (s["t_last"] - p["t_start"]) if s["count"] == n else None,
            "pub": p,
            "sub": s,
        }
        if p.get("slow_publishes"):
            r["stalls_100ms"] = p["slow_publishes"]
            r["rate_without_stalls"] = n / (t_pub - p["slow_s"])
        return r

    def recv(self, client, transport, n):
        """Subscriber under test decodes + counts; the raw-socket C flooder publishes over TCP."""
        topic = self.topic(f"recv-{transport}", client)
        extra = ["--idle", 5] + (["--decode"] if client == "c" else [])
        procs = []
        try:
            sub = self.client_proc(client, "sub", transport, topic, n, 0, extra)
            procs.append(sub)
            sub.wait_ready()
            flood = self.c("flood", "tcp", topic, n)
            procs.append(flood)
            f = flood.result(self.timeout_for(n))
            s = sub.result(self.timeout_for(n))
        finally:
            for pr in procs:
                pr.kill()
        span = s["t_last"] - s["t_first"]
        # until the broker closed the flooder's connection after its
        # DISCONNECT, i.e. until the broker had taken in every message
        flood_span = f["t_end"] - f["t_start"]
        return {
            "n": n,
            "rate": n / span if span > 0 else None,
            "arrived": s["count"],
            "complete": s["count"] == n,
            "flood_rate": n / flood_span,
            # the subscriber finished (almost) when the flooder did: the
            # number is a floor set by the publisher/broker, not the client
            "publisher_bound": s["t_last"] - f["t_end"] < 0.1 * span,
            "sub": s,
            "flood": f,
        }

    def rtt(self, client, transport, n, warmup):
        topic = self.topic(f"rtt-{transport}", client)
        proc = self.client_proc(client, "rtt", transport, topic, n, 0, ["--warmup", warmup])
        try:
            r = proc.result(60 + (n + warmup) / 500)
        finally:
            proc.kill()
        r["complete"] = r.get("timeouts", 0) == 0
        return r


# ------------------------------------------------------------------ driver


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="repetitions per measurement (median reported)")
    p.add_argument("--quick", action="store_true", help="smoke run: small N, 1 round (< 60 s)")
    p.add_argument("--only", default=",".join(CLIENTS), help="clients to measure (sermas,paho,c)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of: " + ",".join(WORKLOADS))
    p.add_argument("--json", metavar="FILE", help="write raw numbers and medians here")
    p.add_argument("--seconds", type=float, default=2.0, help="target duration of one throughput run")
    p.add_argument("-n", type=int, help="fixed message count for every throughput run (disables scaling)")
    p.add_argument("--window", type=int, default=1000, help="QoS1 in-flight window for every client")
    p.add_argument("--pin", choices=["split", "same", "none"], default="split",
                   help="CPU placement (default split: client under test on its own CPU, broker + C helper on the other)")
    p.add_argument("--rtt-samples", type=int, default=5000)
    p.add_argument("--rtt-warmup", type=int, default=500)
    a = p.parse_args(argv)
    a.only = [c.strip() for c in a.only.split(",") if c.strip()]
    a.workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    for c in a.only:
        if c not in CLIENTS:
            p.error(f"--only: unknown client {c!r} (choose from {','.join(CLIENTS)})")
    for w in a.workloads:
        if w not in WORKLOADS:
            p.error(f"--workloads: unknown workload {w!r} (choose from {','.join(WORKLOADS)})")
    if a.quick:
        a.rounds = 1
        a.rtt_samples = min(a.rtt_samples, 1000)
        a.rtt_warmup = min(a.rtt_warmup, 200)
    return a


def probe_clients(args):
    """Import each Python client in a child; return (available, notes, info)."""
    available, notes, info = [], [], {}
    c_payload = subprocess.run([C_BIN, "payload"], capture_output=True, text=True, check=True).stdout.strip()
    for client in args.only:
        if client == "c":
            available.append(client)
            continue
        r = subprocess.run(
            [sys.executable, WORKLOAD, "probe", "--client", client],
            capture_output=True, text=True, cwd=ROOT, env=child_env(),
        )
        res = next((json.loads(l[7:]) for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
        if r.returncode != 0 or res is None:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            notes.append(f"{CLIENT_LABEL[client]} skipped: cannot import it ({last})")
            continue
        available.append(client)
        info[client] = res
        if res["payload"] != c_payload:
            notes.append(f"WARNING: {CLIENT_LABEL[client]} encodes a different payload than the C program:\n"
                         f"  py: {res['payload']}\n  c:  {c_payload}")
        if client == "sermas":
            notes.append(f"sermas_bus encodes with {res['dumps']} and decodes with {res['loads']}")
    info["payload_bytes"] = len(c_payload.encode())
    return available, notes, info


def first_n(args, kind, client):
    if args.n:
        return args.n
    return (QUICK_N if args.quick else FIRST_N)[kind][client]


def run_all(args, clients, bench):
    runs = []
    next_n = {}
    total = args.rounds * len(args.workloads) * len(clients)
    k = 0
    for rnd in range(args.rounds):
        for wl in args.workloads:
            kind, transport = wl.split("-")
            # rotate the client order every round
            order = clients[rnd % len(clients):] + clients[: rnd % len(clients)]
            for client in order:
                k += 1
                n = args.rtt_samples if kind == "rtt" else next_n.get((wl, client)) or first_n(args, kind, client)
                t0 = time.monotonic()
                rec = {"workload": wl, "client": client, "round": rnd}
                try:
                    if kind == "pub0":
                        res = bench.pub(client, transport, 0, n)
                    elif kind == "pub1":
                        res = bench.pub(client, transport, 1, n)
                    elif kind == "recv":
                        res = bench.recv(client, transport, n)
                    else:
                        res = bench.rtt(client, transport, n, args.rtt_warmup)
                    rec.update(res)
                    if kind != "rtt" and not args.n and not args.quick and res.get("rate"):
                        next_n[(wl, client)] = int(min(N_MAX, max(N_MIN, res["rate"] * args.seconds)) // 1000 * 1000)
                except BenchError as e:
                    rec["error"] = str(e)
                runs.append(rec)
                log(f"[{k}/{total}] round {rnd + 1} {wl:9s} {CLIENT_LABEL[client]:11s} {describe(rec)}"
                    f"  ({time.monotonic() - t0:.1f}s)")
                if not bench.b.alive():
                    raise BenchError("mosquitto died during the run")
    return runs


def describe(rec):
    if "error" in rec:
        return "ERROR: " + rec["error"].splitlines()[0]
    if rec["workload"].startswith("rtt"):
        s = f"p50 {rec['p50_us']:.0f} us  p99 {rec['p99_us']:.0f} us  (n={rec['n']})"
    else:
        s = f"{fmt_rate(rec['rate'])} msg/s  n={rec['n']}"
        if rec["workload"].startswith("pub"):
            s += f"  delivered {fmt_rate(rec['delivered_rate'])}/s" if rec["complete"] else f"  ARRIVED {rec['arrived']}/{rec['n']}"
            if rec.get("stalls_100ms"):
                s += f"  stalls={rec['stalls_100ms']}"
        else:
            s += f"  flood {fmt_rate(rec['flood_rate'])}/s"
            if not rec["complete"]:
                s += f"  ARRIVED {rec['arrived']}/{rec['n']}"
            if rec["publisher_bound"]:
                s += "  (publisher-bound)"
    return s


def fmt_rate(x):
    if x is None:
        return "-"
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def median(runs, wl, client, key):
    vals = [r[key] for r in runs if r["workload"] == wl and r["client"] == client and "error" not in r and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(args, runs, clients):
    """Rows of (label, unit, {client: value}, key metric, workload)."""
    rows = []
    for wl in args.workloads:
        kind, transport = wl.split("-")
        tr = "TCP" if transport == "tcp" else "WS"
        if kind.startswith("pub"):
            q = kind[-1]
            rows.append((f"QoS{q} publish, {tr} (msg/s)", "rate", wl, {c: median(runs, wl, c, "rate") for c in clients}))
            rows.append((f"  ...delivered end-to-end, {tr} (msg/s)", "rate", None,
                         {c: median(runs, wl, c, "delivered_rate") for c in clients}))
        elif kind == "recv":
            rows.append((f"Receive + JSON decode, {tr} (msg/s)", "rate", wl, {c: median(runs, wl, c, "rate") for c in clients}))
        else:
            rows.append((f"RTT p50, {tr} (us)", "lat", wl, {c: median(runs, wl, c, "p50_us") for c in clients}))
            rows.append((f"RTT p99, {tr} (us)", "lat", None, {c: median(runs, wl, c, "p99_us") for c in clients}))
    return rows


def verdict(wl, vals):
    """(target text, PASS/FAIL/n/a) for a summary row; rows without a target get ("", "")."""
    t = TARGETS.get(wl) if wl else None
    if not t:
        return "", ""
    s, p, c = vals.get("sermas"), vals.get("paho"), vals.get("c")
    checks = []  # (description, ok-or-None)
    if "c" in t:
        checks.append((f">= {t['c']}x C", None if s is None or not c else s / c >= t["c"]))
    if "paho" in t:
        checks.append((f">= {t['paho']}x paho", None if s is None or not p else s / p >= t["paho"]))
    if "c_max" in t:
        checks.append((f"<= {t['c_max']}x C", None if s is None or not c else s / c <= t["c_max"]))
    oks = [ok for _, ok in checks]
    result = "FAIL" if False in oks else "n/a" if None in oks else "PASS"
    return ", ".join(d for d, _ in checks), result


def table(rows):
    def cell(v, unit):
        if v is None:
            return "-"
        return fmt_rate(v) if unit == "rate" else f"{v:.0f}"

    def ratio(a, b):
        return f"{a / b:.2f}x" if a is not None and b else "-"

    out = [
        "| workload | sermas_bus | paho-mqtt | C ceiling | sermas/C | sermas/paho | target | result |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for label, unit, wl, vals in rows:
        target, res = verdict(wl, vals)
        s = vals.get("sermas")
        out.append(f"| {label} | {cell(s, unit)} | {cell(vals.get('paho'), unit)} | {cell(vals.get('c'), unit)} | "
                   f"{ratio(s, vals.get('c'))} | {ratio(s, vals.get('paho'))} | {target} | {res} |")
    return "\n".join(out)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    try:
        build_c()
        clients, notes, info = probe_clients(args)
        if not clients:
            raise BenchError("no client left to measure")
        load1 = os.getloadavg()[0]
        if load1 > 0.5:
            notes.append(f"machine was busy at start (load average {load1:.2f}): numbers may be noisy")
        with start_broker(args.window) as broker:
            log(f"mosquitto on {broker.url('tcp')} and {broker.url('ws')}; clients: "
                f"{', '.join(CLIENT_LABEL[c] for c in clients)}; payload {info['payload_bytes']} bytes; "
                f"QoS1 window {args.window}; rounds {args.rounds}; pin {args.pin} "
                f"(broker/helper/client CPUs {'/'.join(str(sorted(c)) if c else '*' for c in cpu_plan(args.pin))})")
            broker_config = broker.config()
            runs = run_all(args, clients, Bench(args, broker))
    except BenchError as e:
        log(f"bench: {e}")
        return 1
    except KeyboardInterrupt:
        log("bench: interrupted")
        return 130
    finally:
        kill_all()

    rows = summarize(args, runs, args.only)
    errors = [r for r in runs if "error" in r]
    incomplete = [r for r in runs if "error" not in r and not r.get("complete", True)]
    pbound = [r for r in runs if r.get("publisher_bound")]
    if errors:
        notes.append(f"{len(errors)} measurement(s) failed; see the progress lines above")
    if incomplete:
        notes.append("not every message arrived in: " + ", ".join(
            sorted({f"{r['workload']}/{CLIENT_LABEL[r['client']]}" for r in incomplete})))
    if pbound:
        notes.append("receive rate bounded by the C flooder/broker (subscriber kept up) in: " + ", ".join(
            sorted({f"{r['workload']}/{CLIENT_LABEL[r['client']]}" for r in pbound})))
    for r in runs:
        for part in [r] + [v for v in r.values() if isinstance(v, dict)]:
            if "exit_problem" in part:
                notes.append(f"{r['workload']} round {r['round'] + 1}: {part['exit_problem']}")
    stalls = [r for r in runs if r.get("stalls_100ms")]
    if stalls:
        notes.append("paho.mqtt.c publish stalled >= 100 ms (MQTTClient_yield sleeps when the socket is full) in: "
                     + ", ".join(f"{r['workload']} round {r['round'] + 1} x{r['stalls_100ms']} "
                                 f"({fmt_rate(r['rate_without_stalls'])}/s without them)" for r in stalls))

    print()
    print(f"## sermas_bus benchmark ({'quick, ' if args.quick else ''}median of {args.rounds} round(s), "
          f"{os.cpu_count()} CPUs, pin {args.pin}, payload {info['payload_bytes']} B, QoS1 window {args.window})")
    print()
    print(table(rows))
    print()
    print("Publish rate: N / time until the last publish() returned (QoS0) or the last wait_for_publish()")
    print("returned (QoS1). Delivered: N / time from the first publish to the last arrival at the counter.")
    print("Receive: N / time from first to last arrival. RTT: QoS0 through the broker, same client.")
    print(f"QoS1: every client keeps at most {args.window} messages in flight (also the broker's Receive Maximum).")
    for n in notes:
        print(f"- {n}")

    if args.json:
        doc = {
            "meta": {
                "argv": sys.argv[1:],
                "quick": args.quick,
                "rounds": args.rounds,
                "window": args.window,
                "pin": args.pin,
                "cpu_plan": [sorted(c) if c else None for c in cpu_plan(args.pin)],
                "cpus": os.cpu_count(),
                "loadavg_at_end": os.getloadavg(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "clients": info,
                "broker_config": broker_config,
                "elapsed_s": time.monotonic() - started,
            },
            "notes": notes,
            "runs": runs,
            "summary": [
                {"row": label, "workload": wl, "values": vals, "target": verdict(wl, vals)[0], "result": verdict(wl, vals)[1]}
                for label, unit, wl, vals in rows
            ],
        }
        Path(args.json).write_text(json.dumps(doc, indent=2))
        log(f"raw numbers written to {args.json}")
    log(f"bench: done in {time.monotonic() - started:.0f}s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
