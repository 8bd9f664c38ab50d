"""Headless Chromium through Selenium for tests that look at a web UI (Optuna's dashboard, MLflow's UI).

Uses the distribution's Chromium and chromedriver (Debian: `apt-get install chromium chromium-driver`); both paths
are given to Selenium, so Selenium Manager never downloads a browser or a driver.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

BROWSERS = ("chromium", "chromium-browser")
DRIVER = "chromedriver"
ARGUMENTS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1920,1080")


def chromium_paths() -> tuple[str, str] | None:
    """(browser, driver) found on PATH, or None when either is missing."""
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    driver = shutil.which(DRIVER)
    return (browser, driver) if browser and driver else None


def skip_without_chromium() -> tuple[str, str]:
    """(browser, driver), or skip the test when this machine has no Chromium or chromedriver."""
    paths = chromium_paths()
    if paths is None:
        pytest.skip("no headless browser: chromium and chromedriver are not both on PATH "
                    "(Debian: apt-get install chromium chromium-driver)")
    return paths


@contextmanager
def chromium_driver(tmp_path: Path, *, page_load_timeout_s: float = 60) -> Iterator[WebDriver]:
    """A headless Chromium WebDriver with its profile under `tmp_path`; quit on exit. Skips without Chromium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = skip_without_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (*ARGUMENTS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(page_load_timeout_s)
        yield driver
    finally:
        driver.quit()


def wait_for_text(driver: WebDriver, *texts: str, timeout_s: float = 60) -> str:
    """Wait until the page's visible text contains every one of `texts` (the page renders them); return it."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d: WebDriver) -> str | bool:
        body = d.find_element(By.TAG_NAME, "body").text
        return body if all(t in body for t in texts) else False

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.5).until(shown)
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        missing = [t for t in texts if t not in body]
        raise AssertionError(f"{driver.current_url} did not show {missing} within {timeout_s} s; it shows:\n"
                             f"{body[:2000]}") from None
