"""The UI path in a real browser: Debian's chromium, driven by Playwright, on the test stack's Prefect UI.

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
def browser_page(stack_client):
    _ensure_playwright()
    executable = _ensure_chromium()
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="labelloop-chromium-")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
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
    assert deployment.parameters["select"]["batch_size"] != NEW_BATCH_SIZE

    page.goto(f"{stack_client.prefect_url}/deployments/deployment/{deployment.id}/run", wait_until="networkidle", timeout=90_000)
    field = form_field(page, "Batch Size (Optional)")
    assert field.input_value() == str(deployment.parameters["select"]["batch_size"])  # the form shows params.yaml's value
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
    assert run.parameters["select"]["batch_size"] == NEW_BATCH_SIZE
    assert run.parameters["train"] == deployment.parameters["train"]  # the other fields went through untouched

    page.goto(f"{stack_client.prefect_url}/runs/flow-run/{run_id}", wait_until="networkidle", timeout=90_000)
    page.get_by_text("Completed").first.wait_for(state="visible", timeout=60_000)
    newest = BatchStore(Workspace.at(stack_client.workspace)).list()[-1]
    assert newest.n_items == NEW_BATCH_SIZE and newest.params["batch_size"] == NEW_BATCH_SIZE
