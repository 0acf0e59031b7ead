"""The gate stage on a real MLflow store (SQLite in the workspace): decide, record, move the alias; the
champion history it keeps — every move of `champion` recorded (by the gate, a rollback, or a resumed gate),
rollback stepping back along it and never forward; and the stop rules over a workspace: the fixed stop
set, the rules over the cycle history, halting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from labelloop.adapters import tracking, versioning
from labelloop.columns import ITEM_ID, PREDICTED, PREDICTION_ID, TS
from labelloop.config import GateParams, StopParams, TrainParams, dump_params
from labelloop.core.faults import ENV
from labelloop.core.io import write_parquet, write_text
from labelloop.domain.cycle import CycleRecord
from labelloop.domain.gate import MCNEMAR
from labelloop.history import append_history
from labelloop.stages import dataset, gate, train
from labelloop.stages.production import append_predictions
from tests.conftest import clone_workspace
from tests.stages.test_dataset import _fake_imported_batch

FAST = TrainParams(n_estimators=30, max_depth=3)
# The champion history's workspaces use a model name of their own, written into their params.yaml, so
# the CLI tests (tests/flows/test_cli_models.py) read the same model.
NAME = "champion-history-test"
CHAMPIONS_TRAIN = TrainParams(model_name=NAME, n_estimators=20, max_depth=3)
REPO = Path(__file__).resolve().parents[2]


def test_gate_promotes_moves_previous_champion_and_the_model_serves(workspace):
    first = train.train_challenger(workspace, FAST)
    decision = gate.evaluate_gate(workspace, FAST.model_name, GateParams())
    assert decision.promote
    gate.record_decision(workspace, FAST.model_name, decision)
    gate.promote(workspace, FAST.model_name, decision.challenger_version)
    _fake_imported_batch(workspace, "batch-0001-aaaaaa", n=60)
    dataset.update_dataset(workspace)
    second = train.train_challenger(workspace, FAST)
    decision = gate.evaluate_gate(workspace, FAST.model_name, GateParams(min_delta=-1.0))
    assert decision.promote and decision.champion_version == first.version
    gate.record_decision(workspace, FAST.model_name, decision)
    gate.promote(workspace, FAST.model_name, second.version)
    assert tracking.alias_version(workspace, FAST.model_name, tracking.CHAMPION) == second.version
    assert tracking.alias_version(workspace, FAST.model_name, tracking.PREVIOUS) == first.version
    tags = tracking.client(workspace).get_run(second.run_id).data.tags
    assert tags["gate.decision"] == "promote" and "min_delta" in tags["gate.reasons"]
    version, model = tracking.champion_model(workspace, FAST.model_name)
    holdout = pd.read_parquet(workspace.holdout_path)
    assert version == second.version
    assert model.predict_proba(holdout[workspace.schema().feature_columns]).shape[1] == len(workspace.schema().class_names)


def test_gate_without_a_challenger_is_a_clear_error(workspace):
    with pytest.raises(RuntimeError, match="no 'challenger'"):
        gate.evaluate_gate(workspace, FAST.model_name, GateParams())


def test_challenger_with_better_accuracy_but_a_collapsed_class_recall_is_refused(workspace):
    """Real MLflow, real registry: a model that never saw one class beats a tiny-data champion on
    accuracy, yet the recall guardrail refuses it and says which class."""
    champion = train.train_challenger(workspace, FAST)
    gate.promote(workspace, FAST.model_name, champion.version)
    holdout = pd.read_parquet(workspace.holdout_path)
    oracle = pd.read_parquet(workspace.simulator_dir / "oracle.parquet")
    traffic = pd.read_parquet(workspace.simulator_dir / "traffic.parquet").merge(oracle, on=ITEM_ID)
    recalls = tracking.model_metrics(workspace, FAST.model_name, champion.version).class_recall
    share = holdout.label.value_counts(normalize=True)
    # A small class the champion already recognises: dropping it costs little accuracy, much recall.
    dropped_class = min((c for c in recalls if recalls[c] >= 0.5), key=lambda c: share[c])
    more = traffic[traffic.label != dropped_class].head(1500).assign(batch_id="batch-x", source="simulated")
    labeled = pd.read_parquet(workspace.labeled_path)
    labeled = labeled[labeled.label != dropped_class]
    pd.concat([labeled, more[labeled.columns]], ignore_index=True).to_parquet(workspace.labeled_path)
    versioning.commit_version(workspace.registry_dir, [workspace.labeled_path], "data without one class")
    challenger = train.train_challenger(workspace, FAST)
    assert challenger.metrics["accuracy"] > champion.metrics["accuracy"]
    decision = gate.evaluate_gate(workspace, FAST.model_name, GateParams(max_class_recall_drop=0.2))
    assert not decision.promote
    assert any(repr(dropped_class) in r and "max_class_recall_drop" in r for r in decision.reasons)
    gate.record_decision(workspace, FAST.model_name, decision)
    assert tracking.alias_version(workspace, FAST.model_name, tracking.CHAMPION) == champion.version
    tags = tracking.client(workspace).get_run(challenger.run_id).data.tags
    assert tags["gate.decision"] == "reject" and dropped_class in tags["gate.reasons"]


# -- the paired test on the holdout rows ---------------------------------------------------------

def _counting_loads(monkeypatch) -> list[str]:
    """Record each version whose model the gate loads (to predict the holdout)."""
    loaded: list[str] = []
    real = tracking.load_model

    def load(ws, name, version):
        loaded.append(str(version))
        return real(ws, name, version)

    monkeypatch.setattr(tracking, "load_model", load)
    return loaded


def test_the_gate_tests_both_models_on_the_holdout_rows_and_predicts_each_version_once(workspace, monkeypatch):
    first = train.train_challenger(workspace, FAST)
    gate.promote(workspace, FAST.model_name, first.version)
    _fake_imported_batch(workspace, "batch-0001-aaaaaa", n=300)
    dataset.update_dataset(workspace)
    second = train.train_challenger(workspace, FAST)
    loaded = _counting_loads(monkeypatch)
    decision = gate.evaluate_gate(workspace, FAST.model_name, GateParams())
    holdout = pd.read_parquet(workspace.holdout_path)
    [evidence] = decision.evidence
    assert (evidence.rows, evidence.n, evidence.test, evidence.metric) == ("holdout", len(holdout), MCNEMAR, "accuracy")
    # The per-row predictions reproduce the accuracies train recorded on the same holdout.
    assert evidence.difference == pytest.approx(second.metrics["accuracy"] - first.metrics["accuracy"])
    assert decision.promote == evidence.passed
    assert f"McNemar exact on {len(holdout):,} holdout rows" in decision.reasons[0]
    assert sorted(loaded) == ["1", "2"]
    assert len(list((workspace.state_dir / "gate").glob("*.parquet"))) == 2

    # A rerun reads both versions' holdout probabilities from state/gate: no model is loaded again.
    assert gate.evaluate_gate(workspace, FAST.model_name, GateParams()).evidence == decision.evidence
    assert sorted(loaded) == ["1", "2"]
    gate.record_decision(workspace, FAST.model_name, decision)
    recorded = json.loads(tracking.client(workspace).get_run(second.run_id).data.tags["gate.evidence"])
    assert recorded[0]["n"] == len(holdout) and recorded[0]["test"] == MCNEMAR

    # Next cycle: the new champion's predictions are already kept; only the new challenger is predicted,
    # and the first version's file is dropped.
    gate.promote(workspace, FAST.model_name, second.version)
    _fake_imported_batch(workspace, "batch-0002-aaaaaa", n=300, offset=300)
    dataset.update_dataset(workspace)
    third = train.train_challenger(workspace, FAST)
    gate.evaluate_gate(workspace, FAST.model_name, GateParams(primary_metric="macro_f1"))
    assert sorted(loaded) == ["1", "2", "3"]
    kept = sorted(p.name.split("-v")[1].split("-")[0] for p in (workspace.state_dir / "gate").glob("*.parquet"))
    assert kept == [second.version, third.version]


def test_a_retrain_on_the_same_data_is_not_a_gain_but_passes_non_inferiority(workspace):
    """Same labelled set, another seed: superiority finds nothing to promote; non_inferiority deploys it."""
    first = train.train_challenger(workspace, FAST)
    gate.promote(workspace, FAST.model_name, first.version)
    retrained = train.train_challenger(workspace, FAST.model_copy(update={"random_state": 7}))
    assert retrained.version != first.version and retrained.data_tag == first.data_tag
    refused = gate.evaluate_gate(workspace, FAST.model_name, GateParams())
    assert not refused.promote and refused.reasons[0].endswith("→ reject") and "min_delta 0.0" in refused.reasons[0]
    accepted = gate.evaluate_gate(workspace, FAST.model_name, GateParams(mode="non_inferiority"))
    assert accepted.promote and "non_inferiority_margin 0.01" in accepted.reasons[0]
    assert accepted.reasons[0].endswith("→ pass")


def test_a_champion_that_cannot_be_loaded_is_compared_on_its_recorded_metrics_and_says_so(workspace, monkeypatch):
    first = train.train_challenger(workspace, FAST)
    gate.promote(workspace, FAST.model_name, first.version)
    _fake_imported_batch(workspace, "batch-0001-aaaaaa", n=60)
    dataset.update_dataset(workspace)
    train.train_challenger(workspace, FAST)

    def old(ws, name, version):
        raise tracking.IncompatibleModel(f"model {name!r} version {version} was stored by an older labelloop")

    monkeypatch.setattr(tracking, "load_model", old)
    decision = gate.evaluate_gate(workspace, FAST.model_name, GateParams(min_delta=-1.0))
    assert decision.promote and decision.evidence == []
    assert "untested" in decision.reasons[0] and any("no paired test" in r and "older labelloop" in r for r in decision.reasons)


# -- the champion history: every move recorded, rollback, resume ----------------------------------

PROMOTE_ANY = GateParams(min_delta=-1.0, min_new_labels=0)  # rules every trained challenger passes


def gate_promote(ws, rules: GateParams = PROMOTE_ANY) -> str:
    """Train on the current data version and let the real gate promote it (as the gate stage does)."""
    trained = train.train_challenger(ws, CHAMPIONS_TRAIN)
    decision = gate.evaluate_gate(ws, NAME, rules)
    assert decision.promote, decision.reasons
    gate.record_decision(ws, NAME, decision)
    gate.promote(ws, NAME, decision.challenger_version, "; ".join(decision.reasons))
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
    write_text(ws.params_path, dump_params(ws.params().with_overrides(train=CHAMPIONS_TRAIN)))
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
    assert gate.rollback(ws, NAME, "bad labels in batch-0002") == ("3", "2")
    # previous-champion stays "the version the current champion replaced".
    assert tracking.alias_version(ws, NAME, tracking.PREVIOUS) == "3"
    assert gate.rollback(ws, NAME, "batch-0001 was mislabelled too") == ("2", "1")
    assert tracking.alias_version(ws, NAME, tracking.CHAMPION) == "1"
    assert tracking.alias_version(ws, NAME, tracking.PREVIOUS) == "2"
    with pytest.raises(tracking.UnknownModelVersion, match="no earlier champion"):
        gate.rollback(ws, NAME, "once more")
    assert tracking.alias_version(ws, NAME, tracking.CHAMPION) == "1"  # the refused rollback changed nothing
    history = tracking.champion_history(ws, NAME)
    assert [(c.version, c.by, c.replaced, c.reason) for c in history[3:]] == [
        ("2", "rollback", "3", "bad labels in batch-0002"), ("1", "rollback", "2", "batch-0001 was mislabelled too")]
    assert set(gate.rolled_back(history)) == {"3", "2"}


def test_after_a_rollback_the_next_gate_promotion_is_stepped_back_from_to_the_rollback_target(three_champions):
    ws = three_champions
    gate.rollback(ws, NAME, "bad labels in batch-0002")  # 3 → 2
    _fake_imported_batch(ws, "batch-0003-aaaaaa", n=40, offset=200)
    dataset.update_dataset(ws)
    fourth = gate_promote(ws)
    assert fourth == "4"
    assert gate.rollback(ws, NAME, "version 4 misbehaves") == ("4", "2")  # not 3: it was rolled back


def test_rollback_to_an_earlier_champion_by_number_drops_the_ones_after_it(three_champions):
    ws = three_champions
    assert gate.rollback(ws, NAME, "back to the first", "1") == ("3", "1")
    with pytest.raises(tracking.UnknownModelVersion, match="no earlier champion"):
        gate.rollback(ws, NAME, "and further")  # not forward to 2
    assert gate.rollback(ws, NAME, "again", "1") == ("1", "1")  # already champion: a no-op, nothing recorded
    assert len(tracking.champion_history(ws, NAME)) == 4


def test_a_rollback_to_a_version_that_does_not_exist_names_the_ones_that_do(three_champions):
    with pytest.raises(tracking.UnknownModelVersion) as error:
        gate.rollback(three_champions, NAME, "typo", "99")
    assert "no version '99'" in str(error.value) and "versions 1–3" in str(error.value)
    assert "champion=3" in str(error.value) and "previous-champion=2" in str(error.value)
    assert tracking.alias_version(three_champions, NAME, tracking.CHAMPION) == "3"


def test_resume_gate_never_re_promotes_a_rolled_back_version(three_champions):
    ws = three_champions
    gate.rollback(ws, NAME, "bad labels")  # the challenger (3, decision promote) is demoted
    assert tracking.alias_version(ws, NAME, tracking.CHALLENGER) == "3"
    # Even without the demoted version's tag, the history alone keeps it demoted.
    tracking.client(ws).delete_model_version_tag(NAME, "3", "rolled_back")
    assert gate.resume_gate(ws, NAME) is None
    assert tracking.alias_version(ws, NAME, tracking.CHAMPION) == "2"


def test_a_gate_killed_right_after_moving_the_alias_gets_its_record_from_the_next_resume(three_champions):
    """SIGKILL between the champion alias move and its history record; the next cycle's resume_gate
    writes the record (once), so the history still names every champion."""
    ws = three_champions
    _fake_imported_batch(ws, "batch-0003-aaaaaa", n=40, offset=200)
    dataset.update_dataset(ws)
    train.train_challenger(ws, CHAMPIONS_TRAIN)
    decision = gate.evaluate_gate(ws, NAME, PROMOTE_ANY)
    gate.record_decision(ws, NAME, decision)
    code = ("import sys; from labelloop.stages import gate; from labelloop.workspace import Workspace; "
            "gate.promote(Workspace.at(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])")
    killed = subprocess.run([sys.executable, "-c", code, str(ws.root), NAME, decision.challenger_version, "gate passed"],
                            cwd=REPO, env=dict(os.environ, **{ENV: "gate.after_champion"}, PYTHONPATH=str(REPO)),
                            capture_output=True, text=True, timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert tracking.alias_version(ws, NAME, tracking.CHAMPION) == "4"
    shown = tracking.champion_history(ws, NAME)
    assert (shown[-1].version, shown[-1].by, shown[-1].recorded) == ("4", "unrecorded", False)
    assert gate.resume_gate(ws, NAME) is None  # nothing to promote, only the record to write
    history = tracking.champion_history(ws, NAME)
    assert [(c.version, c.by, c.replaced, c.recorded, c.data_tag) for c in history[3:]] == [("4", "resume", "3", True, "data-v4")]
    assert history[-1].reason == "; ".join(decision.reasons)
    gate.promote(ws, NAME, "4", "a gate rerun")  # idempotent: no second record
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
    assert gate.rollback(ws, NAME, "bad labels") == ("3", "2")
    history = tracking.champion_history(ws, NAME)
    assert [(c.version, c.by, c.recorded) for c in history] == [
        ("2", "derived", True), ("3", "derived", True), ("2", "rollback", True)]


# -- the stop rules on a workspace ----------------------------------------------------------------

def _log_part(ws, start: int, stop: int) -> None:
    traffic = pd.read_parquet(ws.simulator_dir / "traffic.parquet").iloc[start:stop]
    frame = traffic[ws.schema().feature_columns].copy()
    frame.insert(0, PREDICTION_ID, traffic[ITEM_ID].astype(str).to_numpy())
    frame.insert(1, TS, pd.Timestamp("2026-11-21", tz="UTC"))
    append_predictions(ws, frame, part_name=f"part-test-{start:09d}.parquet")


def _record(cycle: int, labels: int, accuracy: float) -> CycleRecord:
    return CycleRecord(cycle=cycle, labels=labels, data_tag=f"data-v{cycle + 1}", champion_version=str(cycle + 1),
                       champion_accuracy=accuracy, champion_macro_f1=accuracy, decision="promote", batch_id=None,
                       new_labels=100)


def _predictions(ws, cycle: int, predicted: list[str]) -> None:
    write_parquet(gate.predictions_path(ws, cycle),
                  pd.DataFrame({PREDICTION_ID: [f"p{i}" for i in range(len(predicted))], PREDICTED: predicted}))


def test_the_stop_set_is_drawn_once_from_the_log_and_kept(workspace):
    assert gate.stop_set(workspace, 50).empty  # no log yet: nothing drawn, nothing written
    assert not gate.stop_set_path(workspace).exists()
    _log_part(workspace, 0, 300)
    first = gate.stop_set(workspace, 50)
    logged = set(pd.read_parquet(workspace.simulator_dir / "traffic.parquet").item_id.iloc[:300])
    assert len(first) == 50 and first.prediction_id.is_unique and set(first.prediction_id) <= logged
    _log_part(workspace, 300, 600)  # more traffic later does not move the stop set
    pd.testing.assert_frame_equal(gate.stop_set(workspace, 50), first)


def test_rules_over_the_workspace_history_report_plateau_and_stable_predictions(workspace):
    rules = GateParams(stop=StopParams(plateau_gain_per_100=0.002, plateau_cycles=2, stable_agreement=0.9, stable_cycles=2))
    append_history(workspace, _record(0, 50, 0.50))  # the seed model: not a cycle of the loop
    for cycle, labels, acc in [(1, 150, 0.80), (2, 250, 0.8010), (3, 350, 0.8015)]:
        append_history(workspace, _record(cycle, labels, acc))
    same = ["a"] * 19 + ["b"]
    for cycle in (1, 2):
        _predictions(workspace, cycle, same)
    current = _record(4, 450, 0.8020)
    _predictions(workspace, 4, ["a"] * 20)  # 95% agreement with cycle 2's model (cycle 3 trained none)

    report = gate.stop_rules_after(workspace, current, rules)
    assert report.stop
    plateau = report.rules["plateau"]
    assert plateau["triggered"] and plateau["recent_gains_per_100"] == pytest.approx([0.0005, 0.0005])
    assert report.rules["stable_predictions"]["recent_agreements"] == pytest.approx([1.0, 0.95])
    assert report.rules["stable_predictions"]["triggered"]
    assert not report.rules["label_budget"]["enabled"]

    # A clear jump in the metric ends the plateau; stricter agreement ends stability.
    jump = _record(4, 450, 0.85)
    strict = GateParams(stop=StopParams(plateau_gain_per_100=0.002, plateau_cycles=2, stable_agreement=0.99, stable_cycles=2))
    assert not gate.stop_rules_after(workspace, jump, strict).stop


def test_halt_obeys_the_current_rules(workspace):
    for cycle, labels, acc in [(0, 50, 0.5), (1, 150, 0.8), (2, 250, 0.85)]:
        append_history(workspace, _record(cycle, labels, acc))
    budget = StopParams(label_budget=200, plateau_gain_per_100=None, stable_agreement=None, halt=True)
    report = gate.halted(workspace, GateParams(stop=budget))
    assert report is not None and report.reasons == ["label budget reached: 250 ≥ 200"]
    assert gate.halted(workspace, GateParams(stop=budget.model_copy(update={"halt": False}))) is None  # report only
    assert gate.halted(workspace, GateParams(stop=budget.model_copy(update={"label_budget": 1000}))) is None  # budget raised


def test_the_stop_set_is_drawn_past_unreadable_parts_and_integer_ids(workspace):
    # A producer with an integer prediction_id beside text ids, and a part still being written: the
    # stop set used to fail the cycle's stop-rule step (ArrowTypeError / unreadable part) every cycle.
    _log_part(workspace, 0, 30)
    traffic = pd.read_parquet(workspace.simulator_dir / "traffic.parquet").iloc[30:50]
    frame = traffic[workspace.schema().feature_columns].copy()
    frame.insert(0, PREDICTION_ID, range(9_000_000, 9_000_020))
    frame.insert(1, TS, pd.Timestamp("2026-11-21", tz="UTC"))
    append_predictions(workspace, frame, part_name="part-test-int-ids.parquet")
    partial = next(workspace.predictions_dir.glob("date=*/")) / "part-test-zz-partial.parquet"
    partial.write_bytes(b"PAR1 still being written")
    chosen = gate.stop_set(workspace, size=1000)
    assert len(chosen) == 50 and chosen[PREDICTION_ID].is_unique
    assert "9000000" in set(chosen[PREDICTION_ID])


def _champion_challenger_and_audit_set(workspace, fresh_rows: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Champion v1, challenger v2 trained on 300 more labels, and an audit set of `fresh_rows` items neither model
    saw (holdout rows under new ids) and 5 the challenger trained on, weighted 5 to 20; (fresh rows, audit set)."""
    import numpy as np

    first = train.train_challenger(workspace, FAST)
    gate.promote(workspace, FAST.model_name, first.version)
    _fake_imported_batch(workspace, "batch-0001-aaaaaa", n=300)
    dataset.update_dataset(workspace)
    train.train_challenger(workspace, FAST)
    fresh = pd.read_parquet(workspace.holdout_path).head(fresh_rows)
    fresh = fresh.assign(**{ITEM_ID: [f"audit-{i}" for i in range(len(fresh))]})
    trained_on = pd.read_parquet(workspace.labeled_path).tail(5)
    audit = pd.concat([fresh, trained_on], ignore_index=True)
    audit["audit_weight"] = np.linspace(5.0, 20.0, len(audit))
    write_parquet(workspace.audit_path, audit)
    return fresh, audit


