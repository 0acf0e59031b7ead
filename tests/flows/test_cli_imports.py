"""The commands a person waits on answer without Prefect or the ML stack: each runs in a fresh process
and reports which heavy packages it imported (none may be).

Figures (seconds, ratio to importing pandas, pyarrow and xgboost): benchmarks/command_latency.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("mlflow", "sklearn", "xgboost", "great_expectations", "prefect", "matplotlib", "sqlalchemy", "dvc", "skops")

CHILD = """
import json, sys
from labelloop.flows.cli import app
try:
    app(sys.argv[2:], prog_name="labelloop")
except SystemExit as exit:
    code = exit.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1].split(",")))
print("\\nIMPORTED " + json.dumps({"code": code, "heavy": heavy}))
"""


def _run(*args: str) -> tuple[dict, str]:
    result = subprocess.run([sys.executable, "-c", CHILD, ",".join(HEAVY), *args], capture_output=True, text=True,
                            timeout=300, check=False)
    line = next((x for x in result.stdout.splitlines() if x.startswith("IMPORTED ")), None)
    assert line is not None, result.stdout + result.stderr
    return json.loads(line.removeprefix("IMPORTED ")), result.stdout


@pytest.fixture(scope="module")
def champion_workspace(workspace_template, tmp_path_factory):
    """A workspace whose first model is trained and champion (no Prefect: the stage functions directly)."""
    from labelloop.stages import gate, train
    from tests.conftest import clone_workspace

    ws = clone_workspace(workspace_template, tmp_path_factory.mktemp("cli-imports") / "ws")
    params = ws.params()
    result = train.train_challenger(ws, params.train)
    decision = gate.evaluate_gate(ws, params.train.model_name, params.gate)
    gate.record_decision(ws, params.train.model_name, decision, params.gate)
    gate.promote(ws, params.train.model_name, result.version, "; ".join(decision.reasons))
    return ws


@pytest.mark.slow  # trains a model, then five fresh processes
@pytest.mark.parametrize("command", [["status"], ["lineage"], ["lineage", "champion"], ["data", "versions"],
                                     ["server", "status"], ["strategies"], ["--help"]])
def test_read_only_commands_import_no_heavy_package(champion_workspace, command):
    args = [*command, "-w", str(champion_workspace.root)] if command[0] in ("status", "lineage", "data", "server") else command
    report, output = _run(*args)
    assert report["code"] in (0, None), output
    assert report["heavy"] == [], output
    if command[0] == "status":
        assert "champion: 1" in output
    if command[0] == "lineage":
        assert "version: '1'" in output and "- champion" in output


def test_the_check_sees_a_heavy_import():
    report, _ = _run("simulate", "--help")  # help only: nothing heavy either
    assert report["heavy"] == []
    code = CHILD.replace("from labelloop.flows.cli import app", "import xgboost\nfrom labelloop.flows.cli import app")
    result = subprocess.run([sys.executable, "-c", code, ",".join(HEAVY), "--help"], capture_output=True, text=True,
                            timeout=300, check=False)
    assert '"xgboost"' in result.stdout.rsplit("IMPORTED ", 1)[1]


def test_the_stage_flows_import_no_model_library_until_a_stage_needs_one():
    # A stage command imports every stage's module (Prefect loads the flows); scikit-learn, XGBoost, MLflow,
    # Great Expectations and matplotlib load only inside the stage that uses them (~2 s each per process).
    child = ("import sys, labelloop.flows.stages, labelloop.flows.cycle; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1].split(','))))")
    result = subprocess.run([sys.executable, "-c", child, ",".join(HEAVY)], capture_output=True, text=True, timeout=300,
                            check=True)
    assert result.stdout.split("\n")[-2] == "['prefect']", result.stdout + result.stderr
