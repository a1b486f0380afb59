"""Local MQTT broker launcher for tests, benchmarks and notebooks.

``Mosquitto`` starts a real ``mosquitto`` (Eclipse Mosquitto 2.x) process with
a generated configuration in a private temporary directory, listening only on
127.0.0.1 on free ports::

    from sermas_bus.testing import Mosquitto

    with Mosquitto(tls=True) as broker:
        broker.url("tcp")    # 'tcp://127.0.0.1:41234'
        broker.url("ws")     # 'ws://127.0.0.1:41235/mqtt'
        broker.url("mqtts")  # 'mqtts://127.0.0.1:41236' (verify with broker.ca_file)
        broker.kill()        # simulate a crash
        broker.start()       # same ports again

Outside a ``with`` block call ``start()`` (it returns the broker) and
``close()`` when done; a finalizer also stops the process and removes the
temporary directory when the object is garbage collected or the interpreter
exits.

``LocalBus`` (from ``sermas_bus.localbus``, importable from here) is a local
SERMAS-compatible bus: a ``Mosquitto`` whose listeners require the platform's
JWT access tokens, plus the platform's token endpoints::

    from sermas_bus.testing import LocalBus

    with LocalBus(apps={"myapp": {"clients": {"svc": "s3cret"}}}) as bus:
        token = bus.issue_token("myapp", "svc")
        bus.mqtt_url         # 'ws://127.0.0.1:41235/mqtt'

This module has no dependency on the compiled extension of ``sermas_bus``; it
needs only the standard library, the ``mosquitto`` executable and, when TLS
listeners are requested, the ``openssl`` command line tool (``LocalBus`` also
needs the mosquitto plugin built with the package).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from typing import Dict, List, Mapping, Optional, Tuple

__all__ = ["Mosquitto", "LocalBus"]


def __getattr__(name: str):
    # LocalBus (sermas_bus.localbus) builds on Mosquitto; imported on first use
    # so that this module still loads on its own (tests/conftest.py does that)
    if name == "LocalBus":
        from .localbus import LocalBus
        return LocalBus
    raise AttributeError("module {!r} has no attribute {!r}".format(__name__, name))

_RUNNING = re.compile(r"mosquitto version \S+ running")

_MISSING_MOSQUITTO = (
    "mosquitto not found: install the Debian package 'mosquitto' "
    "(apt-get install mosquitto) or pass binary="
)

# (listener name, attribute holding its port, url scheme, url path)
_KINDS: Dict[str, Tuple[str, str, str]] = {
    "tcp": ("port", "tcp", ""),
    "ws": ("ws_port", "ws", "/mqtt"),
    "wss": ("wss_port", "wss", "/mqtt"),
    "mqtts": ("tls_port", "mqtts", ""),
    "auth": ("auth_port", "tcp", ""),
    "mtls": ("mtls_port", "mqtts", ""),
}

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = sermas-bus test

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[v3_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _hash_password(password: str, iterations: int = 101) -> str:
    """Mosquitto 2.x password-file hash: ``$7$`` = PBKDF2-HMAC-SHA512."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return "$7${}${}${}".format(
        iterations,
        base64.b64encode(salt).decode("ascii"),
        base64.b64encode(digest).decode("ascii"),
    )


def _free_ports(count: int, host: str) -> List[int]:
    """Ask the kernel for ``count`` distinct free TCP ports on ``host``.

    All sockets are held open until every port is known, so the ports differ.
    Someone else may still grab a port before mosquitto binds it; ``start()``
    retries with new ports in that case.
    """
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


class _State:
    """What the finalizer needs; deliberately holds no reference to the broker."""

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self.tmpdir: Optional[str] = None


def _cleanup(state: _State) -> None:
    proc = state.proc
    if proc is not None and proc.poll() is None:
        try:
            proc.kill()
            proc.wait(5)
        except Exception:
            pass
    state.proc = None
    if state.tmpdir is not None:
        shutil.rmtree(state.tmpdir, ignore_errors=True)
        state.tmpdir = None