def test_the_gate_also_compares_both_models_on_the_audit_items_neither_trained_on(workspace):
    import numpy as np

    from labelloop.columns import LABEL
    from labelloop.domain.gate import BOOTSTRAP

    fresh, audit = _champion_challenger_and_audit_set(workspace)
    decision = gate.evaluate_gate(workspace, FAST.model_name, GateParams())
    assert [e.rows for e in decision.evidence] == ["holdout", "audit"]
    guard = decision.evidence[-1]
    assert (guard.n, guard.test, guard.metric) == (40, BOOTSTRAP, "accuracy")
    features = workspace.schema().feature_columns
    right = [tracking.load_model(workspace, FAST.model_name, v).predict(fresh[features]).astype(str) == fresh[LABEL]
             for v in ("2", "1")]
    weights = audit["audit_weight"].head(40).to_numpy()
    expected = float(np.sum(weights * right[0]) / weights.sum() - np.sum(weights * right[1]) / weights.sum())
    assert guard.difference == pytest.approx(expected)
    [reason] = [r for r in decision.reasons if r.startswith("audit guard:")]
    assert "on 40 audit rows neither model trained on (importance-weighted)" in reason
    assert decision.promote == (decision.evidence[0].passed and guard.passed)
    without = gate.evaluate_gate(workspace, FAST.model_name, GateParams(audit_guard=False))
    assert [e.rows for e in without.evidence] == ["holdout"]


