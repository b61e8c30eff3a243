"""The chat page of `python -m sft serve`, driven in headless Chromium: ask, watch the answer
stream in, ask again with the history, reset. The server is the real CLI in a subprocess."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_serve import tiny_export

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test dependency (pip install -e '.[test]')")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromium-driver are not installed "
                                "(.ci/run installs them with apt-get: apt-get install -y chromium chromium-driver)")


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    folder = tiny_export(tmp_path_factory.mktemp("browser") / "model")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "sft", "serve", "--model", str(folder), "--port", "0",
                             "--max-tokens", "16", "--name", "tiny-zh"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        deadline = time.time() + 180
        while time.time() < deadline and "serving" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        match = re.search(r"on (http://[\d.]+:\d+)/", line)
        assert match, f"server did not start: {line!r}"
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _ask(driver, question: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.ID, "input")
    box.send_keys(question)
    driver.find_element(By.ID, "send").click()
    WebDriverWait(driver, 180).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#log .assistant[data-done='1'], #log .error[data-done='1']"))
    return driver.find_elements(By.CSS_SELECTOR, "#log .msg")[-1]


def test_page_streams_answers_keeps_history_and_resets(server_url, browser):
    from selenium.webdriver.common.by import By

    browser.get(server_url + "/")
    assert "tiny-zh" in browser.title
    answer = _ask(browser, "床前明月光的下一句是什么？")
    assert "assistant" in answer.get_attribute("class"), answer.text
    assert int(answer.get_attribute("data-chunks") or 0) > 1  # tokens arrived as several streamed pieces
    first = answer.text
    assert first.strip()
    # A second question is sent with the first exchange (the page keeps the conversation).
    browser.execute_script("document.querySelectorAll('#log .msg').forEach(m => m.removeAttribute('data-done'))")
    second = _ask(browser, "再来一句")
    roles = [m.get_attribute("class").split()[-1] for m in browser.find_elements(By.CSS_SELECTOR, "#log .msg")]
    assert roles == ["user", "assistant", "user", "assistant"] and "assistant" in second.get_attribute("class")
    sent = browser.execute_script("return messages")
    assert [m["role"] for m in sent] == ["user", "assistant", "user", "assistant"]
    assert sent[1]["content"] == first
    browser.find_element(By.ID, "reset").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#log .msg") == []
    assert browser.execute_script("return messages") == []
