"""The web app's limits that `simexplain serve` shows in its help, without importing the
server (torch, FastAPI): `store` and `engine` take them from here."""

from __future__ import annotations

import math

from ..defaults import MAX_SIZE
from ..errors import SimexplainError

# the largest accepted upload
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# the largest model input side the page may ask for (`--size` in the page): compute and the
# P x Q pair grow with its square
MAX_INPUT_SIDE = 640
# the smallest model input side the page may ask for
MIN_INPUT_SIDE = 16


def check_limits(max_upload_bytes: float, max_input_side: int) -> None:
    """Refuse (one line) limits no server can work with: no upload accepted, or no input size
    the page may ask for (`--max-upload-mb`, `--max-size`)."""
    if not (math.isfinite(max_upload_bytes) and max_upload_bytes >= 1):
        raise SimexplainError(f"the upload limit (--max-upload-mb) must be a positive size, got "
                              f"{max_upload_bytes / 2**20:g} MB")
    if not MIN_INPUT_SIDE <= max_input_side <= MAX_SIZE:
        raise SimexplainError(f"the largest input size (--max-size) must be {MIN_INPUT_SIDE} to "
                              f"{MAX_SIZE} px, got {max_input_side}")
