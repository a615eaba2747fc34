"""Screenshots of the web page for the README: serves a model, drives Debian's chromium
through one generation and the runs view, saves ``docs/img/serve_page*.png``.

    .venv/bin/python docs/screenshots.py --storage runs --model registry:best \
        --video runs/data/<run>/videos/<clip>.mp4 [--steps 20] [--out docs/img]

Needs ``make browser`` (chromium, chromedriver) and a storage root with a model (``make demo``
leaves one, with a search, a bench and registry entries for the runs view).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the browser helper the page's test uses

log = logging.getLogger("screenshots")


def main(argv: list[str] | None = None) -> int:
    """Serves, generates from the page, saves the screenshots.

    Args:
        argv: command-line arguments (see the module docstring).
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", default="runs")
    p.add_argument("--model", default="registry:best")
    p.add_argument("--video", required=True, help="an mp4 to upload through the page")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--out", default=str(REPO / "docs" / "img"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from browser import start_browser, wait_for
    from ray import serve
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from soundtrack.serving.local import run_local

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    url = run_local(a.model, a.storage, "127.0.0.1", 8765, block=False)
    with tempfile.TemporaryDirectory() as profile:
        driver = start_browser(Path(profile), width=1280, height=1950)
        try:
            driver.get(url + "/")
            wait_for(driver, "window.soundtrackPage && window.soundtrackPage.ready", timeout=60)
            driver.find_element(By.ID, "video-file").send_keys(str(Path(a.video).resolve()))
            if a.steps:
                driver.find_element(By.ID, "opt-num_steps").send_keys(str(a.steps))
            Select(driver.find_element(By.ID, "opt-output")).select_by_value("mp4")
            driver.find_element(By.ID, "generate").click()
            wait_for(driver, "window.soundtrackPage.drawn", timeout=600)
            driver.save_screenshot(str(out / "serve_page.png"))
            driver.find_element(By.ID, "tab-runs").click()
            wait_for(driver, "window.soundtrackPage.runs", timeout=60)
            wait_for(driver, "Array.from(document.images).every(i => i.complete)", timeout=60)
            driver.set_window_size(1280, 2400)
            driver.save_screenshot(str(out / "serve_page_runs.png"))
        finally:
            driver.quit()
            serve.shutdown()
    log.info("wrote %s and %s", out / "serve_page.png", out / "serve_page_runs.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
