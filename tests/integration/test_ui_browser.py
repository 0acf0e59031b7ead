"""The UI path in a real browser: Debian's chromium, driven by Playwright, on the test stack's Prefect UI and
on the embedded default (`labelloop ui`: the workspace's own background server, its deployments served).

Opens the cycle deployment's custom-run form, changes one typed field (select → Batch Size), submits,
and checks the run completes with that parameter (in the UI, in the API, and in the batch written).
On failure a screenshot is saved under a temp dir and its path printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import DEPLOYMENT_NAME

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

CHROMIUM = os.environ.get("LABELLOOP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NEW_BATCH_SIZE = 17


def _ensure_chromium() -> str:
    """Debian's chromium (never Playwright's browser download); installed with apt when missing (CI runs as root)."""
    if not Path(CHROMIUM).exists():
        if not shutil.which("apt-get") or os.geteuid() != 0:
            pytest.fail(f"{CHROMIUM} is missing and cannot be installed here: run `apt-get install -y chromium` as root")
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False,
                                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return CHROMIUM


def _ensure_playwright() -> None:
    """The Python driver only (its bundled node driver); no browser is downloaded."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        uv = Path(sys.executable).parent / "uv"
        command = [str(uv), "pip", "install", "--python", sys.executable, "playwright"] if uv.exists() else [
            sys.executable, "-m", "pip", "install", "playwright"]
        subprocess.run(command, check=True, capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def playwright_driver():
    """One Playwright driver for the module: its sync API runs an event loop, so two cannot be open at once."""
    _ensure_playwright()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser_page(stack_client, playwright_driver):
    executable = _ensure_chromium()
    profile = tempfile.mkdtemp(prefix="labelloop-chromium-")
    context = playwright_driver.chromium.launch_persistent_context(
        profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
    try:
        yield context.new_page()
    finally:
        context.close()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def screenshot_on_failure(browser_page, request):
    yield browser_page
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        out = Path(tempfile.mkdtemp(prefix="labelloop-ui-")) / f"{request.node.name}.png"
        try:
            browser_page.screenshot(path=str(out), full_page=True)
            print(f"\nscreenshot of the failing page: {out} (url {browser_page.url})")
        except Exception as error:  # noqa: BLE001
            print(f"\nno screenshot: {error}")


def _deployment_run_ids(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])))
    return [r.id for r in runs if not r.auto_scheduled]  # not the scheduler's runs


def form_field(page, title: str):
    """The input of the schema form property whose label reads exactly `title` (not "Max Batch Size")."""
    span = page.locator("span.schema-form-property__label", has_text=re.compile(rf"^{re.escape(title)}$"))
    span.first.wait_for(state="visible", timeout=90_000)
    assert span.count() == 1, f"{span.count()} form properties titled {title!r}"
    # The label's `for` names no element: take the input in the body of the property the title belongs to.
    field = span.locator("xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' p-label ')][1]"
                         "/div[contains(@class, 'p-label__body')]//input").first
    field.wait_for(state="visible", timeout=30_000)
    return field


def test_custom_run_from_the_ui_with_one_changed_parameter(stack_client, screenshot_on_failure):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterName

    from labelloop.batches import BatchStore
    from labelloop.workspace import Workspace

    page = screenshot_on_failure
    with get_client(sync_client=True) as client:
        [deployment] = client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["active_learning_cycle"])),
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[DEPLOYMENT_NAME])))
    workspace = Workspace.at(stack_client.workspace)
    assert deployment.parameters == {"workspace": str(workspace.root)}  # params.yaml is read when each run starts
    assert workspace.params().select.batch_size != NEW_BATCH_SIZE

    page.goto(f"{stack_client.prefect_url}/deployments/deployment/{deployment.id}/run", wait_until="networkidle", timeout=90_000)
    field = form_field(page, "Batch Size (Optional)")
    assert field.input_value() == ""  # empty = params.yaml's value at run time (no copy frozen at deploy time)
    field.fill(str(NEW_BATCH_SIZE))
    before = set(_deployment_run_ids(deployment.id))
    page.get_by_role("button", name="Submit").click()
    # The UI goes back to the deployment page (Runs tab); the new run is the one that was not there before.
    deadline = time.monotonic() + 60
    while not (new := set(_deployment_run_ids(deployment.id)) - before):
        assert time.monotonic() < deadline, "no flow run was created within 60 s of clicking Submit"
        time.sleep(1)
    assert len(new) == 1, new
    run_id = new.pop()

    deadline = time.monotonic() + 600
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                break
            assert time.monotonic() < deadline, f"UI-started run {run_id} not finished within 600 s: {run.state}"
            time.sleep(3)
    assert run.state.is_completed(), f"UI-started run ended {run.state.type}: {run.state.message}\n{stack_client.logs()}"
    assert run.deployment_id == deployment.id
    # Only the one field filled in is an override; the sections left empty arrive as {} (params.yaml's values).
    assert {name: value for name, value in run.parameters.items() if value != {}} == {
        "workspace": str(workspace.root), "select": {"batch_size": NEW_BATCH_SIZE}}

    page.goto(f"{stack_client.prefect_url}/runs/flow-run/{run_id}", wait_until="networkidle", timeout=90_000)
    page.get_by_text("Completed").first.wait_for(state="visible", timeout=60_000)
    newest = BatchStore(workspace).list()[-1]
    assert newest.n_items == NEW_BATCH_SIZE and newest.params["batch_size"] == NEW_BATCH_SIZE
    assert newest.strategy == workspace.params().select.strategy


