"""The MLflow UI that `deepmine ui` serves, driven in a real browser: a sweep can be compared.

Comparing runs in the UI is one of the three uses deepmine exists for, so this checks it the way
a researcher does it: Debian's Chromium (headless, driven by Playwright; no browser is ever
downloaded) opens the experiment, expands the sweep's parent, selects its children, opens
Compare, and reads the swept params and the metrics off the page. Screenshots of every step are
left in the test's temporary folder, for a person to look at.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from test_ui import free_port

from conftest import Sandbox, deepmine_env, run_cli

INSTALL = (
    "install Debian's browser and the Python driver: `apt-get install chromium` and "
    "`pip install playwright` (`make setup` does both; never `playwright install`)"
)
PARENT = "mlflow.parentRunId"
#: the model every child registers (one version each) so the UI has a registered model to show
REGISTERED = "digits_mlp"
SWEEP = (
    "debug=fast",
    "data=digits",
    "optimizer.lr=0.01,0.001",
    "seed=0,1",
    f"logger.register={REGISTERED}",
)


def chromium() -> str:
    """Debian's Chromium, or a failure saying how to install it (never a skip)."""
    found = os.environ.get("DEEPMINE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        pytest.fail(f"no Chromium at {found}: {INSTALL}", pytrace=False)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail(f"the playwright package is missing: {INSTALL}", pytrace=False)
    return found


@dataclass
class SweepUI:
    url: str
    page: object  # playwright.sync_api.Page
    shots: Path
    client: object  # mlflow.MlflowClient
    experiment_id: str
    parent: object  # mlflow Run
    children: list

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


def _wait_healthy(server: subprocess.Popen, url: str, timeout_s: float = 90) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(f"deepmine ui exited with {server.returncode}: {server.stdout.read()}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"deepmine ui did not answer on {url} within {timeout_s:.0f} s")


def _stop_ui(server: subprocess.Popen) -> list[str]:
    """SIGTERM to `deepmine ui` (it stops its own process group); the command lines of any of
    its processes still alive afterwards (killed, then reported)."""
    try:
        tree = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=30)
    _, alive = psutil.wait_procs(tree, timeout=20)
    survivors = []
    for process in alive:
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE:
                survivors.append(" ".join(process.cmdline()[:4]))
            process.kill()
    return survivors


@pytest.fixture(scope="module")
def sweep_ui(tmp_path_factory) -> SweepUI:
    browser_path = chromium()
    from playwright.sync_api import sync_playwright

    box = Sandbox(tmp_path_factory.mktemp("ui-browser"))
    proc = run_cli("train", "-m", *box.overrides(*SWEEP), cwd=box.cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = box.runs()
    (parent,) = [r for r in runs if PARENT not in r.data.tags]
    children = [r for r in runs if PARENT in r.data.tags]
    assert len(children) == 4

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deepmine",
            "ui",
            "--tracking-uri",
            box.uri,
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=box.cwd,
        env=deepmine_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    shots = box.path / "screenshots"
    shots.mkdir()
    playwright = browser = None
    try:
        _wait_healthy(server, url)
        playwright = sync_playwright().start()
        browser = playwright.chromium.launch(executable_path=browser_path, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(30_000)
        yield SweepUI(url, page, shots, box.client(), parent.info.experiment_id, parent, children)
    finally:
        if browser is not None:
            browser.close()
        if playwright is not None:
            playwright.stop()
        survivors = _stop_ui(server)
        assert not survivors, f"outlived deepmine ui: {survivors}"


def _close_assistant(page) -> None:
    """MLflow 3 opens its chat assistant beside every page at first: it hides half the page."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count():
        close.first.click()


def _table_row(page, key: str) -> list[str]:
    """The cells of the compare page's row headed `key` (params, metrics and run details are
    tables with one column per run)."""
    header = page.locator("th.head-value", has_text=re.compile(rf"^\s*{re.escape(key)}\s*$"))
    row = page.locator("tr", has=header)
    assert row.count() == 1, f"{row.count()} rows headed {key!r} on the compare page"
    return [cell.strip() for cell in row.first.locator(".data-value").all_inner_texts()]


#: the compare page's metrics are two virtualized grids side by side (names | one column per
#: run), rows placed by their `top`; this reads the row of one metric, scrolling to it
_METRIC_ROW_JS = """(key) => {
    const link = [...document.querySelectorAll('a[title="Plot chart"]')]
        .find(a => a.textContent.trim() === key);
    const values = document.querySelectorAll('[role=grid]');
    if (!link) {
        for (const grid of values) grid.scrollTop += 200;
        return null;
    }
    const cell = link.parentElement;
    const pair = cell.closest('[role=grid]').parentElement.parentElement;
    const grid = pair.querySelectorAll('[role=grid]')[1];
    return [...grid.querySelectorAll('[role=rowgroup] > div')]
        .filter(c => c.style.top === cell.style.top)
        .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left))
        .map(c => c.textContent.trim());
}"""


def _metric_row(page, key: str) -> list[str]:
    for _ in range(20):
        row = page.evaluate(_METRIC_ROW_JS, key)
        if row is not None:
            return row
        page.wait_for_timeout(100)
    raise AssertionError(f"no metric {key!r} on the compare page")


def test_compare_shows_the_swept_params_and_the_metrics_of_the_sweep(sweep_ui):
    page = sweep_ui.page
    parent_name = sweep_ui.parent.info.run_name
    # the experiment's link as deepmine prints it: its training-run view
    page.goto(
        f"{sweep_ui.url}/#/experiments/{sweep_ui.experiment_id}/runs?workflowType=machine_learning"
    )
    page.get_by_text(parent_name, exact=True).first.wait_for()
    _close_assistant(page)
    sweep_ui.shot("1-experiment")

    # a sweep shows as one row, its parent; its children are under it
    parent_row = page.locator("[role=row]", has=page.get_by_text(parent_name, exact=True)).first
    children = {c.info.run_name: c for c in sweep_ui.children}
    assert not page.get_by_text(next(iter(children)), exact=True).count()
    parent_row.locator("button[data-component-id*=runnamecellrenderer]").click()
    for name in children:
        row = page.locator("[role=row]", has=page.get_by_text(name, exact=True)).first
        row.wait_for()
        row.locator("input.ag-checkbox-input").check()
    sweep_ui.shot("2-children-selected")

    page.get_by_test_id("runs-compare-button").click()
    page.get_by_text(f"Comparing {len(children)} Runs").wait_for()
    page.locator('a[title="Plot chart"]').first.wait_for()  # the metrics are there
    page.set_viewport_size({"width": 1600, "height": 5000})  # the whole page in one shot
    sweep_ui.shot("3-compare")

    # one column per child, in the order of the run ids at the top
    ids = _table_row(page, "Run ID:")
    by_id = {c.info.run_id: c for c in sweep_ui.children}
    assert sorted(ids) == sorted(by_id)
    columns = [by_id[i] for i in ids]
    assert _table_row(page, "Run Name:") == [c.info.run_name for c in columns]
    # the swept values, each under its run
    for key in ("optimizer.lr", "seed"):
        assert _table_row(page, key) == [c.data.params[key] for c in columns], key
    assert set(_table_row(page, "optimizer.lr")) == {"0.01", "0.001"}
    # the metrics, each value as recorded (the UI shows 3 decimals)
    for key in ("val/acc_best", "test/acc", "train/loss"):
        shown = [float(v) for v in _metric_row(page, key)]
        assert shown == pytest.approx([c.data.metrics[key] for c in columns], abs=6e-4), key

    # "Show diff only" leaves the params the runs differ in: the swept ones among them
    page.get_by_role("switch", name="Parameters - Show diff only").click()
    page.locator("th.head-value", has_text="net._target_").first.wait_for(state="detached")
    assert _table_row(page, "optimizer.lr") == [c.data.params["optimizer.lr"] for c in columns]
    sweep_ui.shot("4-compare-params-that-differ")


def _shows(page, text: str, what: str) -> None:
    """Wait until `text` is on the page (MLflow fills a run page in several requests)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_text(text, exact=True).first.wait_for()
    except PlaywrightTimeout:
        raise AssertionError(f"{what}: {text!r} is not on {page.url}") from None


