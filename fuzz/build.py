"""Build the libFuzzer harnesses with clang (ASan + UBSan + coverage), and run them.

    python fuzz/build.py OUTDIR [NAME ...]            build; print each binary's path
    python fuzz/build.py --run SECONDS OUTDIR [NAME ...]
        build, then run each for SECONDS from a copy of its committed seed
        corpus (fuzz/corpus/<name>; new units stay in OUTDIR/corpus-<name>),
        printing libFuzzer's final stats; exits non-zero on the first crash

NAME: jwt, store, json_decode, json_roundtrip, topics, trie, properties
(default: all).  The core harnesses (fuzz/fuzz_core.c) compile the C core's
sources (setup.py's CORE_SOURCES) once into OUTDIR/core-objs and link an
embedded CPython -- the one running this script, which must be the one the
package is used with.  Prints each binary's path.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
CORE_TARGETS = ["json_decode", "json_roundtrip", "topics", "trie", "properties"]
ALL = ["jwt", "store"] + CORE_TARGETS
#: libFuzzer options per harness: the trie harness checks every match against
#: the Python reference matcher, so its inputs are kept short (more runs)
RUN_OPTIONS = {"trie": ["-max_len=128"]}


def core_sources() -> list:
    """setup.py's CORE_SOURCES, read without running setup.py."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CORE_SOURCES":
            return [os.path.join(ROOT, "csrc", f) for f in ast.literal_eval(node.value)]
    raise SystemExit("setup.py has no CORE_SOURCES list")


def run(cmd: list) -> None:
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if out.returncode != 0:
        sys.stderr.write(" ".join(cmd) + "\n" + out.stdout)
        raise SystemExit(out.returncode)


def python_flags() -> tuple:
    inc = sysconfig.get_paths()["include"]
    libdir = sysconfig.get_config_var("LIBDIR")
    ver = sysconfig.get_config_var("LDVERSION") or sysconfig.get_python_version()
    return (["-I" + inc], ["-L" + libdir, "-Wl,-rpath," + libdir, "-lpython" + ver])


def build_core_objects(cc: str, out: str) -> list:
    objdir = os.path.join(out, "core-objs")
    os.makedirs(objdir, exist_ok=True)
    inc, _ = python_flags()
    objs = []
    for src in core_sources():
        obj = os.path.join(objdir, os.path.basename(src)[:-2] + ".o")
        if not os.path.exists(obj) or os.path.getmtime(obj) < max(
                os.path.getmtime(src), *(os.path.getmtime(os.path.join(ROOT, "csrc", h))
                                         for h in os.listdir(os.path.join(ROOT, "csrc")) if h.endswith(".h"))):
            run([cc, "-g", "-O1", "-std=c11", "-D_GNU_SOURCE", "-fsanitize=fuzzer-no-link", *SANITIZE,
                 *inc, "-c", src, "-o", obj])
        objs.append(obj)
    return objs


def build(cc: str, out: str, name: str, core_objs: list) -> str:
    binary = os.path.join(out, f"fuzz_{name}")
    fuzzer = ["-g", "-O1", "-fsanitize=fuzzer", *SANITIZE]
    if name == "jwt":
        run([cc, *fuzzer, os.path.join(ROOT, "fuzz", "fuzz_jwt.c"), "-o", binary, "-lcrypto", "-lcjson"])
    elif name == "store":
        run([cc, *fuzzer, "-std=c11", os.path.join(ROOT, "fuzz", "fuzz_store.c"),
             os.path.join(ROOT, "csrc", "store.c"), "-o", binary, "-lz", "-lpthread"])
    else:
        inc, link = python_flags()
        run([cc, *fuzzer, "-std=c11", "-D_GNU_SOURCE", *inc, f"-DSB_FUZZ_TARGET={name}",
             f'-DSB_ROOT="{ROOT}"', f'-DSB_PYTHON_HOME="{sys.base_prefix}"',
             os.path.join(ROOT, "fuzz", "fuzz_core.c"), *core_objs, "-o", binary,
             *link, "-lpaho-mqtt3cs", "-lcjson", "-lz", "-lpthread", "-lm"])
    return binary


def run_harness(binary: str, name: str, seconds: int, out: str) -> subprocess.CompletedProcess:
    """One run from a copy of the committed corpus; libFuzzer's output."""
    corpus = os.path.join(out, f"corpus-{name}")
    os.makedirs(corpus, exist_ok=True)
    seeds = os.path.join(ROOT, "fuzz", "corpus", name)
    for f in os.listdir(seeds):
        if not os.path.exists(os.path.join(corpus, f)):
            shutil.copy(os.path.join(seeds, f), corpus)
    return subprocess.run([binary, f"-max_total_time={seconds}", "-print_final_stats=1",
                           f"-artifact_prefix={out}/{name}-", *RUN_OPTIONS.get(name, []), corpus],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=seconds + 120)


def executions(output: str) -> int:
    for line in output.splitlines():
        if line.startswith("stat::number_of_executed_units:"):
            return int(line.split()[-1])
    return 0


def main() -> None:
    args = sys.argv[1:]
    seconds = None
    if args[:1] == ["--run"]:
        if len(args) < 3:
            raise SystemExit(__doc__)
        seconds, args = int(args[1]), args[2:]
    if not args:
        raise SystemExit(__doc__)
    out = os.path.abspath(args[0])
    names = args[1:] or ALL
    unknown = set(names) - set(ALL)
    if unknown:
        raise SystemExit(f"unknown harness(es) {sorted(unknown)}; known: {ALL}")
    cc = shutil.which("clang")
    if cc is None:
        raise SystemExit("clang is not installed (Debian packages clang and libclang-rt-14-dev)")
    os.makedirs(out, exist_ok=True)
    core_objs = build_core_objects(cc, out) if set(names) & set(CORE_TARGETS) else []
    binaries = {name: build(cc, out, name, core_objs) for name in names}
    if seconds is None:
        for binary in binaries.values():
            print(binary)
        return
    for name, binary in binaries.items():
        result = run_harness(binary, name, seconds, out)
        print(f"fuzz_{name}: {executions(result.stdout):,} executions in {seconds} s, "
              f"{'ok' if result.returncode == 0 else 'FAILED'}", flush=True)
        if result.returncode != 0:
            sys.stdout.write(result.stdout[-6000:])
            raise SystemExit(1)


if __name__ == "__main__":
    main()
