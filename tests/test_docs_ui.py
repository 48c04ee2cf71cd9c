"""Swagger UI at /docs, driven in headless Chromium: "Try it out" on POST /predict runs a real request.

Debian's ``chromium`` and ``chromium-driver`` (``make chromium``) drive the page; selenium is told
both paths, so it never tries to download a browser or a driver.
"""

import json
import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("CI needs chromium and chromium-driver for the Swagger UI test (make chromium)")
    pytest.skip("chromium and chromium-driver are not installed (make chromium)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

PREDICT_OPERATION = "div.opblock-post:has(.opblock-summary-path[data-path='/predict'])"


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Root in a container has no user namespace for Chromium's sandbox; /dev/shm is small there.
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,2000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_try_it_out_on_predict_scores_a_text_through_the_worker(browser, web_url, unique):
    text = unique("Swagger UI makes this API a pleasure to try.")
    wait = WebDriverWait(browser, 30)
    browser.get(f"{web_url}/docs")

    operation = wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, PREDICT_OPERATION)))
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(lambda _: operation.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()

    body = wait.until(lambda _: operation.find_element(By.CSS_SELECTOR, "textarea.body-param__text"))
    body.clear()
    body.send_keys(json.dumps({"text": [text]}))
    operation.find_element(By.CSS_SELECTOR, "button.execute").click()

    # The live response appears once the browser's fetch has its answer.
    response = wait.until(lambda _: operation.find_element(By.CSS_SELECTOR, ".live-responses-table tr.response"))
    assert response.find_element(By.CSS_SELECTOR, ".response-col_status").text.strip() == "200"
    answer = json.loads(response.find_element(By.CSS_SELECTOR, ".response-col_description pre").text)
    [prediction] = answer["predictions"]
    assert [entry["label"] for entry in prediction] in (["POSITIVE", "NEGATIVE"], ["NEGATIVE", "POSITIVE"])
    assert prediction[0]["score"] >= prediction[1]["score"]
    # The text was new, so the answer came from the worker, and the request Swagger UI sent was
    # the body typed in: the curl line it shows carries the text.
    curl = operation.find_element(By.CSS_SELECTOR, ".curl-command").text
    assert text in curl and "/predict" in curl
