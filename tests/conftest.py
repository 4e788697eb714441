"""Fixtures shared by every test directory."""

from __future__ import annotations

import pytest
from browser_helpers import chromium


@pytest.fixture(scope="module")
def headless_chromium():
    """A headless Chromium (Debian's, driven by Playwright), shared by the tests of a module.

    Not one per session: Playwright's sync API keeps its event loop running in the main thread
    while it is open, so a second one, or any asyncio code in a later module, would fail."""
    with chromium() as browser:
        yield browser
