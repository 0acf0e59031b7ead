"""`labelloop model rollback`, `model history`, `lineage`, and the one-line errors of the CLI, through
Typer's runner against real workspaces (real MLflow store, real git + DVC registry)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from labelloop.adapters import tracking
from labelloop.flows.cli import app
from tests.stages import test_gate
from tests.stages.test_gate import NAME

# The gate tests' fixtures, bound here so pytest finds them (an import would be shadowed by the parameters).
three_champions_template = test_gate.three_champions_template
three_champions = test_gate.three_champions

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_error_line(result, *fragments: str) -> str:
    """Exit code 2, no traceback, and stderr is exactly one `error: ...` line containing every fragment."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not an MLflow/Python traceback
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0] != "error: ", result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_model_rollback_twice_steps_back_twice_never_forward(three_champions):
    ws = str(three_champions.root)
    first = cli("model", "rollback", "--reason", "bad labels in batch-0002", "-w", ws)
    assert first.exit_code == 0, first.output
    assert "champion is now version 2 (was 3)" in first.output
    second = cli("model", "rollback", "--reason", "batch-0001 too", "-w", ws)
    assert second.exit_code == 0, second.output
    assert "champion is now version 1 (was 2)" in second.output
    assert tracking.alias_version(three_champions, NAME, tracking.CHAMPION) == "1"
    third = cli("model", "rollback", "-w", ws)
    assert_one_error_line(third, "no earlier champion", "versions 1–3", "champion=1")
    assert tracking.alias_version(three_champions, NAME, tracking.CHAMPION) == "1"


def test_model_history_lists_every_champion_newest_first_with_why_and_data_version(three_champions):
    ws = str(three_champions.root)
    assert cli("model", "rollback", "--reason", "bad labels in batch-0002", "-w", ws).exit_code == 0
    result = cli("model", "history", "-w", ws)
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert "newest first" in header
    assert [row[1:].split()[1] for row in rows] == ["2", "3", "2", "1"]
    assert [row.startswith("*") for row in rows] == [True, False, False, False]  # only the newest is current
    assert "rollback" in rows[0] and "bad labels in batch-0002" in rows[0] and "data-v2" in rows[0] and "replaced 3" in rows[0]
    assert "gate" in rows[1] and "data-v3" in rows[1] and "min_delta" in rows[1]  # the gate's reasons
    assert "data-v1" in rows[3]


def test_model_history_never_imports_prefect(three_champions):
    """`model history` is a quick look: it must not pay for (or start) Prefect."""
    code = ("import sys; from typer.testing import CliRunner; from labelloop.flows.cli import app; "
            f"r = CliRunner().invoke(app, ['model', 'history', '-w', {str(three_champions.root)!r}]); "
            "assert r.exit_code == 0, r.output; print('prefect' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_lineage_shows_why_a_version_was_rolled_back_and_why_its_successor_became_champion(three_champions):
    ws = str(three_champions.root)
    assert cli("model", "rollback", "--reason", "bad labels in batch-0002", "-w", ws).exit_code == 0
    demoted = cli("lineage", "3", "-w", ws)
    assert demoted.exit_code == 0, demoted.output
    record = yaml.safe_load(demoted.stdout)["champion"]
    assert record["current"] is False
    [rollback] = record["rolled_back"]
    assert rollback["reason"] == "bad labels in batch-0002" and rollback["champion_after"] == "2" and rollback["at"]
    restored = yaml.safe_load(cli("lineage", "-w", ws).stdout)  # the champion, by default
    assert restored["version"] == "2" and restored["champion"]["current"] is True
    became = [(c["by"], c["reason"]) for c in restored["champion"]["became_champion"]]
    assert became[-1] == ("rollback", "bad labels in batch-0002")


@pytest.mark.parametrize("command, fragment", [
    (["model", "rollback", "99"], "no version '99'"),
    (["lineage", "99"], "no version '99'"),
    (["lineage", "no-such-alias"], "no version or alias 'no-such-alias'"),
], ids=["rollback-99", "lineage-99", "lineage-alias"])
def test_an_unknown_version_or_alias_is_one_error_line_naming_what_exists(three_champions, command, fragment):
    result = cli(*command, "-w", three_champions.root)
    assert_one_error_line(result, fragment, "versions 1–3", "champion=3", "previous-champion=2")
    assert tracking.alias_version(three_champions, NAME, tracking.CHAMPION) == "3"


def test_a_workspace_without_models_says_so_in_one_line(workspace):
    assert_one_error_line(cli("lineage", "-w", workspace.root), "no registered versions yet")
    assert_one_error_line(cli("model", "rollback", "-w", workspace.root), "no champion to roll back")
    history = cli("model", "history", "-w", workspace.root)
    assert history.exit_code == 0 and "no champion yet" in history.output


def test_a_cycle_with_a_bad_override_is_one_error_line_without_a_stray_empty_one(workspace):
    result = cli("cycle", "-w", workspace.root, "--set", "select.strategy=nope")
    assert_one_error_line(result, "select.strategy", "unknown strategy 'nope'", "margin")


def test_init_with_a_bad_override_is_one_error_line(tmp_path):
    result = cli("init", tmp_path / "ws", "--set", "train.n_estimators=-1", "--set", "select.strategy=nope")
    line = assert_one_error_line(result, "train.n_estimators", "select.strategy")
    assert line.startswith("error: invalid configuration in params: ")
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("command, fragments", [
    (["data", "readmit", "batch-9999-nope"], ["'batch-9999-nope'"]),
    (["data", "rollback", "data-v99"], ["data-v99", "data-v1"]),
], ids=["readmit-unknown-batch", "data-rollback-unknown-tag"])
def test_unknown_batch_ids_and_tags_are_one_error_line(workspace, command, fragments):
    assert_one_error_line(cli(*command, "-w", workspace.root), *fragments)
