"""The page in a real browser: headless Chromium (Debian's chromium + chromium-driver)
driven by Selenium against a live `debm serve`, the five things a user does:

  1. enter the key,  2. generate and watch live previews, then the grid,  3. score uploaded
  images and see the verdicts against the histogram,  4. submit a tiny training job and
  watch it finish (curves, grids),  5. make its version the default;

and, for every page the service serves (/, /docs, /redoc), that the browser makes no request
to another origin and logs no console error (Chrome's performance and browser logs); that a
mistyped key does not replace a working one, the menu and tables follow the active key, and
the last results come back after a reload.

Screenshots of each step go to var/test-screenshots/.  A browser that cannot start fails
the test (it is part of what the project ships), it is never skipped.
"""

from __future__ import annotations

import json
import shutil
import time
from urllib.parse import urlsplit

import re

import httpx
import pytest

from tests.support import API_KEY, REPO, USE_KEY
from tests.support.processes import dump_logs

from .conftest import start_serve

pytestmark = pytest.mark.system
SHOTS = REPO / "var" / "test-screenshots"


def chromium_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver packages "
                    "(`apt-get install chromium chromium-driver`; .ci/run and "
                    "`./run.sh test` install them when missing)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1300,2400", "--disable-extensions", "--no-first-run",
                "--disable-component-update", "--disable-background-networking",
                "--disable-sync", "--disable-default-apps", "--no-default-browser-check"):
        options.add_argument(arg)
    # The performance log lists every request the page makes (Network.requestWillBeSent).
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    try:
        return webdriver.Chrome(service=Service(driver_path), options=options)
    except Exception as exc:  # selenium wraps every start failure differently
        pytest.fail(f"headless Chromium did not start: {exc}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("browser")
    live = start_serve(root / "data", root, seed_checkpoint=tiny_checkpoint)
    yield live
    live.proc.kill()


def wait_for(driver, condition, timeout: float, what: str):
    from selenium.common.exceptions import (NoSuchElementException,
                                            StaleElementReferenceException)
    from selenium.webdriver.support.ui import WebDriverWait

    try:  # the page re-renders tables: an element found a moment ago may be replaced
        return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=(
            NoSuchElementException, StaleElementReferenceException)).until(condition)
    except Exception:
        error = driver.find_element("id", "error").text
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; the page "
                             f"says: {error!r}") from None


def canvas_painted(driver, canvas_id: str) -> bool:
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return true; return false;",
        canvas_id)


