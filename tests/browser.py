"""A real headless Chromium for the tests, driven by selenium (Debian's ``chromium`` and
``chromium-driver`` packages, which scripts/test.sh installs).

``headless_chromium()`` yields a ``selenium.webdriver.Chrome`` on the local binaries (never
Selenium Manager, which would download a browser), headless, with the browser console
collected: ``driver.get_log("browser")`` returns the console messages logged since the
last call (reading clears them), ``console_errors(driver)`` those of level SEVERE
(``console.error`` and uncaught exceptions). Open a local file with
``driver.get(path.as_uri())``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

# Debian's paths first, then PATH (other distributions name the browser differently)
_BROWSERS = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
_DRIVERS = ("/usr/bin/chromedriver", "chromedriver", "/usr/lib/chromium/chromedriver")


def _find(candidates: tuple[str, ...]) -> str | None:
    for c in candidates:
        found = shutil.which(c)
        if found and os.access(found, os.X_OK):
            return found
    return None


def find_chromium() -> str | None:
    """The Chromium executable, or None."""
    return _find(_BROWSERS)


def find_chromedriver() -> str | None:
    """The chromedriver executable, or None."""
    return _find(_DRIVERS)


def chromium_unavailable() -> str | None:
    """Why no headless Chromium can run here, or None when it can."""
    hint = "apt-get install chromium chromium-driver (scripts/test.sh does)"
    if find_chromium() is None:
        return f"no chromium browser found: {hint}"
    if find_chromedriver() is None:
        return f"no chromedriver found: {hint}"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed: pip install -c constraints.txt -e '.[test]'"
    return None


@contextlib.contextmanager
def headless_chromium(window: tuple[int, int] = (1400, 1000)) -> Iterator[Chrome]:
    """A headless Chromium, quit on exit.

    ``window`` is the window's outer (width, height) in CSS pixels: headless Chromium 150
    keeps room for a browser toolbar, so the page's viewport (and ``save_screenshot``) is
    shorter, 1400 x 857 for the default.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    reason = chromium_unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = find_chromium()
    for arg in ("--headless=new",
                "--no-sandbox",  # the tests run as root in containers
                "--disable-dev-shm-usage",  # containers' /dev/shm is often 64 MB
                "--disable-gpu",
                f"--window-size={window[0]},{window[1]}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(find_chromedriver()))
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Chrome) -> list[str]:
    """The console messages of level SEVERE since the last read of the browser log.

    Each is Chromium's text, e.g. ``'file:///tmp/page.html 12:15 "boom"'``.
    """
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
