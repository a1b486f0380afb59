# sermas_bus: the two commands of the README, and their helpers.
#   make demo   - run the demo on an embedded local broker
#   make test   - run the test suite (real mosquitto started by the tests)
#   make docs   - build the HTML documentation into docs/_build/html (warnings are errors)
# Both install what a fresh Debian machine lacks (apt packages, a virtualenv).

PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python

.PHONY: test demo bench docs deps venv install clean asan-test fuzz wheel sdist test-all

deps:
	@PYTHON=$(PYTHON) scripts/ensure-system-deps.sh

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel

venv: deps $(VPY)

install: venv
	$(VPY) -m pip install -q -e '.[test,bench]'

test: install
	$(VPY) -m pytest tests

demo: install
	$(VPY) -m sermas_bus demo

docs: venv
	$(VPY) -m pip install -q -e '.[docs]'
	$(VPY) -m sphinx -W --keep-going -b html docs docs/_build/html

bench: install
	$(VPY) bench/run.py $(BENCH_ARGS)
	$(VPY) bench/bench_json.py
	$(VPY) bench/bench_topics.py

# The suite on every CPython from 3.9 to 3.13 present here (pyenv), one
# virtualenv each (.venv-3.X); `make test` keeps using one interpreter.
test-all: deps
	scripts/test-all.sh

# A wheel that installs anywhere: sdist, a wheel built from it in an isolated
# environment, repaired by auditwheel (paho.mqtt.c, cJSON and OpenSSL bundled,
# manylinux tag for this glibc), both into dist/.  tests/test_wheel.py runs it.
wheel: install
	$(VPY) scripts/build_wheel.py dist

sdist: install
	$(VPY) scripts/build_wheel.py dist --sdist-only

clean:
	rm -rf build dist $(VENV) .venv-3.* sermas_bus/*.so *.egg-info docs/_build

# Developers: the whole suite on a C core built with AddressSanitizer/UBSan,
# in a scratch copy (the tree's own build is left alone).  Leak detection is
# off (the interpreter itself never frees everything; leaks are the fuzzers'
# and valgrind's job); the fuzz harnesses are sanitized builds of their own.
# libcrypt is preloaded too: ASan's crypt() interceptor needs it at start-up
# (amqtt, an interop broker, hashes passwords with crypt).
ASAN_DIR ?= /tmp/sermas-bus-asan
asan-test: install
	rm -rf $(ASAN_DIR) && git clone -q . $(ASAN_DIR)
	cd $(ASAN_DIR) && SERMAS_BUS_SANITIZE=1 $(abspath $(VPY)) setup.py build_ext --inplace -q
	cd $(ASAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libcrypt.so.1)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		PYTHONPATH=$(ASAN_DIR) $(abspath $(VPY)) -m pytest -p no:cacheprovider \
		--ignore=tests/test_fuzz.py tests

# libFuzzer harnesses (clang, ASan + UBSan; fuzz/build.py builds them): the
# plugin's JWT check, the durable store's recovery, and the core's JSON
# decoder, encoder round trip, topic render/match, filter trie and MQTT 5
# properties (those in an embedded CPython).  Each runs FUZZ_SECONDS from its
# committed seed corpus (fuzz/corpus/<name>), new units kept in
# build/fuzz/corpus-<name>.  A 10 s run of each is part of `make test`.
FUZZ_SECONDS ?= 60
FUZZ_DIR ?= build/fuzz
fuzz: install
	$(VPY) fuzz/build.py --run $(FUZZ_SECONDS) $(FUZZ_DIR)