def test_the_page_in_chromium(server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver = chromium_driver()
    by_id = lambda name: driver.find_element("id", name)  # noqa: E731
    try:
        driver.get(server.base + "/")
        assert driver.title == "Denoising-EBM"

        # 1. the key, kept for this tab only
        by_id("key").send_keys(API_KEY)
        by_id("key-save").click()
        wait_for(driver, lambda d: "tester" in by_id("who").text, 20, "the key to be accepted")
        assert driver.execute_script("return sessionStorage.getItem('debm-key')") == API_KEY
        assert API_KEY not in driver.execute_script("return JSON.stringify(localStorage)")
        assert API_KEY not in driver.current_url
        driver.save_screenshot(str(SHOTS / "1-key.png"))

        # 2. generate: live previews of the chain (h(z), then samples), then the grid
        for field, value in (("gen-n", "4"), ("gen-steps-latent", "150"),
                             ("gen-steps-pixel", "150")):
            by_id(field).clear()
            by_id(field).send_keys(value)
        by_id("gen-go").click()
        stages = set()

        def preview_or_grid(d):
            if by_id("gen-preview").is_displayed():
                stages.add(by_id("gen-preview").get_attribute("data-stage"))
                if len(stages) == 1:
                    d.save_screenshot(str(SHOTS / "2a-live-preview.png"))
            return by_id("gen-grid").is_displayed()

        wait_for(driver, preview_or_grid, 240, "the generated grid")
        assert stages & {"latent", "pixel"}, f"no live preview was shown ({stages})"
        assert by_id("gen-preview").get_attribute("src").startswith("data:image/png;base64,")
        assert by_id("gen-download").get_attribute("href").startswith("blob:")
        assert driver.execute_script("return document.getElementById('gen-grid').naturalWidth"
                                     ) > 8
        assert re.match(r"done: 4 samples in \d+\.\d s$", by_id("gen-stage").text), \
            by_id("gen-stage").text
        driver.save_screenshot(str(SHOTS / "2b-generated.png"))

        # 3. score two images: a digit and a photo; verdicts and the histogram
        by_id("score-files").send_keys("\n".join(str(REPO / "examples" / name) for name in
                                                 ("digit-7.png", "photo.jpg")))
        wait_for(driver, lambda d: len(d.find_elements("css selector", "tr.score-row")) == 2,
                 120, "two scored rows")
        rows = driver.find_elements("css selector", "tr.score-row")
        verdicts = {r.find_element("css selector", ".filename").text:
                    r.find_element("css selector", ".verdict").text for r in rows}
        assert verdicts["photo.jpg"] == "OOD"
        assert verdicts["digit-7.png"] in ("OOD", "in-distribution")
        wait_for(driver, lambda d: canvas_painted(d, "histogram"), 20, "the histogram")
        assert "held-out scores of demo:1" in by_id("histogram-caption").text
        driver.save_screenshot(str(SHOTS / "3-scored.png"))

        # 4. a tiny training job of a second "demo" version: curves and grids, then done
        from selenium.webdriver.support.ui import Select

        Select(by_id("train-preset")).select_by_value("tiny")
        for field, value in (("train-warmup", "3"), ("train-iters", "6"),
                             ("train-name", "demo")):
            by_id(field).clear()
            by_id(field).send_keys(value)
        by_id("train-go").click()
        wait_for(driver, lambda d: by_id("train-status").text.startswith("done"), 300,
                 "the training job to finish")
        assert "demo:2" in by_id("train-status").text
        assert canvas_painted(driver, "train-curves")
        wait_for(driver, lambda d: d.find_elements("css selector", "#train-grids img"), 20,
                 "a training sample grid")
        driver.save_screenshot(str(SHOTS / "4-trained.png"))

        # 5. make demo:2 the default
        row = wait_for(driver, lambda d: d.find_elements(
            "css selector", 'tr[data-model="demo:2"] button.set-default'), 20,
            "a 'make default' button for demo:2")
        row[0].click()
        wait_for(driver, lambda d: "(default)" in d.find_element(
            "css selector", 'tr[data-model="demo:2"]').text, 20, "demo:2 to be the default")
        models = httpx.get(server.base + "/models", headers={"X-API-Key": API_KEY}).json()
        assert models["models"][0]["default_version"] == 2
        driver.save_screenshot(str(SHOTS / "5-default.png"))
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not logs, logs
    except BaseException:
        driver.save_screenshot(str(SHOTS / f"failed-{int(time.time())}.png"))
        print(dump_logs(server.proc))
        raise
    finally:
        driver.quit()


def requests_made(driver) -> list[str]:
    """URLs the page requested since the last call (Chrome's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def outside(urls: list[str], base: str) -> list[str]:
    origin = urlsplit(base)
    return [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss")
            and urlsplit(u).netloc != origin.netloc]


@pytest.mark.parametrize("path,ready", [
    ("/", "#key-form"), ("/docs", ".swagger-ui .info"), ("/redoc", "[role=menuitem]")])
def test_no_page_requests_another_site_or_logs_an_error(server, path, ready):
    driver = chromium_driver()
    try:
        driver.get(server.base + path)
        wait_for(driver, lambda d: d.find_elements("css selector", ready), 30,
                 f"{path} to render")
        time.sleep(1.0)  # late requests (images, fonts) of the rendered page
        urls = requests_made(driver)
        assert any(u.startswith(server.base) for u in urls), urls
        assert outside(urls, server.base) == []
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        driver.save_screenshot(str(SHOTS / f"page{path.replace('/', '-')}.png"))
    finally:
        driver.quit()


def test_keys_switch_cleanly_and_results_survive_a_reload(server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver = chromium_driver()
    by_id = lambda name: driver.find_element("id", name)  # noqa: E731

    def enter(key: str):
        by_id("key").clear()
        by_id("key").send_keys(key)
        by_id("key-save").click()

    def model_rows():
        return [r.get_attribute("data-model") for r in
                driver.find_elements("css selector", "#models-table tbody tr")]

    try:
        driver.get(server.base + "/")
        # No key: the menu says what it needs, no empty sliver, no table rows, no charts.
        assert not by_id("gen-model").is_enabled()
        assert "enter a key" in by_id("gen-model").text
        assert model_rows() == []
        for figure in ("histogram-figure", "train-curves-figure", "gen-result"):
            assert not by_id(figure).is_displayed(), figure
        enter(API_KEY)
        wait_for(driver, lambda d: "tester" in by_id("who").text, 20, "the admin key")
        wait_for(driver, lambda d: model_rows(), 20, "the models table")
        # A mistyped key: refused, and the working key stays in use.
        enter("not-a-key-0123456789")
        wait_for(driver, lambda d: by_id("error").is_displayed(), 20, "the refusal")
        assert "not accepted" in by_id("error").text and "tester" in by_id("error").text
        assert "tester" in by_id("who").text and model_rows()
        assert driver.execute_script("return sessionStorage.getItem('debm-key')") == API_KEY
        driver.save_screenshot(str(SHOTS / "keys-1-mistyped.png"))

        # Results, then a reload: the grid and the scores come back from their job ids.
        for field, value in (("gen-n", "4"), ("gen-steps-latent", "2"), ("gen-steps-pixel", "2")):
            by_id(field).clear()
            by_id(field).send_keys(value)
        by_id("gen-go").click()
        wait_for(driver, lambda d: by_id("gen-grid").is_displayed(), 120, "the grid")
        by_id("score-files").send_keys(str(REPO / "examples" / "digit-7.png"))
        wait_for(driver, lambda d: d.find_elements("css selector", "tr.score-row"), 120,
                 "a scored row")
        wait_for(driver, lambda d: by_id("score-status").text.startswith("done"), 30,
                 "the scoring caption")
        assert re.match(r"done: 1 image scored in \d+\.\d s$", by_id("score-status").text)
        wait_for(driver, lambda d: canvas_painted(d, "histogram"), 20, "the histogram")
        driver.save_screenshot(str(SHOTS / "keys-2-results.png"))
        score = driver.find_element("css selector", "tr.score-row .score").text
        driver.refresh()
        wait_for(driver, lambda d: by_id("gen-grid").is_displayed(), 30, "the grid again")
        assert by_id("gen-stage").text.startswith("last result: 4 samples in ")
        rows = wait_for(driver, lambda d: d.find_elements("css selector", "tr.score-row"), 30,
                        "the scores again")
        assert [r.find_element("css selector", ".score").text for r in rows] == [score]
        assert rows[0].find_element("css selector", ".filename").text == "digit-7.png"
        wait_for(driver, lambda d: canvas_painted(d, "histogram"), 20, "the histogram again")
        driver.save_screenshot(str(SHOTS / "keys-3-reloaded.png"))

        # Another (use) key: its own session, no admin section, no results of the other key.
        enter(USE_KEY)
        wait_for(driver, lambda d: '"user"' in by_id("who").text, 20, "the use key")
        assert not by_id("train").is_displayed()
        assert driver.find_elements("css selector", "tr.score-row") == []
        assert not by_id("gen-grid").is_displayed()
        # Forgetting the key empties what a key may see.
        by_id("key-forget").click()
        wait_for(driver, lambda d: "no key" in by_id("who").text, 20, "no key")
        assert model_rows() == [] and not by_id("gen-model").is_enabled()
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
                and "status of 401" not in e["message"]]  # the mistyped key's answer
        assert not logs, logs
    except BaseException:
        driver.save_screenshot(str(SHOTS / f"failed-keys-{int(time.time())}.png"))
        print(dump_logs(server.proc))
        raise
    finally:
        driver.quit()
