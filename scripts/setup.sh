#!/usr/bin/env bash
# Set-up for `make demo` / `make test`: system packages (Fashion-MNIST data, Chromium for the
# browser tests), then .venv with exactly the versions of requirements/lock.txt (hash-checked;
# torch is the pinned CPU build) and the package itself, editable, with no dependency of its own
# resolved here. A .venv made from an older lock is synced: packages the lock does not name are
# removed, the others moved to the locked version.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

source scripts/quiet_pip.sh
LOCK=requirements/lock.txt
[ -x .venv/bin/python ] || python3 -m venv .venv
if [ ! -x .venv/bin/pip-sync ]; then
    # a new .venv: everything from the lock (every file's hash checked), pip-tools included
    quiet_pip .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes \
        -r "$LOCK"
fi
# exactly the lock: installs what is missing or at another version, removes what it does not name
quiet_pip .venv/bin/pip-sync -q --pip-args "--disable-pip-version-check" "$LOCK"
quiet_pip .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    --no-build-isolation -e .
