"""The repaired wheel installs and works on a machine without paho.mqtt.c
and cJSON: built from the sdist (scripts/build_wheel.py, as `make wheel`),
installed into a fresh virtualenv, and run inside a mount namespace in which
the system's libpaho-mqtt* and libcjson* files are hidden (an empty file is
bind-mounted over each): a TLS + websocket publish/subscribe round trip."""
from __future__ import annotations

import glob
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from sermas_bus.testing import Mosquitto

ROOT = pathlib.Path(__file__).resolve().parent.parent
HIDDEN = ("libpaho-mqtt", "libcjson")
# the build and the fresh virtualenv see nothing of this process's set-up
# (make asan-test preloads ASan; a wheel is never a sanitizer build)
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONPATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "ASAN_OPTIONS", "UBSAN_OPTIONS",
                          "SERMAS_BUS_SANITIZE", "SERMAS_BUS_DEBUG")}


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "true"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)
    return probe.returncode == 0


def _system_copies() -> list[str]:
    """Every file of the system's paho.mqtt.c and cJSON the loader could find."""
    found = set()
    listing = subprocess.run(["ldconfig", "-p"], stdout=subprocess.PIPE, text=True, timeout=30).stdout
    for line in listing.splitlines():
        if "=>" in line and any(name in line for name in HIDDEN):
            found.add(line.split("=>")[1].strip())
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    for d in ("/usr/lib", "/usr/local/lib", "/usr/lib/" + multiarch, "/usr/local/lib/" + multiarch):
        for name in HIDDEN:
            found.update(glob.glob(os.path.join(d, name + "*.so*")))
    # the real files: an empty file bound over each makes every link to it empty too
    return sorted({os.path.realpath(p) for p in found})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    for tool in ("build", "auditwheel"):
        if subprocess.run([sys.executable, "-c", "import " + tool], stderr=subprocess.DEVNULL,
                          env=CLEAN_ENV).returncode:
            pytest.skip("the PyPI package {} is not installed (pip install -e '.[test]')".format(tool))
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_wheel.py"), str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
                           env=CLEAN_ENV)
    assert built.returncode == 0, built.stdout[-4000:]
    return pathlib.Path(built.stdout.strip().splitlines()[-1])


def test_the_wheel_bundles_paho_cjson_and_openssl_under_a_manylinux_tag(wheel):
    assert re.search(r"-manylinux_\d+_\d+_x86_64\.whl$", wheel.name), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    bundled = [n for n in names if n.startswith("sermas_bus.libs/")]
    for lib in ("libpaho-mqtt3cs", "libcjson", "libssl", "libcrypto"):
        assert any(os.path.basename(n).startswith(lib + "-") for n in bundled), (lib, bundled)
    assert "sermas_bus/_core.pyi" in names and "sermas_bus/py.typed" in names


@pytest.mark.timeout(600)
def test_the_wheel_works_where_paho_and_cjson_are_hidden(wheel, tmp_path, unique_topic):
    if not _unshare_works():
        pytest.skip("unshare --mount is not permitted here (it needs root or CAP_SYS_ADMIN)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=CLEAN_ENV)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)],
                   check=True, timeout=300, env=CLEAN_ENV)
    smoke = tmp_path / "wheel_smoke.py"
    shutil.copy(ROOT / "tests" / "wheel_smoke.py", smoke)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    hidden = _system_copies()
    assert hidden, "no system copy of paho.mqtt.c or cJSON found: nothing to hide"
    with Mosquitto(tcp=True, websockets=True, tls=True, log_type="warning") as broker:
        script = "mount --make-rprivate / && {mounts} && exec {py} {smoke} {url} {ca} {topic}".format(
            mounts=" && ".join("mount --bind {} {}".format(shlex.quote(str(empty)), shlex.quote(f))
                               for f in hidden),
            py=shlex.quote(py), smoke=shlex.quote(str(smoke)), url=shlex.quote(broker.url("wss")),
            ca=shlex.quote(broker.ca_file), topic=shlex.quote(unique_topic + "wheel"))
        run = subprocess.run(["unshare", "--mount", "sh", "-c", script], cwd=str(tmp_path), env=CLEAN_ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:]
    lines = run.stdout.splitlines()
    assert "hidden libpaho-mqtt3cs.so.1" in lines and "hidden libcjson.so.1" in lines, run.stdout
    assert "roundtrip ok" in lines, run.stdout
    # the versions the package reports are those of the libraries it bundles
    (loaded,) = [line.split()[1:] for line in lines if line.startswith("loaded ")]
    (versions,) = [line.split(" ", 1)[1] for line in lines if line.startswith("versions ")]
    paho, cjson, openssl = versions.split(" ", 2)
    assert any(name.startswith("libpaho-mqtt3cs-") and name.endswith(".so." + paho) for name in loaded), (
        loaded, paho)
    assert any(name.startswith("libcjson-") and name.endswith(".so." + cjson) for name in loaded), (loaded, cjson)
    assert openssl.startswith("OpenSSL 3") or openssl.startswith("OpenSSL 1"), openssl