class Mosquitto:
    """A private mosquitto broker on free 127.0.0.1 ports.

    Listeners (each enabled listener gets its own port attribute; disabled ones
    are ``None``):

    ========  ===============  =======================================================
    kind      attribute        listener
    ========  ===============  =======================================================
    tcp       ``port``         plain MQTT, anonymous (``tcp=True``)
    ws        ``ws_port``      MQTT over websockets, anonymous (``websockets=True``)
    mqtts     ``tls_port``     MQTT over TLS, anonymous (``tls=True``)
    wss       ``wss_port``     MQTT over websockets over TLS, anonymous (``tls=True``)
    auth      ``auth_port``    plain MQTT, ``allow_anonymous false`` + password file
                               holding ``users`` (``auth_listener=True``)
    mtls      ``mtls_port``    MQTT over TLS requiring a client certificate signed by
                               ``ca_file`` (``mtls_listener=True``)
    ========  ===============  =======================================================

    TLS listeners present a server certificate for ``127.0.0.1`` and
    ``localhost`` signed by a throw-away CA (``ca_file``). ``client_cert`` /
    ``client_key`` are a client certificate/key pair signed by the same CA.

    ``log_type`` (space separated mosquitto log types, default ``"all"``,
    which logs every packet) controls the log volume; ``information`` is
    always included. ``ready_timeout`` bounds the wait for readiness (seconds).

    ``extra_conf`` is inserted after the generated global options and before
    the generated listeners, so it can override global options (later values
    win) and add listeners of its own (``per_listener_settings`` is true).

    ``listener_security`` (mosquitto options, one per line) replaces
    ``allow_anonymous true`` in every listener described as anonymous above,
    e.g. the ``plugin`` / ``plugin_opt_*`` lines of an authentication plugin
    (``LocalBus`` puts its JWT plugin there).  It may be changed before
    ``start()``.
    """

    host = "127.0.0.1"
    #: how long a restart keeps retrying while a port is still taken
    port_retry_seconds = 10.0

    def __init__(
        self,
        tcp: bool = True,
        websockets: bool = True,
        tls: bool = False,
        auth_listener: bool = False,
        users: Optional[Mapping[str, str]] = None,
        extra_conf: str = "",
        binary: Optional[str] = None,
        *,
        mtls_listener: bool = False,
        ready_timeout: float = 10.0,
        log_type: str = "all",
        listener_security: Optional[str] = None,
    ) -> None:
        if binary is None:
            binary = shutil.which("mosquitto")
            if binary is None and os.access("/usr/sbin/mosquitto", os.X_OK):
                binary = "/usr/sbin/mosquitto"
            if binary is None:
                raise RuntimeError(_MISSING_MOSQUITTO)
        else:
            resolved = shutil.which(binary)
            if resolved is None:
                raise RuntimeError(
                    "mosquitto not found: binary={!r} is not an executable file".format(binary)
                )
            binary = resolved
        self.binary: str = binary

        users = dict(users or {})
        for name, password in users.items():
            for value in (name, password):
                if not isinstance(value, str) or any(c in value for c in ":\r\n"):
                    raise ValueError(
                        "users: names and passwords must be str without ':' or newlines, "
                        "got {!r}".format(value)
                    )
        if users and not auth_listener:
            raise ValueError("users= only applies to the auth listener: pass auth_listener=True")
        if not (tcp or websockets or tls or auth_listener or mtls_listener):
            raise ValueError("Mosquitto: no listener enabled")

        self.tcp = tcp
        self.websockets = websockets
        self.tls = tls
        self.auth_listener = auth_listener
        self.mtls_listener = mtls_listener
        self.users: Dict[str, str] = users
        self.extra_conf = extra_conf
        self.listener_security = listener_security
        self.ready_timeout = ready_timeout
        # 'all' logs every PUBLISH (debug); benchmarks may want "warning".
        # 'information' is always added: readiness waits for "... running".
        self.log_types = log_type.split() or ["all"]
        if "all" not in self.log_types and "information" not in self.log_types:
            self.log_types.append("information")

        self.port: Optional[int] = None
        self.ws_port: Optional[int] = None
        self.tls_port: Optional[int] = None
        self.wss_port: Optional[int] = None
        self.auth_port: Optional[int] = None
        self.mtls_port: Optional[int] = None
        # Mosquitto 2.0.x refuses to start when every listener is a websockets
        # listener ("Unable to start any listening sockets"), so a ws-only
        # broker gets an extra internal TCP listener that refuses everyone.
        self._internal_port: Optional[int] = None

        self.tmpdir: Optional[str] = None
        self.conf_path: Optional[str] = None
        self.log_path: Optional[str] = None
        self.ca_file: Optional[str] = None
        self.server_cert: Optional[str] = None
        self.server_key: Optional[str] = None
        self.client_cert: Optional[str] = None
        self.client_key: Optional[str] = None
        self._out_path: Optional[str] = None
        self._passwd_path: Optional[str] = None
        self._closed = False

        self._state = _State()
        self._finalizer = weakref.finalize(self, _cleanup, self._state)

    # ------------------------------------------------------------------ info
    @property
    def pid(self) -> Optional[int]:
        proc = self._state.proc
        return proc.pid if proc is not None else None

    def is_running(self) -> bool:
        proc = self._state.proc
        return proc is not None and proc.poll() is None

    @property
    def listeners(self) -> Dict[str, int]:
        """``{kind: port}`` of the enabled listeners (after the first start)."""
        out = {}
        for kind, (attr, _scheme, _path) in _KINDS.items():
            port = getattr(self, attr)
            if port is not None:
                out[kind] = port
        return out

    def url(self, kind: str = "tcp") -> str:
        """URL of a listener: ``tcp``, ``ws``, ``wss``, ``mqtts``, ``auth``, ``mtls``."""
        try:
            attr, scheme, path = _KINDS[kind]
        except KeyError:
            raise ValueError(
                "unknown listener kind {!r}; expected one of {}".format(kind, ", ".join(_KINDS))
            ) from None
        port = getattr(self, attr)
        if port is None:
            if self.tmpdir is None:
                raise RuntimeError("broker not started yet: call start() or use 'with'")
            raise ValueError("listener {!r} is not enabled on this broker".format(kind))
        return "{}://{}:{}{}".format(scheme, self.host, port, path)

    def log(self) -> str:
        """Text of the mosquitto log (all runs of this broker)."""
        parts = []
        for path in (self.log_path, self._out_path):
            if path and os.path.exists(path):
                with open(path, "r", encoding="utf-8", errors="replace") as f:
                    text = f.read()
                if path == self._out_path:
                    # stdout/stderr only holds the root warning and early errors
                    text = "\n".join(
                        line for line in text.splitlines() if "should not be run as root" not in line
                    )
                    if text.strip():
                        parts.append("--- mosquitto stdout/stderr ---\n" + text)
                    continue
                parts.append(text)
        return "\n".join(parts)

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return "<Mosquitto {} pid={} {}>".format(state, self.pid, self.listeners)

    # ------------------------------------------------------------- lifecycle
    def start(self) -> "Mosquitto":
        """Start mosquitto (no-op if running) and wait until it accepts connections.

        The first start picks free ports; later starts (after ``stop()`` or
        ``kill()``) reuse the same ports, retrying for a few seconds if a port
        is still busy.
        """
        if self._closed:
            raise RuntimeError("this Mosquitto was closed; create a new one")
        if self.is_running():
            return self
        first = self.tmpdir is None
        if first:
            self._prepare()
            attempts, deadline = 5, None  # fresh ports on each attempt
        else:
            attempts, deadline = 1000, time.monotonic() + self.port_retry_seconds
        error: Optional[str] = None
        for attempt in range(attempts):
            if first:
                self._assign_ports()
            self._write_conf()
            error, port_in_use = self._spawn_and_wait()
            if error is None:
                return self
            if not port_in_use:
                break
            if deadline is not None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        raise RuntimeError(error)

    def stop(self) -> None:
        """Graceful stop: SIGTERM, SIGKILL after 5 s. Idempotent."""
        proc = self._state.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        self._state.proc = None

    def kill(self) -> None:
        """SIGKILL the broker (simulates a crash). Idempotent."""
        proc = self._state.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        proc.wait()
        self._state.proc = None

    def restart(self) -> "Mosquitto":
        """``stop()`` then ``start()`` on the same ports."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the broker and delete its temporary directory."""
        self.stop()
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "Mosquitto":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------- internals
    def _prepare(self) -> None:
        tmpdir = tempfile.mkdtemp(prefix="sermas-mosquitto-")
        if any(c.isspace() for c in tmpdir):
            # mosquitto's config parser splits on whitespace
            shutil.rmtree(tmpdir, ignore_errors=True)
            tmpdir = tempfile.mkdtemp(prefix="sermas-mosquitto-", dir="/tmp")
        self._state.tmpdir = self.tmpdir = tmpdir
        self.conf_path = os.path.join(tmpdir, "mosquitto.conf")
        self.log_path = os.path.join(tmpdir, "mosquitto.log")
        self._out_path = os.path.join(tmpdir, "mosquitto.out")
        if self.auth_listener:
            self._passwd_path = os.path.join(tmpdir, "passwd")
            with open(self._passwd_path, "w", encoding="utf-8") as f:
                for name, password in self.users.items():
                    f.write("{}:{}\n".format(name, _hash_password(password)))
        if self.tls or self.mtls_listener:
            self._make_certificates()

    def _openssl(self, *args: str) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("openssl command line tool not found (needed for tls=True)")
        res = subprocess.run(
            [openssl, *args],
            cwd=self.tmpdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if res.returncode != 0:
            raise RuntimeError(
                "openssl {} failed (exit {}):\n{}".format(
                    " ".join(args), res.returncode, res.stdout.decode(errors="replace")
                )
            )

    def _make_certificates(self) -> None:
        d = self.tmpdir
        assert d is not None
        cnf = os.path.join(d, "openssl.cnf")
        with open(cnf, "w", encoding="ascii") as f:
            f.write(_OPENSSL_CNF)
        newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        self.ca_file = os.path.join(d, "ca.crt")
        ca_key = os.path.join(d, "ca.key")
        self._openssl(
            "req", "-config", cnf, "-x509", *newkey, "-keyout", ca_key, "-out", self.ca_file,
            "-days", "3650", "-subj", "/CN=sermas-bus test CA", "-extensions", "v3_ca",
        )
        for role, cn in (("server", "127.0.0.1"), ("client", "sermas-bus test client")):
            key = os.path.join(d, role + ".key")
            csr = os.path.join(d, role + ".csr")
            crt = os.path.join(d, role + ".crt")
            self._openssl(
                "req", "-config", cnf, "-new", *newkey, "-keyout", key, "-out", csr,
                "-subj", "/CN=" + cn,
            )
            self._openssl(
                "x509", "-req", "-in", csr, "-CA", self.ca_file, "-CAkey", ca_key,
                "-set_serial", "0x" + os.urandom(8).hex(), "-days", "3650", "-sha256",
                "-extfile", cnf, "-extensions", "v3_" + role, "-out", crt,
            )
            setattr(self, role + "_cert", crt)
            setattr(self, role + "_key", key)

    def _assign_ports(self) -> None:
        wanted = [
            ("port", self.tcp),
            ("ws_port", self.websockets),
            ("tls_port", self.tls),
            ("wss_port", self.tls),
            ("auth_port", self.auth_listener),
            ("mtls_port", self.mtls_listener),
        ]
        names = [attr for attr, enabled in wanted if enabled]
        if not (self.tcp or self.tls or self.auth_listener or self.mtls_listener):
            names.append("_internal_port")
        for attr, port in zip(names, _free_ports(len(names), self.host)):
            setattr(self, attr, port)

    def _write_conf(self) -> None:
        lines = [
            "# generated by sermas_bus.testing.Mosquitto",
            "per_listener_settings true",
            "persistence false",
            "log_dest file " + str(self.log_path),
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            *("log_type " + t for t in self.log_types),
            "connection_messages true",
            "set_tcp_nodelay true",
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            "max_inflight_bytes 0",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # As root, mosquitto 2.x drops privileges to user 'mosquitto' before
            # opening the log and password files, which live in our 0700 temp
            # dir; stay root instead (this broker only listens on loopback).
            lines.insert(1, "user root")
        if self.extra_conf:
            lines += ["", "# extra_conf", self.extra_conf.rstrip("\n"), ""]

        def listener(port: Optional[int], protocol: str, *opts: str) -> None:
            if port is None:
                return
            # socket_domain ipv4: without it the websockets listeners of
            # mosquitto 2.0.11 bind to all interfaces despite the address.
            lines.extend(
                ["", "listener {} {}".format(port, self.host), "socket_domain ipv4",
                 "protocol " + protocol, *opts]
            )

        if self.listener_security is None:
            anon = ["allow_anonymous true"]
        else:
            anon = [line.strip() for line in self.listener_security.splitlines() if line.strip()]
        tls = ["cafile " + str(self.ca_file), "certfile " + str(self.server_cert),
               "keyfile " + str(self.server_key)]
        listener(self.port, "mqtt", *anon)
        listener(self.ws_port, "websockets", *anon)
        listener(self.tls_port, "mqtt", *anon, *tls)
        listener(self.wss_port, "websockets", *anon, *tls)
        listener(self.auth_port, "mqtt", "allow_anonymous false",
                 "password_file " + str(self._passwd_path))
        listener(self.mtls_port, "mqtt", *anon, *tls, "require_certificate true")
        listener(self._internal_port, "mqtt", "allow_anonymous false")
        with open(str(self.conf_path), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def _all_ports(self) -> List[int]:
        return list(self.listeners.values()) + (
            [self._internal_port] if self._internal_port is not None else []
        )

    def _read_from(self, path: Optional[str], offset: int) -> str:
        if not path or not os.path.exists(path):
            return ""
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")

    def _spawn_and_wait(self) -> Tuple[Optional[str], bool]:
        """Start the process; return (error message or None, port_in_use)."""
        log_offset = os.path.getsize(self.log_path) if os.path.exists(str(self.log_path)) else 0
        out_offset = os.path.getsize(self._out_path) if os.path.exists(str(self._out_path)) else 0
        with open(str(self._out_path), "ab") as out:
            proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                cwd=self.tmpdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                close_fds=True,
            )
        self._state.proc = proc

        def output() -> str:
            out = self._read_from(self._out_path, out_offset)
            out = "\n".join(line for line in out.splitlines()
                            if "should not be run as root" not in line)
            return self._read_from(self.log_path, log_offset) + out

        def failure(reason: str) -> Tuple[str, bool]:
            self.kill()
            text = output()
            in_use = ("Address already in use" in text
                      or "Unable to create websockets listener" in text)
            msg = "mosquitto failed to start: {} (binary {}, ports {}, config {}){}; " \
                "mosquitto log tail:\n{}".format(
                    reason, self.binary, self._all_ports(), self.conf_path,
                    " - a port is in use by another process" if in_use else "",
                    _tail(text) or "<empty>")
            return msg, in_use

        deadline = time.monotonic() + self.ready_timeout
        pending = self._all_ports()
        running_seen = False
        while True:
            if proc.poll() is not None:
                return failure("exited with status {} during startup".format(proc.returncode))
            if not running_seen:
                # logged once every listener is bound; a port answering before
                # that could belong to another process
                # (mosquitto logs to stderr when it cannot open its log file)
                running_seen = _RUNNING.search(output()) is not None
            if running_seen:
                still = []
                for port in pending:
                    try:
                        socket.create_connection((self.host, port), timeout=0.5).close()
                    except OSError:
                        still.append(port)
                pending = still
                if not pending and proc.poll() is None:
                    return None, False
            if time.monotonic() > deadline:
                what = ("did not accept connections on ports {}".format(pending)
                        if running_seen else "did not log 'running'")
                return failure("not ready after {:.0f} s: {}".format(self.ready_timeout, what))
            time.sleep(0.02)
