"""The C core under valgrind's memcheck: a publish / receive / close /
reconnect workload (tests/valgrind_workload.py, durable outbox included)
loses no memory ("definitely lost: 0") and memcheck reports no error in
our code or paho's: no invalid read, write or free at all, and no
uninitialised read with a frame of ours.  (This pyenv CPython is not built
for valgrind: its garbage collector reports uninitialised reads of its own
at exit even for a program that only imports the standard library; those
have only interpreter frames.)"""
import os
import re
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
VALGRIND = ["valgrind", "--leak-check=full", "--show-leak-kinds=definite", "--num-callers=40"]


def _memcheck(args, tmp_path):
    env = dict(os.environ, PYTHONMALLOC="malloc")     # every object visible to memcheck
    run = subprocess.run(VALGRIND + [sys.executable] + args, capture_output=True, text=True, env=env,
                         timeout=600, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-4000:]
    lost = re.search(r"definitely lost: ([\d,]+) bytes", run.stderr)
    errors = re.search(r"ERROR SUMMARY: ([\d,]+) errors", run.stderr)
    assert lost and errors, run.stderr[-2000:]
    return run, int(lost.group(1).replace(",", "")), int(errors.group(1).replace(",", ""))


def _error_blocks(stderr):
    """memcheck's error reports: (first line, whole block)."""
    blocks, cur = [], []
    for line in stderr.splitlines():
        body = re.sub(r"^==\d+== ?", "", line)
        if body == "":
            if cur:
                blocks.append(cur)
            cur = []
        else:
            cur.append(body)
    if cur:
        blocks.append(cur)
    kinds = ("Invalid", "Mismatched", "Use of uninitialised", "Conditional jump", "Syscall param",
             "Source and destination overlap")
    return [(b[0], "\n".join(b)) for b in blocks if b[0].startswith(kinds)], blocks


def _definite_losses(stderr):
    """memcheck's "definitely lost" loss records: (bytes, whole block)."""
    _, blocks = _error_blocks(stderr)
    found = []
    for b in blocks:
        m = re.match(r"([\d,]+) bytes in [\d,]+ blocks are definitely lost", b[0])
        if m:
            found.append((int(m.group(1).replace(",", "")), "\n".join(b)))
    return found


OURS = ("_core.cpython", "/csrc/", "libpaho", "libcjson", "store.c", "sermas_jwt")


@pytest.mark.timeout(600)
def test_workload_under_memcheck_loses_nothing(tmp_path, quiet_broker):
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (Debian package valgrind)")
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("memcheck and AddressSanitizer do not run in one process (make asan-test)")
    store = tmp_path / "store"
    run, lost, _ = _memcheck([os.path.join(HERE, "valgrind_workload.py"),
                              str(quiet_broker.listeners["tcp"]), str(store)], tmp_path)
    assert "received" in run.stdout, run.stdout
    # nothing of ours is ever lost; and an interpreter that frees everything at
    # exit (up to 3.11) loses nothing at all.  3.12+ keep interned strings
    # immortal and never free them: those records have interpreter frames only.
    ours_lost = [block for _, block in _definite_losses(run.stderr) if any(mark in block for mark in OURS)]
    assert not ours_lost, "\n\n".join(ours_lost)[-6000:]
    if sys.version_info < (3, 12):
        assert lost == 0, run.stderr[-6000:]
    for first, block in _error_blocks(run.stderr)[0]:
        assert not first.startswith(("Invalid", "Mismatched", "Source and destination")), block
        assert not any(mark in block for mark in OURS), block
