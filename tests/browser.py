"""A real headless browser for the web page's tests: Debian's chromium through its
chromedriver (selenium), on loopback only; screenshots go to the test artifacts folder.

The flags keep chromium off the network (this machine's is closed: background requests are
refused by the dozen) and out of the user's profile (a fresh ``--user-data-dir``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Where screenshots are saved (CI keeps the folder): $SOUNDTRACK_TEST_ARTIFACTS or ./test-artifacts.
ARTIFACTS = Path(os.environ.get("SOUNDTRACK_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def have_browser() -> bool:
    """Whether chromium and chromedriver are installed (``make browser`` installs them)."""
    return all(shutil.which(p) or os.path.exists(p) for p in (CHROMIUM, CHROMEDRIVER))


def start_browser(profile: Path, width: int = 1280, height: int = 1700):
    """A headless chromium driven by selenium.

    Args:
        profile: an empty folder for the browser's profile.
        width: window width (px).
        height: window height (px): tall enough for a whole view in one screenshot.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--mute-audio",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}",
                 f"--window-size={width},{height}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def wait_for(driver, script: str, timeout: float = 60.0, poll: float = 0.1):
    """Runs ``return <script>`` in the page until it gives a truthy value; returns it.

    Raises:
        AssertionError: not within ``timeout`` s (with the page's status line and console).
    """
    end = time.monotonic() + timeout
    while True:
        value = driver.execute_script("return " + script)
        if value:
            return value
        if time.monotonic() > end:
            status = driver.execute_script("return (document.getElementById('status') || {}).textContent")
            raise AssertionError(f"waited {timeout:g} s for `{script}`; page status: {status!r}; console: "
                                 f"{console(driver)[-10:]}")
        time.sleep(poll)


def console(driver) -> list[str]:
    """The page's console messages so far."""
    try:
        return [f"{e.get('level')}: {e.get('message')}" for e in driver.get_log("browser")]
    except Exception:  # not every driver keeps the log
        return []


def screenshot(driver, name: str) -> Path:
    """Saves the window to ``ARTIFACTS/<name>.png``; returns the path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
