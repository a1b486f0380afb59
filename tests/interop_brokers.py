"""Private third-party MQTT brokers for the interoperability tests.

Each class starts one real broker as a child process, in its own process
group, with a generated configuration and data directory in a private
temporary directory, listening only on free 127.0.0.1 ports; it never touches
the system services (mosquitto on 1883, RabbitMQ on 5672/25672, epmd on 4369,
NATS on 4222, ...)::

    with RabbitMQ() as broker:          # or NatsServer(), Amqtt()
        broker.url("tcp")               # 'tcp://127.0.0.1:41234'
        broker.url("ws")                # 'ws://127.0.0.1:41235/mqtt'
        broker.restart()                # graceful stop + start on the same ports
        broker.kill()                   # SIGKILL the whole process group (a crash)
        broker.start()                  # same ports again

================  ==========================================  ====================
class             broker                                      missing -> install
================  ==========================================  ====================
``RabbitMQ``      RabbitMQ 3.x, plugins ``rabbitmq_mqtt`` +   Debian ``rabbitmq-server``
                  ``rabbitmq_web_mqtt``, a private node with
                  its own epmd
``NatsServer``    NATS 2.9+ with JetStream and its MQTT        Debian ``nats-server``
                  (3.1.1 only) + websocket listeners
``Amqtt``         amqtt (Python, MQTT 3.1.1 only)              PyPI ``amqtt``
================  ==========================================  ====================

When the broker's executable or module is missing, ``start()`` raises
``BrokerUnavailable`` naming the package to install; ``start_or_skip()``
turns that into ``pytest.skip`` (or into a failure when the environment
variable ``SERMAS_INTEROP_REQUIRED=1`` is set, e.g. in CI, so that a missing
broker never passes silently).  Any other start-up problem raises
``RuntimeError`` with the tail of the broker's log.

Readiness: the process is alive, has logged its "ready" line, its MQTT port
answers a plain MQTT 3.1.1 CONNECT with CONNACK 0 and its websocket port
completes an HTTP upgrade (every wait bounded by ``ready_timeout``).

Only the standard library is used (the free-port helper comes from
``sermas_bus.testing``); ``pytest`` is imported only by ``start_or_skip``.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from typing import Dict, List, Optional, Tuple

try:
    from sermas_bus.testing import _free_ports, _tail
except ImportError:  # pragma: no cover - sermas_bus not importable: same helpers
    def _free_ports(count: int, host: str) -> List[int]:
        socks = []
        try:
            for _ in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, 0))
            return [s.getsockname()[1] for s in socks]
        finally:
            for s in socks:
                s.close()

    def _tail(text: str, lines: int = 40) -> str:
        return "\n".join(text.splitlines()[-lines:])

__all__ = ["BrokerUnavailable", "InteropBroker", "RabbitMQ", "NatsServer", "Amqtt",
           "BROKERS", "start_or_skip", "mqtt_ping"]

HOST = "127.0.0.1"
_PORT_IN_USE = re.compile(r"address already in use|eaddrinuse|errno 98", re.IGNORECASE)


class BrokerUnavailable(RuntimeError):
    """The broker's program or module is not installed; the message says what to install."""


# ---------------------------------------------------------------------------
# readiness probes
# ---------------------------------------------------------------------------

def _connect_packet(client_id: str) -> bytes:
    """A minimal MQTT 3.1.1 CONNECT: clean session, keepalive 10 s, no will/auth."""
    cid = client_id.encode("ascii")
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    for _ in range(n + 1):          # bounded: at most n+1 recv calls
        if len(data) >= n:
            break
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def mqtt_ping(port: int, host: str = HOST, timeout: float = 2.0) -> Optional[str]:
    """Open a TCP connection, send an MQTT 3.1.1 CONNECT and wait for CONNACK.

    Returns None when the broker accepted the connection (CONNACK return code
    0), else a short description of what happened instead.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(_connect_packet("sbtest-ready-" + uuid.uuid4().hex[:10]))
            ack = _recv_exact(s, 4)
            if len(ack) == 4 and ack[0] == 0x20 and ack[1] == 0x02:
                try:
                    s.sendall(b"\xe0\x00")   # DISCONNECT: no will, no error in the log
                except OSError:
                    pass
                return None if ack[3] == 0 else "CONNACK return code {}".format(ack[3])
            return "no CONNACK (got {!r})".format(ack)
    except OSError as exc:
        return "{}: {}".format(type(exc).__name__, exc)


def ws_ping(port: int, path: str = "/mqtt", host: str = HOST, timeout: float = 2.0) -> Optional[str]:
    """Websocket upgrade with subprotocol ``mqtt``; None when the server answered 101."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    request = ("GET {} HTTP/1.1\r\nHost: {}:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Protocol: mqtt\r\n\r\n").format(path, host, port, key)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(request.encode("ascii"))
            head = b""
            for _ in range(64):
                if b"\r\n" in head:
                    break
                chunk = s.recv(1024)
                if not chunk:
                    break
                head += chunk
            status = head.split(b"\r\n", 1)[0].decode("latin-1")
            return None if " 101" in status else "websocket upgrade answered {!r}".format(status)
    except OSError as exc:
        return "{}: {}".format(type(exc).__name__, exc)