def test_the_audit_segments_reach_the_gate_from_the_audit_items(workspace):
    # The per-segment guard groups the audit items neither model trained on by a segment column, named as the
    # segment monitor names segments (a missing value is '(missing)'); each segment's difference is its own.
    import numpy as np

    from labelloop.columns import LABEL
    from labelloop.domain.segments import MISSING

    fresh, audit = _champion_challenger_and_audit_set(workspace, fresh_rows=120)
    audit["region"] = np.resize(np.array(["eu", "eu", "us"], dtype=object), len(audit))  # as tests/stages/test_monitor.py
    audit.loc[:4, "region"] = None
    write_parquet(workspace.audit_path, audit)
    fresh = audit.head(len(fresh))
    rows = gate.audit_paired_rows(workspace, FAST.model_name, "2", "1", ["region"])
    expected = np.where(fresh["region"].isna(), MISSING, fresh["region"].astype(str))
    assert list(rows.segments) == ["region"] and rows.segments["region"].tolist() == expected.tolist()
    assert rows.classes == tuple(workspace.schema().class_names)

    rules = GateParams(max_segment_accuracy_drop=0.0, audit_min_rows_per_group=6)
    decision = gate.evaluate_gate(workspace, FAST.model_name, rules, ["region"])
    guard = [r for r in decision.reasons if r.startswith("audit segment guard on region: ")]
    assert guard and guard[-1].endswith(("→ pass", "→ reject"))
    assert f"reported, not used: segment region={MISSING!r} (5 rows, drop" in guard[-1]
    features = workspace.schema().feature_columns
    right = {v: tracking.load_model(workspace, FAST.model_name, v).predict(fresh[features]).astype(str) == fresh[LABEL]
             for v in ("2", "1")}
    weights = fresh["audit_weight"].to_numpy()
    groups = decision.evidence[2:]  # after the holdout's and the overall audit's: the segments that decided
    assert groups and all(e.rows.startswith("audit segment region=") for e in groups)
    for evidence in groups:
        members = expected == evidence.rows.removeprefix("audit segment region=").strip("'")
        assert evidence.n == members.sum() >= 6
        accuracy = {v: np.sum(weights[members] * right[v][members]) / weights[members].sum() for v in right}
        assert evidence.difference == pytest.approx(accuracy["2"] - accuracy["1"])
    # Without segment columns the guard has no groups: the gate is as before.
    without = gate.evaluate_gate(workspace, FAST.model_name, rules)
    assert not [r for r in without.reasons if r.startswith("audit segment guard")]


