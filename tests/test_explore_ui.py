"""`memla explore` end to end in a real browser: a tiny model served by the command, driven by Selenium.

Needs the ui extra and Debian's chromium + chromium-driver: `make test-ui` installs both and runs
the `ui`-marked tests (`make test` deselects them).  The screenshot goes into the test's own
temporary folder (pytest's ``tmp_path``).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import urllib.request
import zipfile

import pytest
from tiny import save_tiny

from memla.langs import LANGS

pytestmark = pytest.mark.ui

METHODS = ["ft", "memla"]
CANCELLED = ["memla", "memla-local", "memla-wo-lie", "memla-wo-lse", "memla-wo-lsm"]  # cancelled after the first
RUN_TIMEOUT = 240.0  # seconds for both edits on the tiny model (about 5 s on the development machine)


def test_edit_a_fact_with_two_methods_in_a_browser(tmp_path):
    for extra in ("gradio", "selenium"):  # here, not at import: `make test` deselects this file without the extra
        pytest.importorskip(extra, reason="the ui extra is not installed (make test-ui installs it)")
    from explore_browser import (chrome, choose_methods, click, full_screenshot, message, open_page, open_tab,
                                 run_edit, serving, set_cell, table_rows, wait)
    from selenium.webdriver.common.by import By

    model_dir = save_tiny("llama", tmp_path / "model")
    env = {**os.environ, "MEMLA_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    with serving(["--model", model_dir, "--methods", "ft"], log=tmp_path / "explore.log", env=env) as url, \
            chrome() as driver:
        open_page(driver, url)
        assert [r[0] for r in table_rows(driver, "explore-facts")] == list(LANGS)  # record 0 fills 12 languages

        # bad input: an inline message, no traceback, nothing run
        set_cell(driver, "explore-facts", 0, 1, "The capital of France is")
        click(driver, "explore-run")
        wait(driver, lambda d: message(d), timeout=60, what="the message about the missing {}")
        assert "no {} subject slot" in message(driver) and "Traceback" not in driver.page_source

        # the fact: refilled from the record, then the English new object typed in
        click(driver, "explore-load")
        wait(driver, lambda d: table_rows(d, "explore-facts")[0][1] == "The capital of {} is" and not message(d),
             timeout=30, what="the record's prompt back in the fact table")

        # cancel: the methods not finished are marked, and the next edit still runs (from pristine weights)
        choose_methods(driver, CANCELLED)
        click(driver, "explore-run")
        wait(driver, lambda d: any(r[1] == "done" for r in table_rows(d, "explore-status")), timeout=RUN_TIMEOUT,
             what="the first method to finish")
        click(driver, "explore-cancel")
        wait(driver, lambda d: "cancelled" in [r[1] for r in table_rows(d, "explore-status")], timeout=30,
             what="the cancelled methods")

        set_cell(driver, "explore-facts", 0, 3, "Berlin")
        choose_methods(driver, METHODS)
        status = run_edit(driver, METHODS, timeout=RUN_TIMEOUT)
        assert [r[1] for r in status] == ["done", "done"], status

        rows = table_rows(driver, "explore-results")
        for method in METHODS:
            mine = [r for r in rows if r[0] == method]
            assert [r[1] for r in mine] == list(LANGS), f"{method}: {len(mine)} language rows"
        assert rows[0][3] == "Berlin / Paris"
        assert any(r[6] == "yes" for r in rows), "no language flipped"
        assert len(table_rows(driver, "explore-summary")) == 2

        open_tab(driver, "Neurons")
        wait(driver, lambda d: table_rows(d, "explore-neurons"), timeout=30, what="the neuron table")
        assert {r[0] for r in table_rows(driver, "explore-neurons")} == {"memla"}
        open_tab(driver, "Keep it")
        command = wait(driver, lambda d: d.find_element("id", "explore-command").text, timeout=30,
                       what="the reproduce commands")
        assert "--new Berlin" in command and "--method memla" in command
        click(driver, "explore-adapter-button")  # the first method with weights: ft (dense deltas)
        link = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#explore-adapter-file a[href]"), timeout=60,
                    what="the adapter's download link")[0]
        with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as response:
            names = zipfile.ZipFile(io.BytesIO(response.read())).namelist()
        assert "memla_edit.json" in names, names
        open_tab(driver, "Results")
        shot = full_screenshot(driver, tmp_path / "explore.png")
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path):
    pytest.importorskip("gradio", reason="the ui extra is not installed (make test-ui installs it)")
    model_dir = save_tiny("llama", tmp_path / "model")
    env = {**os.environ, "MEMLA_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "memla", "explore", "--model", model_dir, "--port", str(port)],
                              capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"memla explore: error: cannot serve on 127.0.0.1:{port}: the port is in use or the address is not this "
        "machine's (choose another --port or --host)")
    assert "Traceback" not in done.stderr
