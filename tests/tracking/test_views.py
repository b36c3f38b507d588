"""The MLflow UI's saved view of a sweep (gmt_ray.tracking.views): as written to the store,
and compared in a real browser.

The shared tiny sweep (tests/conftest.py: 4 trials, sft and gmt, learning rate and gmt's
mask ratio searched) writes its store; ``mlflow ui`` serves it as the sweep's summary says; headless Chromium,
driven by selenium, opens the links the summary printed and clicks as a person would.
Skips, saying why, where Chromium, its driver or selenium is missing (CI installs them:
Debian's ``chromium`` and ``chromium-driver`` from .ci/run, selenium from the test extra).

``GMT_RAY_SCREENSHOTS=DIR`` keeps the screenshots there (docs/ holds the README's).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gmt_ray import tracking
from tests.helpers import free_port

SWEEP = "tiny-sweep"
WAIT_S = 180  # a page of the UI on a loaded 2-core machine can take a minute


def test_the_comparison_view_is_a_saved_view_of_the_experiment(sweep_with_models):
    import json

    uri, runs, _, _ = sweep_with_models
    view = runs.save_comparison_view("val_loss", "min", ["mask.method", "train.lr", "mask.mask_ratio"])
    assert runs.save_comparison_view("val_loss", "min", ["mask.method", "train.lr"]) == view  # rewritten in place
    tags = runs.client.get_experiment(runs.experiment_id).tags
    envelope = json.loads(tags[f"mlflow.sharedViewState.{view}"])
    assert envelope["name"] == "ui-sweep: trials by val_loss"
    state = json.loads(envelope["state"])
    (parallel, scatter) = state["compareRunCharts"]
    assert parallel["selectedParams"] == ["mask.method", "train.lr"] and parallel["selectedMetrics"] == ["val_loss"]
    assert scatter["xaxis"] == {"key": "train.lr", "type": "PARAM"}
    assert state["searchFilter"] == ("tags.`gmt_ray.sweep` = 'ui-sweep' AND tags.`gmt_ray.role` = 'trial' AND "
                                     "tags.`gmt_ray.stage` = 'search'")
    assert tracking.experiment_url(uri, runs.experiment_id, view=view).endswith(
        f"/runs?viewStateShareKey={view}&compareRunsMode=CHART&workflowType=machine_learning")


def _browser_or_skip() -> tuple[str, str]:
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                    None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run does)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")
    return chromium, driver


@pytest.fixture(scope="module")
def served_sweep(shared_sweep, tmp_path_factory):
    """The shared sweep's store served by `mlflow ui` as its summary says: (the links the
    summary printed, pointing at this server; the store's URI)."""
    _browser_or_skip()
    out = shared_sweep.stdout
    serve = re.search(r"serve it: +(mlflow ui --backend-store-uri \S+) --port 5000", out)
    links = dict(re.findall(r"  (runs table|trials compared): +(http://127\.0\.0\.1:5000/\S+)", out))
    assert serve and set(links) == {"runs table", "trials compared"}, out
    directory = tmp_path_factory.mktemp("ui")
    port = free_port()
    command = [sys.executable, "-m", *serve.group(1).split(), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    log = open(directory / "mlflow-ui.log", "w")
    server = subprocess.Popen(command, cwd=shared_sweep.directory, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        _wait_until_serving(port, server, directory / "mlflow-ui.log")
        yield ({name: url.replace(":5000/", f":{port}/") for name, url in links.items()},
               serve.group(1).split()[-1])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


def _wait_until_serving(port: int, server: subprocess.Popen, log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow ui exited: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow ui did not answer within {WAIT_S} s: {log.read_text()[-3000:]}")


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1600,1000",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-', dir=tmp_path)}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; the page shows:\n"
                             f"{driver.find_element('tag name', 'body').text[:3000]}") from None


def _visible_text(driver, text: str):
    """A condition: some element's own text contains ``text`` (and it is displayed)."""
    def found(d):
        for element in d.find_elements("xpath", f"//*[contains(text(), {_xpath_literal(text)})]"):
            if element.is_displayed():
                return element
        return False
    return found


def _displayed(css: str):
    """A condition: the first displayed element matching ``css``."""
    def found(d):
        return next((e for e in d.find_elements("css selector", css) if e.is_displayed()), False)
    return found


def _xpath_literal(text: str) -> str:
    return f"'{text}'" if "'" not in text else "concat('" + "', \"'\", '".join(text.split("'")) + "')"


def _close_assistant(driver) -> None:
    """MLflow 3.17 opens its assistant panel beside the page on a first visit."""
    for button in driver.find_elements("css selector", 'button[data-component-id="mlflow.assistant.chat_panel.close"]'):
        if button.is_displayed():
            button.click()


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    keep = os.environ.get("GMT_RAY_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


def _trial_names(store: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name(SWEEP)
    runs = client.search_runs([experiment.experiment_id],
                              filter_string="tags.`gmt_ray.role` = 'trial' and tags.`gmt_ray.stage` = 'search'")
    return sorted(r.info.run_name for r in runs)


def test_the_printed_link_opens_the_runs_table_and_the_parent_expands_to_its_trials(served_sweep, browser, tmp_path):
    links, store = served_sweep
    trials = _trial_names(store)
    assert len(trials) == 4 and all(re.fullmatch(r"(sft|gmt r=0\.\d\d) lr=\d\.\de-03 s0", t) for t in trials), trials
    browser.get(links["runs table"])
    # The training runs table (not the GenAI overview): the sweep's parent run, collapsed,
    # with the button that expands it.
    expand = _wait(browser, _displayed('button[data-component-id$="runnamecellrenderer.tsx_46"]'),
                   "the parent run's expand button in the runs table")
    _wait(browser, _visible_text(browser, "Run Name"), "the runs table's header")
    assert "/runs" in browser.current_url and "workflowType=machine_learning" in browser.current_url
    body = browser.find_element("tag name", "body").text
    # The parent and its 8 trials: 4 search trials, 4 confirmation runs.
    assert "Model training" in body and "Dataset" in body and "Models" in body and "9 matching runs" in body
    assert SWEEP in body and not any(name in body for name in trials)  # the parent, collapsed
    _close_assistant(browser)
    expand.click()
    for name in trials:  # long names are cut short in their cell: their start is shown
        _wait(browser, _visible_text(browser, name[:12]), f"trial run {name!r}")
    body = browser.find_element("tag name", "body").text
    assert body.count("arithmetic-train") >= 4  # each trial's Dataset column
    assert len(re.findall(rf"{SWEEP}-(sft|gmt)-\w{{8}}", body)) == 8, body  # each trial's logged model
    _screenshot(browser, tmp_path, "mlflow-runs.png")


def test_three_clicks_compare_the_objective_against_learning_rate_and_mask_ratio(served_sweep, browser, tmp_path):
    links, store = served_sweep
    view = f"{SWEEP}: trials by val_loss"
    browser.get(links["runs table"])
    _wait(browser, _displayed('button[data-component-id$="runnamecellrenderer.tsx_46"]'), "the runs table")
    _close_assistant(browser)
    # 1. Views  2. the sweep's view  3. the chart view
    _wait(browser, _displayed('button[data-testid="saved-views-trigger"]'), "the Views menu").click()
    _wait(browser, _visible_text(browser, view), "the sweep's saved view in the Views menu").click()
    _wait(browser, lambda d: "viewStateShareKey=" in d.current_url, "the saved view to open")
    chart_mode = _wait(browser, lambda d: d.find_elements("css selector", 'input[name="runs-view-mode"][value="CHART"]'),
                       "the chart view's switch")[0]
    browser.execute_script("arguments[0].click()", chart_mode)
    _check_comparison(browser, store)
    # The printed link opens the same comparison directly (in a fresh page).
    browser.get("about:blank")
    browser.get(links["trials compared"])
    _check_comparison(browser, store)
    assert "Model training" in browser.find_element("tag name", "body").text
    _close_assistant(browser)
    time.sleep(3)  # let the charts finish drawing
    _screenshot(browser, tmp_path, "mlflow-compare.png")


def _check_comparison(browser, store: str) -> None:
    _wait(browser, _visible_text(browser, "Parallel Coordinates"), "the parallel coordinates chart")
    axes = _wait(browser, lambda d: [e.text for e in d.find_elements("css selector", ".parcoords svg text.label")],
                 "the parallel coordinates' axes")
    assert axes[-1] == "val_loss" and sorted(axes[:-1]) == ["mask.mask_ratio", "mask.method", "train.lr"], axes
    _wait(browser, _visible_text(browser, "train.lr vs. val_loss"), "the scatter of val_loss against train.lr")
    body = browser.find_element("tag name", "body").text
    assert "4 matching runs" in body, body[:2000]  # the search's trials, without their parent
    for name in _trial_names(store):
        assert name[:12] in body
