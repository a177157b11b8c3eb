"""The report in a real browser: headless Chromium (Debian ``chromium`` + ``chromium-driver``) via selenium.

Checks what a person would see: every section shown, every image decoded
(``naturalWidth > 0``), nothing loaded from the network, no console errors.
Set ``BGBIAS_SCREENSHOT=path.png`` to keep a full-page screenshot for a look.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_report import EVIL, write_fixture

from bgbias.report.page import SECTIONS
from bgbias.report.write import write_report

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Chromium and chromedriver (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}",
                 "--window-size=1280,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    out = root / "report.html"
    write_report(write_fixture(root), out, title="browser test")
    return out


def test_report_renders_in_chromium(driver, page: Path):
    from selenium.webdriver.common.by import By

    driver.get(page.as_uri())
    assert driver.title == "browser test"
    for sid, title in SECTIONS:
        sec = driver.find_element(By.ID, sid)
        assert sec.is_displayed(), sid
        assert sec.find_element(By.TAG_NAME, "h2").text == title
    imgs = driver.find_elements(By.TAG_NAME, "img")
    assert len(imgs) == 10                  # 6 figures and 2 x 2 class x background heatmaps
    for img in imgs:
        complete, width, shown = driver.execute_script(
            "const i = arguments[0]; return [i.complete, i.naturalWidth, i.getBoundingClientRect().width];", img)
        assert complete and width > 0, f"broken image {img.get_attribute('alt')}"
        assert 0 < shown <= 1100, "images fit the page width"
    # the escaped label reads as text and never ran as script
    assert EVIL in driver.find_element(By.ID, "fooling").text
    assert driver.execute_script("return document.scripts.length") == 0
    # nothing overflows a laptop-width page
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 1280
    errors = [e for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]
    assert not errors, errors
    shot = os.environ.get("BGBIAS_SCREENSHOT")
    if shot:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(height + 100, 12000))
        driver.save_screenshot(shot)


def test_console_errors_are_caught(driver, tmp_path):
    """The check above can fail: a page with a broken image logs an error and reports naturalWidth 0."""
    from selenium.webdriver.common.by import By

    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head>'
                   '<body><img src="data:image/png;base64,AAAA"></body></html>')
    driver.get(bad.as_uri())
    img = driver.find_element(By.TAG_NAME, "img")
    assert driver.execute_script("return arguments[0].naturalWidth", img) == 0
