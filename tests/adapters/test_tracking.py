"""Training, registry aliases and the gate's record on a real MLflow store (SQLite in the workspace)."""

import pandas as pd
import pytest

from labelloop.stages import dataset
from labelloop.adapters import tracking
from labelloop.config import GateParams, TrainParams
from tests.stages.test_dataset import _fake_imported_batch

FAST = TrainParams(n_estimators=30, max_depth=3)


def test_train_registers_a_challenger_with_data_tag_and_metrics(workspace):
    result = tracking.train_challenger(workspace, FAST)
    assert result.created and result.data_tag == "data-v1"
    assert tracking.alias_version(workspace, FAST.model_name, tracking.CHALLENGER) == result.version
    run = tracking.client(workspace).get_run(result.run_id)
    assert run.data.tags["data_tag"] == "data-v1"
    assert {"accuracy", "macro_f1", "log_loss", "ece"} <= set(run.data.metrics)
    assert run.data.params["n_estimators"] == "30"
    from labelloop.core.threads import resolve_n_jobs  # n_jobs "auto" is logged with the count the fit used (issue 15)

    assert (run.data.params["n_jobs"], run.data.params["n_jobs_resolved"]) == ("auto", str(resolve_n_jobs("auto")))
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.name == "data-v1"


def test_retrain_on_the_same_version_and_params_reuses_the_version(workspace):
    first = tracking.train_challenger(workspace, FAST)
    again = tracking.train_challenger(workspace, FAST)
    assert (again.version, again.run_id, again.created) == (first.version, first.run_id, False)
    other = tracking.train_challenger(workspace, TrainParams(n_estimators=31, max_depth=3))
    assert other.version != first.version


def test_gate_promotes_moves_previous_champion_and_the_model_serves(workspace):
    first = tracking.train_challenger(workspace, FAST)
    decision = tracking.evaluate_gate(workspace, FAST.model_name, GateParams())
    assert decision.promote
    tracking.record_decision(workspace, FAST.model_name, decision)
    tracking.promote(workspace, FAST.model_name, decision.challenger_version)
    _fake_imported_batch(workspace, "batch-0001-aaaaaa", n=60)
    dataset.update_dataset(workspace)
    second = tracking.train_challenger(workspace, FAST)
    decision = tracking.evaluate_gate(workspace, FAST.model_name, GateParams(min_delta=-1.0))
    assert decision.promote and decision.champion_version == first.version
    tracking.record_decision(workspace, FAST.model_name, decision)
    tracking.promote(workspace, FAST.model_name, second.version)
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
        tracking.evaluate_gate(workspace, FAST.model_name, GateParams())


def test_train_refuses_an_untagged_dataset(workspace):
    labeled = pd.read_parquet(workspace.labeled_path)
    labeled.head(10).to_parquet(workspace.labeled_path)  # edited by hand, never versioned
    with pytest.raises(RuntimeError, match="not a tagged data version"):
        tracking.train_challenger(workspace, FAST)


def test_challenger_with_better_accuracy_but_a_collapsed_class_recall_is_refused(workspace):
    """Real MLflow, real registry: a model that never saw one class beats a tiny-data champion on
    accuracy, yet the recall guardrail refuses it and says which class."""
    from labelloop.adapters import versioning

    champion = tracking.train_challenger(workspace, FAST)
    tracking.promote(workspace, FAST.model_name, champion.version)
    holdout = pd.read_parquet(workspace.holdout_path)
    oracle = pd.read_parquet(workspace.simulator_dir / "oracle.parquet")
    traffic = pd.read_parquet(workspace.simulator_dir / "traffic.parquet").merge(oracle, on="item_id")
    recalls = tracking.model_metrics(workspace, FAST.model_name, champion.version).class_recall
    share = holdout.label.value_counts(normalize=True)
    # A small class the champion already recognises: dropping it costs little accuracy, much recall.
    dropped_class = min((c for c in recalls if recalls[c] >= 0.5), key=lambda c: share[c])
    more = traffic[traffic.label != dropped_class].head(1500).assign(batch_id="batch-x", source="simulated")
    labeled = pd.read_parquet(workspace.labeled_path)
    labeled = labeled[labeled.label != dropped_class]
    pd.concat([labeled, more[labeled.columns]], ignore_index=True).to_parquet(workspace.labeled_path)
    versioning.commit_version(workspace.registry_dir, [workspace.labeled_path], "data without one class")
    challenger = tracking.train_challenger(workspace, FAST)
    assert challenger.metrics["accuracy"] > champion.metrics["accuracy"]
    decision = tracking.evaluate_gate(workspace, FAST.model_name, GateParams(max_class_recall_drop=0.2))
    assert not decision.promote
    assert any(repr(dropped_class) in r and "max_class_recall_drop" in r for r in decision.reasons)
    tracking.record_decision(workspace, FAST.model_name, decision)
    assert tracking.alias_version(workspace, FAST.model_name, tracking.CHAMPION) == champion.version
    tags = tracking.client(workspace).get_run(challenger.run_id).data.tags
    assert tags["gate.decision"] == "reject" and dropped_class in tags["gate.reasons"]
