"""Driving `memla explore` in a real browser: Debian's chromium and chromedriver through Selenium.

Shared by tests/test_explore_ui.py (a tiny model) and scripts/explore_screenshot.py (the README's
screenshot on the default model).  The browser is headless, runs with --no-sandbox (CI runs as
root), and Selenium is given the chromedriver path so that it never downloads a driver.  Every
wait has a time limit and fails with what the page showed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

BROWSERS = ("chromium", "chromium-browser")
INSTALL = "`make test-ui` installs them (apt-get install chromium chromium-driver)"
FINISHED = ("done", "failed")


def browser_paths() -> tuple[str, str]:
    """``(chromium, chromedriver)`` on PATH (or in /usr/bin), or a RuntimeError saying how to install them."""
    browser = next((p for name in BROWSERS if (p := shutil.which(name))), None)
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/bin/chromedriver",) if os.path.exists(p)), None)
    if browser is None or driver is None:
        raise RuntimeError(f"no chromium / chromedriver found; {INSTALL}")
    return browser, driver


@contextlib.contextmanager
def chrome(*, width: int = 1400, height: int = 2000) -> Iterator[webdriver.Chrome]:
    """A headless chromium window of ``width`` × ``height`` pixels, closed on exit."""
    browser, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--lang=en-US", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@contextlib.contextmanager
def serving(args: Sequence[str], *, log: Path, env: dict[str, str] | None = None,
            timeout: float = 300.0) -> Iterator[str]:
    """Run ``memla explore ARGS`` on a free port until the page answers; yield its URL; stop it on exit.

    Raises:
        RuntimeError: the command exited, or the page did not answer within ``timeout`` seconds
            (with the end of its output).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "memla", "explore", *args, "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"memla explore exited with {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"memla explore did not answer on {url} within {timeout:.0f} s:\n{_tail(log)}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait(driver, condition, *, timeout: float, what: str):
    """``condition(driver)`` once truthy; a TimeoutError naming ``what`` and the page's message otherwise."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        raise TimeoutError(f"after {timeout:.0f} s still waiting for {what}; the page says: "
                           f"{message(driver)!r}; progress: {table_rows(driver, 'explore-status')}") from None


def open_page(driver, url: str, *, timeout: float = 60.0) -> None:
    """Load the page and wait until its fact table is filled."""
    driver.get(url)
    wait(driver, lambda d: table_rows(d, "explore-facts"), timeout=timeout, what="the fact table")


def message(driver) -> str:
    """The inline message box's text ("" when empty)."""
    found = driver.find_elements(By.CSS_SELECTOR, "#explore-message [data-testid=markdown]")  # not the timer
    return found[0].text.strip() if found else ""


def table_rows(driver, elem_id: str) -> list[list[str]]:
    """The body rows of a table of the page (each cell's text, without the cell menu's "⋮")."""
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} .virtual-row")
    return [[c.text.replace("⋮", "").strip() for c in row.find_elements(By.CSS_SELECTOR, ".body-cell")]
            for row in rows]


def set_cell(driver, elem_id: str, row: int, col: int, text: str) -> None:
    """Type ``text`` into one cell of an editable table (double-click, replace, Enter)."""
    cell = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} .virtual-row")[row].find_elements(
        By.CSS_SELECTOR, ".body-cell")[col]
    ActionChains(driver).double_click(cell).perform()
    box = wait(driver, lambda d: d.switch_to.active_element if d.switch_to.active_element.tag_name in
               ("textarea", "input") else None, timeout=10, what=f"the editor of cell ({row}, {col}) of {elem_id}")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text, Keys.ENTER)
    wait(driver, lambda d: table_rows(d, elem_id)[row][col] == text, timeout=10,
         what=f"{text!r} in cell ({row}, {col}) of {elem_id}")


def choose_methods(driver, methods: Sequence[str]) -> None:
    """Tick exactly ``methods`` in the methods box."""
    for label in driver.find_elements(By.CSS_SELECTOR, "#explore-methods label"):
        box = label.find_element(By.CSS_SELECTOR, "input[type=checkbox]")
        if box.is_selected() != (label.text.strip() in methods):
            label.click()
    wait(driver, lambda d: sorted(label.text.strip() for label in d.find_elements(By.CSS_SELECTOR, "#explore-methods label")
                                  if label.find_element(By.CSS_SELECTOR, "input").is_selected()) == sorted(methods),
         timeout=10, what=f"the methods {methods}")


def click(driver, elem_id: str) -> None:
    """Click a button of the page."""
    driver.find_element(By.ID, elem_id).click()


def run_edit(driver, methods: Sequence[str], *, timeout: float) -> list[list[str]]:
    """Press Edit and wait until every method is done or failed; returns the progress rows.

    Raises:
        AssertionError: the page showed a message instead (bad input or an error).
        TimeoutError: not finished within ``timeout`` seconds.
    """
    stale = message(driver)  # an earlier message (e.g. "Cancelled") until the edit's first update clears it
    click(driver, "explore-run")

    def finished(d):
        said = message(d)
        if said and said != stale:
            raise AssertionError(f"the page says: {said}")
        rows = table_rows(d, "explore-status")
        ok = [r for r in rows if len(r) > 1 and r[1] in FINISHED]
        return rows if len(ok) == len(methods) and {r[0] for r in ok} == set(methods) else None

    return wait(driver, finished, timeout=timeout, what=f"{', '.join(methods)} to finish")


def open_tab(driver, name: str) -> None:
    """Show one tab of the results (its content is rendered when shown)."""
    tab = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == name)
    tab.click()


def full_screenshot(driver, path: Path, *, width: int = 1400) -> Path:
    """A screenshot of the whole page (the window grown to the page's height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, height + 100)
    time.sleep(1.0)  # let the layout settle at the new size
    driver.save_screenshot(str(path))
    return path
