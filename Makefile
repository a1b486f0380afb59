# sermas_bus: the two commands of the README, and their helpers.
#   make demo   - run the demo on an embedded local broker
#   make test   - run the test suite (real mosquitto started by the tests)
#   make docs   - build the HTML documentation into docs/_build/html (warnings are errors)
# Both install what a fresh Debian machine lacks (apt packages, a virtualenv).

PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python

.PHONY: test demo bench docs deps venv install clean

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

clean:
	rm -rf build $(VENV) sermas_bus/*.so *.egg-info docs/_build
