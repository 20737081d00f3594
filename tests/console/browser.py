"""The system's headless Chromium under Selenium (Debian's `chromium` and `chromedriver`; no
browser downloads), shared by the console tests and docs/console/screenshots.py."""

from __future__ import annotations

import shutil
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def chromium(width: int = 1440, height: int = 1000) -> webdriver.Chrome:
    """A headless Chromium that keeps the page's console messages (`get_log("browser")`)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--force-device-scale-factor=1", "--lang=en-US",
                     "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def wait_for(driver: webdriver.Chrome, predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `predicate(driver)` until truthy (returned); fails naming `what`, with the page's text."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(predicate)
    except TimeoutException:
        shown = driver.execute_script("return document.body.innerText")
        raise AssertionError(f"{what} not reached within {timeout} s; the page shows:\n{shown[:3000]}") from None


def button(driver: webdriver.Chrome, name: str) -> WebElement:
    """The visible button whose accessible name is `name`."""
    return wait_for(driver, lambda d: next((b for b in d.find_elements(By.TAG_NAME, "button")
                                            if b.is_displayed() and b.accessible_name == name), None), what=f"button {name!r}")


def press(driver: webdriver.Chrome, name: str) -> None:
    """Click the button named `name`, again if a poll re-rendered it under the pointer."""
    wait_for(driver, lambda d: button(d, name).click() or True, what=f"a click on {name!r}")


def follow(driver: webdriver.Chrome, text: str) -> None:
    """Click the link whose text is `text` (found afresh if a poll re-rendered it)."""
    wait_for(driver, lambda d: d.find_element(By.LINK_TEXT, text).click() or True, what=f"a click on the link {text!r}")


def sign_in(driver: webdriver.Chrome, base: str, key: str) -> None:
    driver.get(base + "/console/")
    field = wait_for(driver, lambda d: d.find_element(By.ID, "api-key"), what="the API key field")
    field.clear()
    field.send_keys(key)
    press(driver, "Sign in")
