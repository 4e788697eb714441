"""The web app's limits that `simexplain serve` shows in its help, without importing the
server (torch, FastAPI): `store` and `engine` take them from here."""

from __future__ import annotations

# the largest accepted upload
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# the largest model input side the page may ask for (`--size` in the page): compute and the
# P x Q pair grow with its square
MAX_INPUT_SIDE = 640