# ---------------------------------------------------------------------------
# process handling
# ---------------------------------------------------------------------------

class _Proc:
    """A child started in its own process group (start_new_session)."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.pgid = popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait_group(self, timeout: float) -> bool:
        """Reap the leader and wait until no process of the group is left."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.popen.wait(max(0.0, min(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
            if self.popen.poll() is not None and not self.group_alive():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        self.wait_group(10)


class _State:
    """What the finalizer needs (no reference to the broker object)."""

    def __init__(self) -> None:
        self.procs: Dict[str, _Proc] = {}
        self.tmpdir: Optional[str] = None


def _cleanup(state: _State) -> None:
    for proc in list(state.procs.values()):
        try:
            proc.kill()
        except Exception:
            pass
    state.procs.clear()
    if state.tmpdir is not None:
        shutil.rmtree(state.tmpdir, ignore_errors=True)
        state.tmpdir = None


# ---------------------------------------------------------------------------
# base class
# ---------------------------------------------------------------------------

class InteropBroker:
    """Common life cycle: ``start()``, ``stop()``, ``kill()``, ``restart()``,
    ``close()``, ``url(kind)``, ``log()``, context manager.

    Subclasses set ``name``, ``package`` (what to install), ``ready_marker``
    (a regex of the log line printed once every listener is up) and implement
    ``_check_available``, ``_write_config``, ``_command``/``_env`` and
    optionally ``_graceful_stop`` / ``_before_spawn`` / ``_after_close``.
    """

    name = "broker"
    package = "?"
    ready_marker = r"$^"
    host = HOST
    #: listener kinds -> URL scheme and path
    kinds: Dict[str, Tuple[str, str]] = {"tcp": ("tcp", ""), "ws": ("ws", "/mqtt")}
    #: how long a start waits for readiness (s)
    ready_timeout = 30.0
    #: how long a graceful stop may take before SIGKILL (s)
    stop_timeout = 15.0
    #: how long a restart keeps retrying while a port is still taken (s)
    port_retry_seconds = 15.0
    #: extra port names besides the listener kinds (amqp, dist, epmd, ...)
    extra_ports: Tuple[str, ...] = ()

    def __init__(self, websockets: bool = True, ready_timeout: Optional[float] = None) -> None:
        self.websockets = websockets
        if ready_timeout is not None:
            self.ready_timeout = float(ready_timeout)
        self.ports: Dict[str, int] = {}
        self.tmpdir: Optional[str] = None
        self.out_path: Optional[str] = None
        self.starts = 0                  # successful starts
        self.startup_seconds: List[float] = []
        self._closed = False
        self._state = _State()
        self._finalizer = weakref.finalize(self, _cleanup, self._state)
        self._check_available()

    # ----------------------------------------------------------------- info
    @property
    def port(self) -> int:
        """The plain MQTT port."""
        return self.ports["tcp"]

    @property
    def ws_port(self) -> Optional[int]:
        return self.ports.get("ws")

    @property
    def pid(self) -> Optional[int]:
        proc = self._state.procs.get("broker")
        return proc.popen.pid if proc is not None else None

    def is_running(self) -> bool:
        proc = self._state.procs.get("broker")
        return proc is not None and proc.alive()

    def url(self, kind: str = "tcp") -> str:
        """``tcp://127.0.0.1:<port>`` or ``ws://127.0.0.1:<port>/mqtt``."""
        if kind not in self.kinds:
            raise ValueError("unknown listener kind {!r}; expected one of {}".format(
                kind, ", ".join(self.kinds)))
        if self.tmpdir is None:
            raise RuntimeError("broker not started yet: call start() or use 'with'")
        if kind not in self.ports:
            raise ValueError("listener {!r} is not enabled on this {}".format(kind, self.name))
        scheme, path = self.kinds[kind]
        return "{}://{}:{}{}".format(scheme, self.host, self.ports[kind], path)

    def log(self) -> str:
        """Everything the broker wrote (stdout/stderr and its log files)."""
        parts = []
        for path in self._log_files():
            if path and os.path.exists(path):
                with open(path, "r", encoding="utf-8", errors="replace") as f:
                    parts.append("--- {} ---\n{}".format(os.path.basename(path), f.read()))
        return "\n".join(parts)

    def __repr__(self) -> str:
        return "<{} {} pid={} {}>".format(type(self).__name__,
                                         "running" if self.is_running() else "stopped",
                                         self.pid, self.ports)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "InteropBroker":
        """Start the broker (no-op if running) and wait until it is ready.

        The first start picks free ports (retrying with new ones if one was
        taken meanwhile); later starts reuse the same ports and data directory.
        """
        if self._closed:
            raise RuntimeError("this {} was closed; create a new one".format(type(self).__name__))
        if self.is_running():
            return self
        first = self.tmpdir is None
        if first:
            self._prepare()
            attempts, deadline = 4, None
        else:
            attempts, deadline = 10000, time.monotonic() + self.port_retry_seconds
        error = "not started"
        for _attempt in range(attempts):
            if first:
                self._assign_ports()
            self._write_config()
            error, port_in_use = self._spawn_and_wait()
            if error is None:
                return self
            if not port_in_use:
                break
            if deadline is not None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.3)
        raise RuntimeError(error)

    def stop(self) -> None:
        """Graceful stop (broker specific), SIGKILL of the group after ``stop_timeout``."""
        proc = self._state.procs.pop("broker", None)
        if proc is None:
            return
        if proc.alive():
            try:
                self._graceful_stop(proc)
            except Exception:
                pass
        if not proc.wait_group(self.stop_timeout):
            proc.kill()

    def kill(self) -> None:
        """SIGKILL every process of the broker's group (simulates a crash)."""
        proc = self._state.procs.pop("broker", None)
        if proc is not None:
            proc.kill()

    def restart(self) -> "InteropBroker":
        """``stop()`` then ``start()`` on the same ports and data directory."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the broker (and its helpers) and delete the temporary directory."""
        try:
            self.stop()
            self._after_close()
        finally:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> "InteropBroker":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ internals
    def _check_available(self) -> None:
        raise NotImplementedError

    def _write_config(self) -> None:
        raise NotImplementedError

    def _command(self) -> List[str]:
        raise NotImplementedError

    def _env(self) -> Dict[str, str]:
        return dict(os.environ)

    def _graceful_stop(self, proc: _Proc) -> None:
        proc.signal_group(signal.SIGTERM)

    def _before_spawn(self) -> None:
        pass

    def _after_close(self) -> None:
        pass

    def _log_files(self) -> List[str]:
        return [self.out_path] if self.out_path else []

    def _path(self, *names: str) -> str:
        assert self.tmpdir is not None
        return os.path.join(self.tmpdir, *names)

    def _prepare(self) -> None:
        tmpdir = tempfile.mkdtemp(prefix="sbtest-{}-".format(self.name))
        self._state.tmpdir = self.tmpdir = tmpdir
        self.out_path = self._path("broker.out")

    def _assign_ports(self) -> None:
        names = ["tcp"] + (["ws"] if self.websockets else []) + list(self.extra_ports)
        self.ports = dict(zip(names, _free_ports(len(names), self.host)))

    def _output_since(self, offsets: Dict[str, int]) -> str:
        text = []
        for path in self._log_files():
            if path and os.path.exists(path):
                with open(path, "rb") as f:
                    f.seek(offsets.get(path, 0))
                    text.append(f.read().decode("utf-8", errors="replace"))
        return "\n".join(text)

    def _listener_probes(self) -> Dict[str, Optional[str]]:
        out = {"tcp": mqtt_ping(self.ports["tcp"], self.host)}
        if "ws" in self.ports:
            out["ws"] = ws_ping(self.ports["ws"], self.kinds["ws"][1], self.host)
        return out

    def _spawn_and_wait(self) -> Tuple[Optional[str], bool]:
        """Start the process; (None, False) when ready, else (error, port_in_use)."""
        offsets = {p: os.path.getsize(p) for p in self._log_files() if p and os.path.exists(p)}
        self._before_spawn()
        started = time.monotonic()
        with open(str(self.out_path), "ab") as out:
            popen = subprocess.Popen(self._command(), cwd=self.tmpdir, env=self._env(),
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     close_fds=True, start_new_session=True)
        proc = self._state.procs["broker"] = _Proc(popen)

        def failure(reason: str) -> Tuple[str, bool]:
            self.kill()
            text = self._output_since(offsets)
            in_use = _PORT_IN_USE.search(text) is not None
            return ("{} failed to start: {} (ports {}, dir {}){}; log tail:\n{}".format(
                self.name, reason, self.ports, self.tmpdir,
                " - a port is in use by another process" if in_use else "",
                _tail(text) or "<empty>"), in_use)

        deadline = started + self.ready_timeout
        marker = re.compile(self.ready_marker)
        marker_seen = False
        probes: Dict[str, Optional[str]] = {}
        while True:
            if not proc.alive():
                return failure("exited with status {} during start-up".format(popen.returncode))
            if not marker_seen:
                marker_seen = marker.search(self._output_since(offsets)) is not None
            if marker_seen:
                probes = self._listener_probes()
                if all(v is None for v in probes.values()) and proc.alive():
                    self.starts += 1
                    self.startup_seconds.append(time.monotonic() - started)
                    return None, False
            if time.monotonic() > deadline:
                what = ("listeners not ready: {}".format(probes) if marker_seen
                        else "no line matching {!r} in its output".format(self.ready_marker))
                return failure("not ready after {:.0f} s: {}".format(self.ready_timeout, what))
            time.sleep(0.1)


