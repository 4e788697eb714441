#!/usr/bin/env bash
# Set-up for `make demo` / `make test`: system packages (Fashion-MNIST data, Chromium for the
# browser tests), then .venv with the pinned CPU torch and the package with all its extras.
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

pip_install() {
    # this machine's pip configuration warns about every missing local mirror folder
    .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 \
        | { grep -v '^WARNING: Location .* is ignored' || true; }
}
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch first and pinned exactly: an unpinned torch pulls a multi-GB CUDA build.
pip_install torch==2.13.0
pip_install "torch==2.13.0" -e ".[zoo,retrieval,scale,web,dev]"