# -- the embedded default: `labelloop ui` on a workspace's own server, no stack -------------------------------
LABELLOOP = str(Path(sys.executable).parent / "labelloop")
UI_BATCH_SIZE = 17


def _installed_chromium() -> str:
    """Debian's chromium, never downloaded here: `make test` installs it (apt-get install -y chromium)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium; LABELLOOP_CHROMIUM names another): "
                    "the browser test of `labelloop ui` needs it")
    pytest.importorskip("playwright.sync_api", reason="the Playwright driver (pip install playwright; no browser download)")
    return CHROMIUM


@pytest.fixture
def served_workspace(workspace):
    """`labelloop ui` run as a user runs it: the workspace's background server + its deployments served."""
    env = {k: v for k, v in os.environ.items() if k not in (  # its own servers: not the real stack's of another test
        "PREFECT_API_URL", "LABELLOOP_PREFECT_SERVER", "PREFECT_HOME", "LABELLOOP_TRACKING_URI", "MLFLOW_TRACKING_URI")}
    started = time.monotonic()
    result = subprocess.run([LABELLOOP, "ui", "-w", str(workspace.root)], env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        url = re.search(r"^Prefect UI: (http://127\.0\.0\.1:\d+)", result.stdout, re.M).group(1)
        form = re.search(r"^custom cycle run .*: (http://\S+/run)$", result.stdout, re.M).group(1)
        print(f"\nlabelloop ui: {time.monotonic() - started:.0f} s to a served UI at {url}")
        yield workspace, url, form
    finally:
        stopped = subprocess.run([LABELLOOP, "server", "stop", "-w", str(workspace.root)], env=env, capture_output=True,
                                 text=True, timeout=120, check=False)
        print(stopped.stdout)


def _api(url: str, path: str, body: dict | None = None):
    import json
    import urllib.request

    request = urllib.request.Request(f"{url}/api{path}", data=None if body is None else json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_custom_cycle_run_from_labelloop_ui_with_one_changed_parameter(served_workspace, playwright_driver, tmp_path):
    """The issue-15 path on the embedded default: `labelloop ui`, Run → Custom run on the cycle, select → Batch
    Size changed, Submit; the run completes with that one override and params.yaml for everything else."""
    from labelloop.batches import BatchStore

    executable = _installed_chromium()
    workspace, url, form_url = served_workspace
    deployment_id = form_url.rsplit("/", 2)[-2]
    deployment = _api(url, f"/deployments/{deployment_id}")
    assert deployment["parameters"] == {"workspace": str(workspace.root)}  # nothing frozen: params.yaml is read per run
    assert workspace.params().select.batch_size != UI_BATCH_SIZE

    browser = playwright_driver.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(form_url, wait_until="networkidle", timeout=90_000)
        field = form_field(page, "Batch Size (Optional)")
        assert field.input_value() == ""  # empty = params.yaml's value when the run starts, not a stale copy
        field.fill(str(UI_BATCH_SIZE))
        failed: list[str] = []  # the page's API calls that failed, to say why if no run appears
        page.on("response", lambda r: failed.append(f"{r.status} {r.request.method} {r.url}")
                if "/api/" in r.url and r.status >= 400 else None)
        page.get_by_role("button", name="Submit").click()
        submitted = time.monotonic()
        deadline = submitted + 60
        while not (runs := _api(url, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}})):
            assert time.monotonic() < deadline, f"no flow run was created within 60 s of clicking Submit; failed calls: {failed}"
            time.sleep(1)
        [run] = runs
        deadline = submitted + 900
        final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
        while (run := _api(url, f"/flow_runs/{run['id']}"))["state"]["type"] not in final:
            assert time.monotonic() < deadline, f"UI-started run not finished within 900 s: {run['state']}"
            time.sleep(2)
        print(f"custom run from Submit to {run['state']['type']}: {time.monotonic() - submitted:.0f} s "
              f"(created {run['created']}, started {run['start_time']}, ended {run['end_time']})")
        page.goto(f"{url}/runs/flow-run/{run['id']}", wait_until="networkidle", timeout=90_000)
        page.get_by_text("Completed").first.wait_for(state="visible", timeout=60_000)
    except Exception:
        shot = tmp_path / "labelloop-ui.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nscreenshot of the failing page: {shot} (url {page.url})")
        raise
    finally:
        browser.close()
    log = (workspace.prefect_home / "labelloop-ui.log").read_text(errors="replace")[-3000:]
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{log}"
    # The form sends the sections left empty as {}: nothing but the one field overrides params.yaml.
    given = {name: value for name, value in run["parameters"].items() if value != {}}
    assert given == {"workspace": str(workspace.root), "select": {"batch_size": UI_BATCH_SIZE}}
    newest = BatchStore(workspace).list()[-1]
    assert newest.n_items == UI_BATCH_SIZE and newest.strategy == workspace.params().select.strategy
    artifacts = _api(url, "/artifacts/filter", {"artifacts": {"key": {"any_": ["cycle"]}}})
    assert [a["flow_run_id"] for a in artifacts] == [run["id"]]  # the summary sits on the parent run
