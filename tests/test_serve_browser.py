"""The page at / in headless Chromium (Debian's chromium + chromium-driver, driven by selenium): upload the
bundled example image, ask for boxes, wait for the streamed answer, and find the drawn box. The screenshot is
kept in test-artifacts/serve-page.png."""
import shutil
from pathlib import Path

import pytest
import torch

import qwenvl
from serve_util import BOX_ANSWER, BOX_PROMPT, EXAMPLE, Server

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1200,900"]


def _binary(*names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    raise AssertionError(f"none of {names} is installed; scripts/setup.sh dev installs chromium and chromium-driver "
                         "(apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _binary("chromium", "chromium-browser")
    for f in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        opts.add_argument(f)
    driver = webdriver.Chrome(service=Service(_binary("chromedriver")), options=opts)
    yield driver
    driver.quit()


def test_page_streams_an_answer_and_draws_the_box(parrot_dir, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    vlm = qwenvl.load(parrot_dir, dtype=torch.float32)
    with Server(vlm, api_key="sk-page") as s:
        browser.get(s.url + "/")
        browser.find_element(By.ID, "apikey").send_keys("sk-page")
        browser.find_element(By.ID, "file").send_keys(str(EXAMPLE))
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: d.execute_script("const i = document.getElementById('preview');"
                                              "return i && i.complete && i.naturalWidth > 0;"))
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys(BOX_PROMPT)
        browser.find_element(By.ID, "ask").click()
        wait.until(lambda d: d.execute_script("return document.body.dataset.done"))
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "serve-page.png"))
        status = browser.find_element(By.ID, "status").text
        assert browser.execute_script("return document.body.dataset.done") == "1", status
        assert browser.execute_script("return document.getElementById('answer').textContent") == BOX_ANSWER
        boxes = browser.find_elements(By.CSS_SELECTOR, "#overlay .box")
        assert len(boxes) == 1 and boxes[0].text == "red circle"
        assert "1 box(es)/point(s) drawn" in status
        # the box sits where the structured result says, relative to the picture as displayed
        found = browser.execute_script("return JSON.parse(document.getElementById('structured').textContent)")
        x1, y1, x2, y2 = found["objects"][0]["bbox_2d"]
        img = browser.find_element(By.ID, "preview").rect
        box = boxes[0].rect
        sx, sy = img["width"] / 320, img["height"] / 240  # the example image is 320 x 240
        assert abs(box["x"] - img["x"] - x1 * sx) < 2 and abs(box["y"] - img["y"] - y1 * sy) < 2
        assert abs(box["width"] - (x2 - x1) * sx) < 2 and abs(box["height"] - (y2 - y1) * sy) < 2
    assert (ARTIFACTS / "serve-page.png").stat().st_size > 1000
