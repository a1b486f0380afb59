"""A short run of each libFuzzer harness (fuzz/), from its committed seed
corpus: a crash, a leak or a sanitizer report fails the test.  `make fuzz`
runs them longer (FUZZ_SECONDS)."""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
HARNESSES = {"jwt": ["-lcrypto", "-lcjson"]}


@pytest.fixture(scope="module")
def clang():
    cc = shutil.which("clang")
    if cc is None:
        pytest.skip("clang is not installed (Debian packages clang and libclang-rt-14-dev)")
    return cc


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_fuzz_harness_short_run(clang, tmp_path, name):
    binary = tmp_path / f"fuzz_{name}"
    build = subprocess.run([clang, "-g", "-O1", "-fsanitize=fuzzer,address,undefined",
                            "-fno-sanitize-recover=undefined", str(ROOT / "fuzz" / f"fuzz_{name}.c"),
                            "-o", str(binary), *HARNESSES[name]],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if build.returncode != 0 and "libclang_rt.fuzzer" in build.stdout:
        pytest.skip("clang's fuzzer runtime is missing (Debian package libclang-rt-14-dev)")
    assert build.returncode == 0, build.stdout
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT / "fuzz" / "corpus" / name, corpus)
    run = subprocess.run([str(binary), "-max_total_time=10", "-print_final_stats=1", str(corpus)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=90)
    assert run.returncode == 0, run.stdout[-4000:]
    runs = [int(line.split()[-1]) for line in run.stdout.splitlines()
            if line.startswith("stat::number_of_executed_units:")]
    assert runs and runs[0] > 10000, run.stdout[-2000:]
