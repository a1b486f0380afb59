"""Helpers shared by the client test files: recording callbacks and bounded waits."""

from __future__ import annotations

import os
import socket
import threading
import time


class Inbox:
    """on_message (3 arguments) recording messages and the threads that
    delivered them, with a bounded wait."""

    timeout = 5.0

    def __init__(self):
        self.messages = []
        self.threads = set()
        self._cond = threading.Condition()

    def __call__(self, client, userdata, msg):
        self.add(msg)

    def add(self, msg):
        with self._cond:
            self.messages.append(msg)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def wait(self, n, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("expected {} message(s) within {} s, got {}: {}".format(
                        n, timeout, len(self.messages),
                        [(m.topic, m.payload) for m in self.messages][:20]))
                self._cond.wait(left)
            return list(self.messages)

    @property
    def payloads(self):
        with self._cond:
            return [m.payload for m in self.messages]

    @property
    def topics(self):
        with self._cond:
            return [m.topic for m in self.messages]


class Events:
    """Records (name, args) of callbacks, with waiting."""

    def __init__(self):
        self.items = []
        self._cond = threading.Condition()

    def recorder(self, name):
        def record(*args):
            with self._cond:
                self.items.append((name, args))
                self._cond.notify_all()
        return record

    def count(self, name):
        with self._cond:
            return sum(1 for n, _ in self.items if n == name)

    def wait_for(self, name, count=1, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for n, _ in self.items if n == name) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("expected {} x {} within {} s; events: {}".format(
                        count, name, timeout, [n for n, _ in self.items]))
                self._cond.wait(left)
            return [args for n, args in self.items if n == name]


def wait_until(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after {} s waiting for {}".format(timeout, what))
        time.sleep(0.005)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def open_fds():
    return len(os.listdir("/proc/self/fd"))


#: set when the suite runs under `make asan-test` (the sanitizer runtime is
#: preloaded into every process the tests start)
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


def pgrep(*args, **kw):
    """pgrep, without the sanitizer preload of `make asan-test` (procps
    hangs with libasan preloaded)."""
    import subprocess
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run(["pgrep", *args], env=env, timeout=30, **kw)