def test_a_child_run_page_shows_its_datasets_model_and_registered_version(sweep_ui):
    page = sweep_ui.page
    page.set_viewport_size({"width": 1600, "height": 2400})
    child = sweep_ui.children[0]
    run_id = child.info.run_id
    page.goto(
        f"{sweep_ui.url}/#/experiments/{sweep_ui.experiment_id}/runs/{run_id}"
        "?workflowType=machine_learning"
    )
    page.get_by_text(run_id).first.wait_for()
    _close_assistant(page)
    _shows(page, child.info.run_name, "the run's name as its title")
    _shows(page, "optimizer.lr", "a param")
    _shows(page, "val/acc_best", "a metric")
    page.get_by_role("link", name=sweep_ui.parent.info.run_name).first.wait_for()  # parent run

    # MLflow's own records of the run, each where the UI shows it
    client = sweep_ui.client
    run = client.get_run(run_id)
    datasets = {
        tag.value: d.dataset for d in run.inputs.dataset_inputs for tag in d.tags
    }  # context (training, validation, test) -> dataset
    assert set(datasets) == {"training", "validation", "test"}, datasets
    training = datasets["training"]
    _shows(page, f"{training.name} ({training.digest})", "the training data, by name and digest")
    _shows(page, "training", "the dataset's context (MLflow capitalizes it)")
    models = client.search_logged_models(
        experiment_ids=[sweep_ui.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    assert len(models) == 1, models
    _shows(page, "Logged models (1)", "the run's logged model")
    _shows(page, models[0].name, "the logged model's name")
    (version,) = client.search_model_versions(f"run_id = '{run_id}'")
    assert version.name == REGISTERED
    _shows(page, REGISTERED, "the registered model")
    _shows(page, f"v{version.version}", "the registered model's version")
    page.wait_for_timeout(500)  # let the last requests paint before the screenshot
    sweep_ui.shot("5-child-run")
