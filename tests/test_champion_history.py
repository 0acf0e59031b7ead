"""The champion history on a real MLflow store: every move of `champion` is recorded (by the gate, a
rollback, or a resumed gate), rollback steps back along it and never forward, and a store written
before the history existed still works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from labelloop.stages import dataset
from labelloop.adapters import tracking
from labelloop.config import GateParams, TrainParams, dump_params
from labelloop.core.faults import ENV
from labelloop.core.io import write_text
from tests.conftest import clone_workspace
from tests.stages.test_dataset import _fake_imported_batch

# A name of its own, written into the workspaces' params.yaml, so the CLI reads the same model.
NAME = "champion-history-test"
FAST = TrainParams(model_name=NAME, n_estimators=20, max_depth=3)
REPO = Path(__file__).resolve().parents[1]


def gate_promote(ws, rules: GateParams = GateParams(min_delta=-1.0, min_new_labels=0)) -> str:
    """Train on the current data version and let the real gate promote it (as the gate stage does)."""
    trained = tracking.train_challenger(ws, FAST)
    decision = tracking.evaluate_gate(ws, NAME, rules)
    assert decision.promote, decision.reasons
    tracking.record_decision(ws, NAME, decision)
    tracking.promote(ws, NAME, decision.challenger_version, "; ".join(decision.reasons))
    return trained.version


def build_three_champions(ws) -> list[str]:
    """Versions 1, 2, 3 on data-v1, data-v2, data-v3, each promoted by the gate in turn."""
    versions = [gate_promote(ws)]
    for number in (1, 2):
        _fake_imported_batch(ws, f"batch-000{number}-aaaaaa", n=40, offset=40 * number)
        dataset.update_dataset(ws)
        versions.append(gate_promote(ws))
    return versions


@pytest.fixture(scope="module")
def three_champions_template(workspace_template, tmp_path_factory):
    ws = clone_workspace(workspace_template, tmp_path_factory.mktemp("champions") / "ws")
    write_text(ws.params_path, dump_params(ws.params().with_overrides(train=FAST)))
    assert build_three_champions(ws) == ["1", "2", "3"]
    return ws


@pytest.fixture
def three_champions(three_champions_template, tmp_path):
    """A private copy of a workspace whose champions were 1, then 2, then 3 (all by the gate)."""
    return clone_workspace(three_champions_template, tmp_path / "ws")


def test_each_gate_promotion_is_recorded_with_when_why_and_its_data_version(three_champions):
    history = tracking.champion_history(three_champions, NAME)
    assert [(c.version, c.by, c.data_tag, c.replaced) for c in history] == [
        ("1", "gate", "data-v1", None), ("2", "gate", "data-v2", "1"), ("3", "gate", "data-v3", "2")]
    assert all(c.recorded and c.at for c in history)
    tags = tracking.client(three_champions).get_model_version(NAME, "3").tags
    assert history[-1].reason == tags["gate.reasons"].replace(" | ", "; ")  # the gate's own reasons
    assert "min_delta" in history[-1].reason


def test_rollback_steps_back_along_the_history_and_never_forward(three_champions):
    ws = three_champions
    assert tracking.rollback(ws, NAME, "bad labels in batch-0002") == ("3", "2")
    # previous-champion stays "the version the current champion replaced".
    assert tracking.alias_version(ws, NAME, tracking.PREVIOUS) == "3"
    assert tracking.rollback(ws, NAME, "batch-0001 was mislabelled too") == ("2", "1")
    assert tracking.alias_version(ws, NAME, tracking.CHAMPION) == "1"
    assert tracking.alias_version(ws, NAME, tracking.PREVIOUS) == "2"
    with pytest.raises(tracking.UnknownModelVersion, match="no earlier champion"):
        tracking.rollback(ws, NAME, "once more")
    assert tracking.alias_version(ws, NAME, tracking.CHAMPION) == "1"  # the refused rollback changed nothing
    history = tracking.champion_history(ws, NAME)
    assert [(c.version, c.by, c.replaced, c.reason) for c in history[3:]] == [
        ("2", "rollback", "3", "bad labels in batch-0002"), ("1", "rollback", "2", "batch-0001 was mislabelled too")]
    assert set(tracking.rolled_back(history)) == {"3", "2"}


def test_after_a_rollback_the_next_gate_promotion_is_stepped_back_from_to_the_rollback_target(three_champions):
    ws = three_champions
    tracking.rollback(ws, NAME, "bad labels in batch-0002")  # 3 → 2
    _fake_imported_batch(ws, "batch-0003-aaaaaa", n=40, offset=200)
    dataset.update_dataset(ws)
    fourth = gate_promote(ws)
    assert fourth == "4"
    assert tracking.rollback(ws, NAME, "version 4 misbehaves") == ("4", "2")  # not 3: it was rolled back


def test_rollback_to_an_earlier_champion_by_number_drops_the_ones_after_it(three_champions):
    ws = three_champions
    assert tracking.rollback(ws, NAME, "back to the first", "1") == ("3", "1")
    with pytest.raises(tracking.UnknownModelVersion, match="no earlier champion"):
        tracking.rollback(ws, NAME, "and further")  # not forward to 2
    assert tracking.rollback(ws, NAME, "again", "1") == ("1", "1")  # already champion: a no-op, nothing recorded
    assert len(tracking.champion_history(ws, NAME)) == 4


def test_a_rollback_to_a_version_that_does_not_exist_names_the_ones_that_do(three_champions):
    with pytest.raises(tracking.UnknownModelVersion) as error:
        tracking.rollback(three_champions, NAME, "typo", "99")
    assert "no version '99'" in str(error.value) and "versions 1–3" in str(error.value)
    assert "champion=3" in str(error.value) and "previous-champion=2" in str(error.value)
    assert tracking.alias_version(three_champions, NAME, tracking.CHAMPION) == "3"


def test_resume_gate_never_re_promotes_a_rolled_back_version(three_champions):
    ws = three_champions
    tracking.rollback(ws, NAME, "bad labels")  # the challenger (3, decision promote) is demoted
    assert tracking.alias_version(ws, NAME, tracking.CHALLENGER) == "3"
    # Even without the demoted version's tag, the history alone keeps it demoted.
    tracking.client(ws).delete_model_version_tag(NAME, "3", "rolled_back")
    assert tracking.resume_gate(ws, NAME) is None
    assert tracking.alias_version(ws, NAME, tracking.CHAMPION) == "2"


def test_a_gate_killed_right_after_moving_the_alias_gets_its_record_from_the_next_resume(three_champions):
    """SIGKILL between the champion alias move and its history record; the next cycle's resume_gate
    writes the record (once), so the history still names every champion."""
    ws = three_champions
    _fake_imported_batch(ws, "batch-0003-aaaaaa", n=40, offset=200)
    dataset.update_dataset(ws)
    tracking.train_challenger(ws, FAST)
    decision = tracking.evaluate_gate(ws, NAME, GateParams(min_delta=-1.0, min_new_labels=0))
    tracking.record_decision(ws, NAME, decision)
    code = ("import sys; from labelloop.adapters import tracking; from labelloop.workspace import Workspace; "
            "tracking.promote(Workspace.at(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])")
    killed = subprocess.run([sys.executable, "-c", code, str(ws.root), NAME, decision.challenger_version, "gate passed"],
                            cwd=REPO, env=dict(os.environ, **{ENV: "gate.after_champion"}, PYTHONPATH=str(REPO)),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert tracking.alias_version(ws, NAME, tracking.CHAMPION) == "4"
    shown = tracking.champion_history(ws, NAME)
    assert (shown[-1].version, shown[-1].by, shown[-1].recorded) == ("4", "unrecorded", False)
    assert tracking.resume_gate(ws, NAME) is None  # nothing to promote, only the record to write
    history = tracking.champion_history(ws, NAME)
    assert [(c.version, c.by, c.replaced, c.recorded, c.data_tag) for c in history[3:]] == [("4", "resume", "3", True, "data-v4")]
    assert history[-1].reason == "; ".join(decision.reasons)
    tracking.promote(ws, NAME, "4", "a gate rerun")  # idempotent: no second record
    assert len(tracking.champion_history(ws, NAME)) == 4


def test_a_store_older_than_the_history_derives_it_from_the_aliases_and_rolls_back(three_champions):
    ws = three_champions
    mlflow_client = tracking.client(ws)
    model = mlflow_client.get_registered_model(NAME)
    for key in model.tags:  # what a workspace made before the history existed holds: aliases only
        if key.startswith(tracking.CHAMPION_HISTORY_TAG):
            mlflow_client.delete_registered_model_tag(NAME, key)
    derived = tracking.champion_history(ws, NAME)
    assert [(c.version, c.by, c.recorded, c.data_tag) for c in derived] == [
        ("2", "derived", False, "data-v2"), ("3", "derived", False, "data-v3")]
    assert tracking.rollback(ws, NAME, "bad labels") == ("3", "2")
    history = tracking.champion_history(ws, NAME)
    assert [(c.version, c.by, c.recorded) for c in history] == [
        ("2", "derived", True), ("3", "derived", True), ("2", "rollback", True)]
