"""The headless browser of the tests that look at pages in a real Chromium (``test_report.py``,
``test_serve.py``): found on PATH; skipped where there is none, unless CI requires it."""

from __future__ import annotations

import os
import shutil

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# CI (.ci/run) sets this so that a missing browser fails the run instead of skipping the test
REQUIRE_BROWSER = "CITYSEG_REQUIRE_BROWSER"


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def browser_or_skip() -> str:
    """The headless browser's path; without one, skip (a laptop) or fail (CI: $CITYSEG_REQUIRE_BROWSER=1)."""
    browser = find_browser()
    if browser is None:
        reason = f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); apt-get install chromium"
        if os.environ.get(REQUIRE_BROWSER, "") not in ("", "0"):
            pytest.fail(f"{reason}; {REQUIRE_BROWSER} is set, so the browser test must run", pytrace=False)
        pytest.skip(reason)
    return browser
