"""Headless Chromium for the browser tests (Debian's chromium and chromium-driver; tests skip without them)."""
from __future__ import annotations

import shutil


def chromium_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def headless_chromium(window: str = "1400,2000"):
    """A selenium Chrome driver on headless Chromium; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={window}"):
        options.add_argument(argument)
    options.binary_location = browser
    return webdriver.Chrome(service=Service(driver_path), options=options)
