"""Fixtures shared by every test directory."""

from __future__ import annotations

import pytest
from browser_helpers import chromium


@pytest.fixture(scope="session")
def headless_chromium():
    """A headless Chromium (Debian's, driven by Playwright), shared by the tests of a session."""
    with chromium() as browser:
        yield browser
