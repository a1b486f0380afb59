"""A short run of each libFuzzer harness (fuzz/), from its committed seed
corpus: a crash, a leak or a sanitizer report fails the test.  `make fuzz`
runs them longer (FUZZ_SECONDS)."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))
import build as fuzz_build  # noqa: E402  (fuzz/build.py)

SECONDS = 10


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory):
    if shutil.which("clang") is None:
        pytest.skip("clang is not installed (Debian packages clang and libclang-rt-14-dev)")
    out = tmp_path_factory.mktemp("fuzz")
    built = subprocess.run([sys.executable, str(ROOT / "fuzz" / "build.py"), str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    if built.returncode != 0 and "libclang_rt.fuzzer" in built.stdout:
        pytest.skip("clang's fuzzer runtime is missing (Debian package libclang-rt-14-dev)")
    assert built.returncode == 0, built.stdout[-4000:]
    return out


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", fuzz_build.ALL)
def test_fuzz_harness_short_run(harnesses, name):
    """Each harness for SECONDS from its committed corpus: no crash, no
    sanitizer report, no violated property, and it really ran."""
    run = fuzz_build.run_harness(str(harnesses / f"fuzz_{name}"), name, SECONDS, str(harnesses))
    assert run.returncode == 0, run.stdout[-4000:]
    assert fuzz_build.executions(run.stdout) > 1000, run.stdout[-2000:]