def test_the_gate_adds_the_seed_term_from_the_challengers_kept_twins(workspace):
    from labelloop.domain.gate import SEED_T
    from labelloop.model import twin_seeds

    seeded = TrainParams(estimator="random_forest", estimator_params={"n_estimators": 20})
    first = train.train_challenger(workspace, seeded, GateParams())
    gate.promote(workspace, seeded.model_name, first.version)
    _fake_imported_batch(workspace, "batch-0001-aaaaaa", n=60)
    dataset.update_dataset(workspace)
    train.train_challenger(workspace, seeded, GateParams())
    decision = gate.evaluate_gate(workspace, seeded.model_name, GateParams(min_delta=-1.0))
    [seed_test] = [e for e in decision.evidence if e.test == SEED_T]
    assert seed_test.seeds == [seeded.random_state, *twin_seeds(seeded.random_state, 2)]
    assert seed_test.n == len(pd.read_parquet(workspace.holdout_path)) and seed_test.seed_sd is not None
    [reason] = [r for r in decision.reasons if r.startswith(SEED_T)]
    assert "2 seed twins" in reason and "holdout rows" in reason and "seed sd" in reason
    # gate.seed_twins 0: the paired test alone, as before.
    off = gate.evaluate_gate(workspace, seeded.model_name, GateParams(min_delta=-1.0, seed_twins=0))
    assert not [e for e in off.evidence if e.test == SEED_T]
