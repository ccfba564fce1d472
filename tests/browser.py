"""Headless Chromium for the tests of rendered pages: the DOM after the page's scripts
ran, and screenshots."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")


def chromium() -> str:
    """The headless browser's path; the test skips, saying why, where there is none."""
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        pytest.skip(f"no headless Chromium on this host (looked for {', '.join(BROWSERS)})")
    return browser


def browse(browser: str, url: str, screenshot: Path | None = None) -> str:
    """The DOM of `url` after its scripts ran, and a screenshot of it if asked for."""
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    if screenshot is not None:
        subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True,
                       timeout=120, check=True)
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert screenshot.stat().st_size > 10_000
    return dom
