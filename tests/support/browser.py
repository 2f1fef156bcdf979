"""A real browser for the console's tests: Debian's ``chromium``, headless, driven by
Selenium through Debian's ``chromedriver`` (the same build, so their versions match;
nothing is downloaded). Without them the tests are skipped on a laptop with the reason,
and fail under ``CI=true`` (``make deps`` installs both)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

WAIT_S = 20.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(why: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"{why} (CI=true: the browser tests must not be skipped; make deps installs it)", pytrace=False)
    pytest.skip(f"{why}: run make deps (Debian's chromium and chromium-driver) to run the console's browser tests")


@contextmanager
def chromium(width: int = 1360, height: int = 900) -> Iterator[Any]:
    """A headless Chromium (a fresh profile: no cookies) under Selenium."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("the selenium package is not installed")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _missing("no chromium or chromedriver on PATH")
    profile = tempfile.mkdtemp(prefix="minicloud-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root (CI containers)
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, what: str, check: Callable[[Any], Any], within_s: float = WAIT_S) -> Any:
    """``check(driver)`` until it returns something truthy (Selenium exceptions count as
    not yet); fail with ``what`` and the page's text after ``within_s``."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def attempt(d: Any) -> Any:
        try:
            return check(d)
        except WebDriverException:
            return False

    try:
        return WebDriverWait(driver, within_s, poll_frequency=0.2).until(attempt)
    except Exception as exc:  # TimeoutException: say what was on the page
        text = driver.find_element("tag name", "body").text[:2000]
        raise AssertionError(f"timed out after {within_s} s waiting for {what}; the page shows:\n{text}") from exc


def screenshot(driver: Any, name: str) -> None:
    """Save the page as ``<name>.png`` in ``MINICLOUD_SCREENSHOTS`` when that is set
    (``make screenshots`` writes docs/images)."""
    where = os.environ.get("MINICLOUD_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(Path(where) / f"{name}.png"))