def _which(*candidates: str) -> Optional[str]:
    for c in candidates:
        if os.path.isabs(c):
            if os.access(c, os.X_OK) and os.path.isfile(c):
                return c
        else:
            found = shutil.which(c)
            if found:
                return found
    return None


# ---------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------

class RabbitMQ(InteropBroker):
    """A private RabbitMQ node with the MQTT and Web MQTT plugins.

    Node ``sbtest-<random>@localhost``; its own epmd (``ERL_EPMD_PORT``), Erlang
    cookie (``HOME``), ``rabbitmq.conf``, enabled-plugins file, mnesia and log
    directories, ``rabbitmq-env.conf`` (so that /etc/rabbitmq's is not read).
    Listeners on 127.0.0.1: MQTT (``tcp``), Web MQTT on ``/mqtt`` (``ws``),
    AMQP (``amqp``) and the Erlang distribution port (``dist``).  Anonymous
    MQTT connections log in as ``guest`` (allowed from loopback).

    The Debian package's ``/usr/sbin/rabbitmq-server`` is a wrapper that
    ``su``'s to the ``rabbitmq`` user; the real scripts in
    ``/usr/lib/rabbitmq/bin`` are used instead, as the current user.
    """

    name = "rabbitmq"
    package = "Debian package 'rabbitmq-server' (apt-get install rabbitmq-server)"
    ready_marker = r"Starting broker\.\.\. completed"
    ready_timeout = 60.0
    stop_timeout = 30.0
    extra_ports = ("amqp", "dist", "epmd")

    def _check_available(self) -> None:
        self.server = _which("/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server")
        self.ctl = _which("/usr/lib/rabbitmq/bin/rabbitmqctl", "rabbitmqctl")
        self.epmd = _which("epmd", "/usr/lib/erlang/bin/epmd")
        if self.server is None or self.ctl is None or self.epmd is None or _which("erl") is None:
            raise BrokerUnavailable("RabbitMQ not found (rabbitmq-server, rabbitmqctl, erl, epmd): "
                                    "install the " + self.package)
        home = os.path.dirname(os.path.dirname(os.path.realpath(self.server)))
        plugins = os.path.join(home, "plugins")
        for plugin in ("rabbitmq_mqtt", "rabbitmq_web_mqtt"):
            if not glob.glob(os.path.join(plugins, plugin + "-*")):
                raise BrokerUnavailable("RabbitMQ plugin {} not found in {}: install the {}".format(
                    plugin, plugins, self.package))
        self.plugins_dir = plugins
        self.nodename = "sbtest-{}@localhost".format(uuid.uuid4().hex[:10])

    def _prepare(self) -> None:
        super()._prepare()
        for d in ("home", "mnesia", "log"):
            os.makedirs(self._path(d))
        with open(self._path("enabled_plugins"), "w", encoding="ascii") as f:
            f.write("[rabbitmq_mqtt,rabbitmq_web_mqtt].\n")
        open(self._path("rabbitmq-env.conf"), "w").close()

    def _write_config(self) -> None:
        p = self.ports
        lines = [
            "# generated by tests/interop_brokers.py",
            "listeners.tcp.default = {}:{}".format(self.host, p["amqp"]),
            "mqtt.listeners.tcp.default = {}:{}".format(self.host, p["tcp"]),
            "mqtt.allow_anonymous = true",
            "mqtt.default_user = guest",
            "mqtt.default_pass = guest",
            "mqtt.vhost = /",
            "loopback_users.guest = true",
            "log.console = false",
            "log.file.level = info",
        ]
        if "ws" in p:
            lines += ["web_mqtt.tcp.ip = {}".format(self.host),
                      "web_mqtt.tcp.port = {}".format(p["ws"]),
                      "web_mqtt.ws_path = /mqtt"]
        else:  # the plugin is enabled: keep it off the default port 15675
            lines += ["web_mqtt.tcp.ip = {}".format(self.host),
                      "web_mqtt.tcp.port = {}".format(_free_ports(1, self.host)[0])]
        with open(self._path("rabbitmq.conf"), "w", encoding="ascii") as f:
            f.write("\n".join(lines) + "\n")

    def _env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not (k.startswith("RABBITMQ_") or k.startswith("ERL_"))}
        env.update({
            "HOME": self._path("home"),                     # private .erlang.cookie
            "RABBITMQ_CONF_ENV_FILE": self._path("rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.ports["amqp"]),
            "RABBITMQ_DIST_PORT": str(self.ports["dist"]),
            "RABBITMQ_CONFIG_FILE": self._path("rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": self._path("advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": self._path("enabled_plugins"),
            "RABBITMQ_PLUGINS_DIR": self.plugins_dir,
            "RABBITMQ_MNESIA_BASE": self._path("mnesia"),
            "RABBITMQ_LOG_BASE": self._path("log"),
            "RABBITMQ_PID_FILE": self._path("rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            # rabbitmqctl: any free distribution port, not the default 35672-35682
            "RABBITMQ_CTL_DIST_PORT_MIN": "0",
            "RABBITMQ_CTL_DIST_PORT_MAX": "0",
            "ERL_EPMD_PORT": str(self.ports["epmd"]),
            "ERL_EPMD_ADDRESS": self.host,
        })
        return env

    def _command(self) -> List[str]:
        return [str(self.server)]

    def _log_files(self) -> List[str]:
        files = super()._log_files()
        if self.tmpdir is not None:
            files.append(self._path("log", self.nodename + ".log"))
        return files

    def _before_spawn(self) -> None:
        """Start (or restart) the private epmd and wait for it; erl would
        otherwise spawn a daemonized one that outlives the node."""
        proc = self._state.procs.get("epmd")
        if proc is not None and proc.alive():
            return
        port = self.ports["epmd"]
        deadline = time.monotonic() + 10
        while True:
            with open(self._path("epmd.out"), "ab") as out:
                popen = subprocess.Popen([str(self.epmd), "-port", str(port), "-address", self.host],
                                         cwd=self.tmpdir, env=self._env(), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, close_fds=True,
                                         start_new_session=True)
            proc = self._state.procs["epmd"] = _Proc(popen)
            while proc.alive() and time.monotonic() < deadline:
                try:
                    socket.create_connection((self.host, port), timeout=0.5).close()
                    return
                except OSError:
                    time.sleep(0.05)
            proc.kill()
            if time.monotonic() >= deadline:
                with open(self._path("epmd.out"), "r", errors="replace") as f:
                    raise RuntimeError("epmd on port {} did not start: {}".format(port, _tail(f.read())))
            time.sleep(0.3)

    def _graceful_stop(self, proc: _Proc) -> None:
        try:
            subprocess.run([str(self.ctl), "-n", self.nodename, "stop"], env=self._env(),
                           cwd=self.tmpdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            pass
        if proc.alive() and not proc.wait_group(self.stop_timeout):
            proc.signal_group(signal.SIGTERM)

    def _after_close(self) -> None:
        proc = self._state.procs.pop("epmd", None)
        if proc is not None:
            proc.kill()

    def ctl_run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run ``rabbitmqctl -n <node> ARGS`` against this node (text output)."""
        return subprocess.run([str(self.ctl), "-n", self.nodename, *args], env=self._env(),
                              cwd=self.tmpdir, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)


# ---------------------------------------------------------------------------
# NATS
# ---------------------------------------------------------------------------

class NatsServer(InteropBroker):
    """``nats-server`` with JetStream (store in the temp dir, kept across
    restarts) and its MQTT listener (MQTT 3.1.1 only; QoS 0 and 1 — 2.9 refuses
    QoS 2 PUBLISH and grants QoS 1 for QoS 2 subscriptions).  Websocket: the
    NATS websocket listener serves MQTT on the path ``/mqtt``."""

    name = "nats"
    package = "Debian package 'nats-server' (apt-get install nats-server)"
    ready_marker = r"Server is ready"
    extra_ports = ("nats",)

    def _check_available(self) -> None:
        self.binary = _which("nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server")
        if self.binary is None:
            raise BrokerUnavailable("nats-server not found: install the " + self.package)
        self.server_name = "sbtest-{}".format(uuid.uuid4().hex[:10])

    def _write_config(self) -> None:
        p = self.ports
        lines = [
            "# generated by tests/interop_brokers.py",
            "server_name: {}".format(json.dumps(self.server_name)),
            "listen: {}:{}".format(self.host, p["nats"]),
            "jetstream {{ store_dir: {} }}".format(json.dumps(self._path("jetstream"))),
            "mqtt {{ listen: {}:{} }}".format(self.host, p["tcp"]),
        ]
        if "ws" in p:
            lines.append("websocket {{ listen: {}:{}, no_tls: true }}".format(self.host, p["ws"]))
        with open(self._path("nats.conf"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def _command(self) -> List[str]:
        return [str(self.binary), "-c", self._path("nats.conf")]


# ---------------------------------------------------------------------------
# amqtt
# ---------------------------------------------------------------------------

class Amqtt(InteropBroker):
    """amqtt (PyPI), run as ``python -m amqtt.scripts.broker_script -c <yaml>``
    in its own process, anonymous allowed, tcp + websockets listeners.  No
    persistence: retained messages and sessions are lost on restart."""

    name = "amqtt"
    package = "PyPI package 'amqtt' (pip install amqtt, part of the test extra)"
    ready_marker = r"Listener 'default' bind to"
    stop_timeout = 10.0

    def __init__(self, websockets: bool = True, ready_timeout: Optional[float] = None,
                 python: Optional[str] = None) -> None:
        self.python = python or os.environ.get("SERMAS_AMQTT_PYTHON") or sys.executable
        super().__init__(websockets=websockets, ready_timeout=ready_timeout)

    def _check_available(self) -> None:
        res = subprocess.run([self.python, "-c", "import amqtt.broker, amqtt.scripts.broker_script, yaml; "
                              "print(amqtt.__version__)"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise BrokerUnavailable("amqtt is not importable by {}: install the {} ({})".format(
                self.python, self.package, _tail(res.stderr, 1)))
        self.version = res.stdout.strip()

    def _write_config(self) -> None:
        listeners = {"default": {"type": "tcp", "bind": "{}:{}".format(self.host, self.ports["tcp"])}}
        if "ws" in self.ports:
            listeners["ws"] = {"type": "ws", "bind": "{}:{}".format(self.host, self.ports["ws"])}
        config = {
            "listeners": listeners,
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        with open(self._path("amqtt.yaml"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)          # JSON is YAML

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONWARNINGS", None)
        return env

    def _command(self) -> List[str]:
        return [self.python, "-m", "amqtt.scripts.broker_script", "-c", self._path("amqtt.yaml")]

    def _graceful_stop(self, proc: _Proc) -> None:
        proc.signal_group(signal.SIGINT)           # KeyboardInterrupt -> broker.shutdown()


BROKERS = {"rabbitmq": RabbitMQ, "nats": NatsServer, "amqtt": Amqtt}


def start_or_skip(broker_cls, **kwargs) -> InteropBroker:
    """Create and start a broker; ``pytest.skip`` (naming the package to
    install) when it is not installed, or ``pytest.fail`` instead when
    ``SERMAS_INTEROP_REQUIRED=1``."""
    import pytest

    try:
        broker = broker_cls(**kwargs)
    except BrokerUnavailable as exc:
        if os.environ.get("SERMAS_INTEROP_REQUIRED", "") not in ("", "0"):
            pytest.fail("SERMAS_INTEROP_REQUIRED is set but {}".format(exc), pytrace=False)
        pytest.skip(str(exc))
    try:
        return broker.start()
    except BaseException:
        broker.close()
        raise
