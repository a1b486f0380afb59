#!/usr/bin/env bash
# Install the Debian packages sermas_bus needs to build and test, only if missing.
# Used by `make test` / `make demo` on a fresh Debian machine (root or sudo).
# zlib1g-dev: CRC-32 of the durable outbox's records (csrc/store.c).
# mosquitto-dev + libssl-dev: the LocalBus plugin (plugin/sermas_jwt_auth.c).
# clang + libclang-rt-14-dev: the libFuzzer harnesses (fuzz/, make fuzz, tests/test_fuzz.py).
# rabbitmq-server + nats-server: the interoperability tests (tests/test_interop.py)
# start private instances on free loopback ports; the system services they
# install are left alone.
set -euo pipefail

pkgs=(gcc libpaho-mqtt-dev libcjson-dev zlib1g-dev mosquitto mosquitto-dev libssl-dev openssl
      rabbitmq-server nats-server clang libclang-rt-14-dev)
py=${PYTHON:-python3}
# Debian's own python3 needs its headers and venv; a pyenv/conda Python has them
if [ "$(command -v "$py")" = /usr/bin/python3 ] || ! command -v "$py" >/dev/null; then
  pkgs+=(python3 python3-dev python3-venv)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing missing Debian packages: ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
