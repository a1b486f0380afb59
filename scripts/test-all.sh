#!/bin/sh
# make test-all: the test suite on every supported CPython present here, one
# virtualenv each (.venv-3.X), in turn (never two suites at once).  A version
# that is not installed is reported and skipped; the first failure stops.
#   PYTHONS="3.9 3.13" scripts/test-all.sh   to choose
set -eu
cd "$(dirname "$0")/.."
PYTHONS=${PYTHONS:-"3.9 3.10 3.11 3.12 3.13"}
ran=""
for v in $PYTHONS; do
    py=""
    for cand in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v"; do
        [ -x "$cand" ] && py=$cand
    done
    [ -z "$py" ] && py=$(command -v "python$v" || true)
    if [ -z "$py" ]; then
        echo "test-all: no Python $v on this machine, skipped"
        continue
    fi
    echo "test-all: Python $v ($py)"
    make test PYTHON="$py" VENV=".venv-$v"
    ran="$ran $v"
done
echo "test-all: passed on:${ran:- nothing}"
[ -n "$ran" ]
