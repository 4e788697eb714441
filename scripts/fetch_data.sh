#!/usr/bin/env bash
# Fetch the sample data sets (called by `make test` / `make demo` once .venv exists).
# Idempotent: when everything is present it only checks and reports, in well under a second.
# Fashion-MNIST comes from the Debian package dataset-fashion-mnist (installed by setup.sh);
# the face photos come from PyPI (the face_recognition 1.3.0 source distribution) into
# ${SIMEXPLAIN_DATA:-~/.cache/simexplain}.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m simexplain.datasets fetch
