#!/usr/bin/env bash
# On the GPU machine (the device tool's `run`, with carry [".device"] after
# benchmarks/device_pack.sh here): install the carried wheels beside the image's packages,
# then produce every GPU number of docs/performance.md in one command. The results land in
# $OUT (device.json, device_check.log, and performance.md: docs/performance.md with its
# bench-<device> block replaced, to copy over the page here). Arguments go to device_check.py
# (default: --device cuda); e.g. here, to try the script: OUT=/tmp/o PYTHON=.venv/bin/python
# bash benchmarks/device_run.sh --device cpu --quick --threads 1
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${OUT:-out/device}
mkdir -p "$out"
site=$(mktemp -d)
if compgen -G ".device/whl/*.whl" >/dev/null; then
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" .device/whl/*.whl
fi
export PYTHONPATH="src:$site" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--device cuda)
cp docs/performance.md "$out/performance.md"
"$python" benchmarks/device_check.py "${args[@]}" --write "$out/performance.md" \
    --json "$out/device.json" 2>&1 | tee "$out/device_check.log"
