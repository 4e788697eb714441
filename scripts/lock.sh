#!/usr/bin/env bash
# `make lock`: compile requirements/lock.txt, the exact versions (with hashes) of everything the
# set-up installs, from pyproject.toml's dependencies and extras plus requirements/lock.in.
# Versions already in the lock stay where pyproject still allows them; UPGRADE=1 moves every
# package to the newest allowed version.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=zoo,retrieval,scale,web,hf,notebook,docs,dev
upgrade=()
[ "${UPGRADE:-0}" = 1 ] && upgrade=(--upgrade)
# pip-compile comes from .venv (itself in the lock); without one, from a throwaway venv
tool=.venv/bin/pip-compile
if [ ! -x "$tool" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m venv "$tmp/venv"
    "$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check "pip-tools>=7.4"
    tool="$tmp/venv/bin/pip-compile"
fi
source scripts/quiet_pip.sh
CUSTOM_COMPILE_COMMAND="make lock" quiet_pip "$tool" --quiet --generate-hashes --allow-unsafe \
    --strip-extras --no-emit-index-url --no-emit-find-links --extra "$EXTRAS" \
    "${upgrade[@]}" -o requirements/lock.txt pyproject.toml requirements/lock.in
echo "requirements/lock.txt: $(grep -c '^[a-zA-Z0-9]' requirements/lock.txt) packages"
