"""Headless Debian Chromium for the browser tests (tests/test_browser.py, test_viewer_interop.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
COMMON_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip


def start(profile: Path, flags: tuple[str, ...], logs: tuple[str, ...] = ("browser",)) -> Any:
    """A headless Chromium with its own ``profile`` folder, ``COMMON_FLAGS`` plus ``flags``, and
    the named logs (``driver.get_log(name)``) recorded in full."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*COMMON_FLAGS, *flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", dict.fromkeys(logs, "ALL"))
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
