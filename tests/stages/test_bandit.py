"""`select.strategy: auto` on a real workspace: the arm in the batch meta, reruns after a crash at select, and the
reward's bookkeeping at the gate (a crashed cycle rerun neither loses nor double-counts a reward)."""

import json

import numpy as np
import pandas as pd
import pytest

from labelloop.batches import BatchStore
from labelloop.columns import ITEM_ID, LABEL
from labelloop.config import BanditParams, SelectParams
from labelloop.core.io import write_json, write_parquet
from labelloop.domain.acquisition import bandit
from labelloop.stages import bandit as stage
from labelloop.stages import select
from labelloop.stages.select import select_batch
from tests.stages.test_select import _pool

AUTO = SelectParams(strategy="auto", batch_size=6, seed=1, audit_fraction=0.0)


def test_select_with_auto_resolves_an_arm_and_writes_it_into_the_batch_meta(workspace):
    _pool(workspace)
    meta = select_batch(workspace, AUTO)
    assert meta.strategy == "auto"
    assert meta.bandit["arm"] in {"random", "margin", "hybrid"}
    assert set(meta.bandit["probabilities"]) == {"random", "margin", "hybrid"}
    assert meta.bandit["probability"] == pytest.approx(meta.bandit["probabilities"][meta.bandit["arm"]])
    assert sum(meta.bandit["probabilities"].values()) == pytest.approx(1.0)
    stored = BatchStore(workspace).get(meta.batch_id)
    assert stored.bandit == meta.bandit
    assert meta.selector_used == ("hybrid" if meta.bandit["arm"] == "hybrid" else "topk")


def test_a_fixed_strategy_records_no_arm(workspace):
    _pool(workspace)
    assert select_batch(workspace, SelectParams(strategy="margin", batch_size=5, audit_fraction=0.0)).bandit == {}


def test_crash_between_choosing_and_recording_reruns_with_the_same_arm(workspace, monkeypatch):
    _pool(workspace)
    drawn = []
    choose = select.choose_arm

    def spy(*args):
        drawn.append(choose(*args))
        return drawn[-1]

    monkeypatch.setattr(select, "choose_arm", spy)
    monkeypatch.setattr(BatchStore, "put", lambda self, meta: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        select_batch(workspace, AUTO)
    monkeypatch.undo()
    assert BatchStore(workspace).list() == []  # the crash came before the meta was recorded
    meta = select_batch(workspace, AUTO)
    assert len(drawn) == 1  # the rerun drew again (the spy was undone), and it drew the same arm:
    assert (meta.bandit["arm"], meta.bandit) == drawn[0]
    assert not stage.state_path(workspace).exists()  # choosing writes nothing: only rewards change the state


def _fresh(params=None):
    """The state a workspace with no state file starts from, under `params` (default: select.bandit's defaults)."""
    params = params or BanditParams()
    return bandit.initial_state(params.arms, params.gamma, params.eta, random_start=params.random_start,
                                warmup=params.warmup)


def test_the_arm_follows_the_selection_key():
    state = _fresh()
    for i in range(state.warmup + 1):  # the floor applies once the warm-up batches' gains are recorded
        state = bandit.update(state, f"seen-{i}", "margin", 0.5, 0.5, gain=0.01)
    arms = {bandit.choose(state, np.random.default_rng(bandit.choice_seed(f"k{i}", 1)))[0] for i in range(30)}
    assert len(arms) == 3  # different batches explore every arm


# -- rewards at the gate -------------------------------------------------------------------------

def _auto_batch(workspace, batch_id="batch-0001-abcdef", arm="margin", versioned=True):
    from labelloop.batches import BatchMeta

    meta = BatchMeta(batch_id=batch_id, key=batch_id[-6:], status="imported", strategy="auto", selector="topk", seed=0,
                     params={}, n_items=3, created_at="2026-01-01T00:00:00Z", champion_version="1",
                     versioned_in="data-v2" if versioned else None,
                     bandit={"arm": arm, "probability": 0.5, "probabilities": {"random": 0.25, "margin": 0.5,
                                                                                "hybrid": 0.25}})
    BatchStore(workspace).put(meta)
    return meta


def _audit_set(workspace, n=20):
    label = workspace.schema().class_names[0]
    frame = pd.DataFrame({ITEM_ID: [f"audit-{i}" for i in range(n)], LABEL: [label] * n, "audit_weight": np.full(n, 2.0)})
    write_parquet(workspace.audit_path, frame)
    return frame


@pytest.fixture
def predictions(monkeypatch):
    """Model versions' class probabilities on the audit items without MLflow: v1 sure and right on 10 of 20, v2 on 15
    of 20 (sure of another class on the rest), so the probability gain is the accuracy gain, 0.25."""
    right = {"1": 10, "2": 15}
    calls = []

    def predict(workspace, model_name, version, audit, cache):
        calls.append(version)
        proba = np.zeros((len(audit), len(workspace.schema().class_names)))
        proba[: right[version], 0] = 1.0
        proba[right[version]:, 1] = 1.0
        return proba

    logged = []
    monkeypatch.setattr(stage, "_predict", predict)
    monkeypatch.setattr(stage, "log_rewards", lambda ws, name, version, paid, state: logged.append([r.batch_id for r in paid]))
    return calls, logged


def test_reward_is_paid_once_to_the_arm_that_drew_the_batch(workspace, predictions):
    _auto_batch(workspace)
    _audit_set(workspace)
    params = BanditParams()
    earlier = _fresh(params.model_copy(update={"random_start": 0.0}))
    for i, gain in enumerate([0.1, 0.05, 0.02]):  # three batches measured before: past the warm-up
        earlier = bandit.update(earlier, f"old-{i}", "hybrid", 0.5, 0.5, gain=gain)
    write_json(stage.state_path(workspace), earlier.to_dict())
    paid = stage.record_rewards(workspace, "m", "2", params)
    assert [(r.batch_id, r.arm) for r in paid] == [("batch-0001-abcdef", "margin")]
    assert paid[0].gain == pytest.approx(0.25) and paid[0].reward == 1.0 and paid[0].n_audit == 20
    assert paid[0].detail["baseline"] == pytest.approx(bandit.gain_baseline(earlier))
    state = json.loads(stage.state_path(workspace).read_text())
    weights = dict(zip(state["arms"], state["log_weights"], strict=True))
    assert weights["margin"] - weights["random"] == pytest.approx(0.5 * 0.5 / 0.5)
    # The rerun (a crash after the state was written, or the gate run again): nothing paid twice.
    again = stage.record_rewards(workspace, "m", "2", params)
    assert again == paid
    assert json.loads(stage.state_path(workspace).read_text()) == state
    assert predictions[1] == [["batch-0001-abcdef"], ["batch-0001-abcdef"]]  # MLflow gets the same values again
    meta = BatchStore(workspace).get("batch-0001-abcdef")
    assert meta.bandit["reward"] == 1.0 and meta.bandit["measured_by"] == "2"


def test_crash_after_the_state_is_written_does_not_double_count(workspace, predictions, monkeypatch):
    _auto_batch(workspace)
    _audit_set(workspace)
    monkeypatch.setattr(BatchStore, "mark", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        stage.record_rewards(workspace, "m", "2", BanditParams())
    written = json.loads(stage.state_path(workspace).read_text())
    monkeypatch.undo()
    monkeypatch.setattr(stage, "log_rewards", lambda *a: None)
    stage.record_rewards(workspace, "m", "2", BanditParams())
    assert json.loads(stage.state_path(workspace).read_text()) == written
    assert len(written["records"]) == 1
    assert BatchStore(workspace).get("batch-0001-abcdef").bandit["measured_by"] == "2"  # the rerun finished the meta


def test_audit_items_the_challenger_trained_on_are_left_out(workspace, predictions):
    _auto_batch(workspace)
    audit = _audit_set(workspace)
    labeled = pd.read_parquet(workspace.labeled_path)
    extra = labeled.head(5).copy()
    extra[ITEM_ID] = audit[ITEM_ID].head(5).to_numpy()
    write_parquet(workspace.labeled_path, pd.concat([labeled, extra], ignore_index=True))
    assert len(stage.fresh_audit_items(workspace)) == 15


def test_no_audit_items_records_the_batch_without_a_reward(workspace, predictions):
    _auto_batch(workspace)
    paid = stage.record_rewards(workspace, "m", "2", BanditParams())
    assert paid[0].reward is None and paid[0].n_audit == 0
    state = json.loads(stage.state_path(workspace).read_text())
    assert state["log_weights"] == list(_fresh().log_weights)
    assert predictions[0] == []  # no model was loaded


def test_with_no_warm_up_the_first_batch_is_paid_against_no_gain(workspace, predictions):
    _auto_batch(workspace)
    _audit_set(workspace)
    paid = stage.record_rewards(workspace, "m", "2", BanditParams(warmup=0))
    assert paid[0].gain == pytest.approx(0.25) and paid[0].reward == 1.0 and paid[0].detail["baseline"] == 0.0
    assert json.loads(stage.state_path(workspace).read_text())["warmup"] == 0


def test_with_a_warm_up_the_first_batch_is_paid_neutrally_the_weights_stay(workspace, predictions):
    _auto_batch(workspace)
    _audit_set(workspace)
    paid = stage.record_rewards(workspace, "m", "2", BanditParams())
    assert paid[0].gain == pytest.approx(0.25) and paid[0].reward == 0.5  # no earlier gain to compare it with
    state = json.loads(stage.state_path(workspace).read_text())
    assert state["log_weights"] == list(_fresh().log_weights)


def test_random_start_sets_a_new_state_only(workspace, predictions):
    assert stage.load_state(workspace, BanditParams()).log_weights == (-4.0, 0.0, 0.0)
    uniform = stage.load_state(workspace, BanditParams(random_start=0.0))
    np.testing.assert_allclose(bandit.probabilities(uniform), [1 / 3] * 3)
    _auto_batch(workspace)
    stage.record_rewards(workspace, "m", "2", BanditParams())  # no audit items: recorded, weights unchanged
    assert stage.load_state(workspace, BanditParams(random_start=0.0)).log_weights == (-4.0, 0.0, 0.0)


def test_a_state_file_written_before_the_start_settings_were_keys_keeps_loading(workspace, predictions):
    # What state/bandit.json held before (no "warmup"): two measured batches, the third is due.
    old = {"arms": ["random", "margin", "hybrid"], "log_weights": [-4.0, 0.0, 0.0], "gamma": 0.3, "eta": 0.5,
           "records": [{"batch_id": f"old-{i}", "arm": "margin", "probability": 0.5, "reward": 0.5, "gain": gain,
                        "n_audit": 20, "detail": {}} for i, gain in enumerate([0.1, 0.05])]}
    write_json(stage.state_path(workspace), old)
    assert stage.load_state(workspace, BanditParams()).warmup == 2
    _auto_batch(workspace)
    _audit_set(workspace)
    paid = stage.record_rewards(workspace, "m", "2", BanditParams())
    assert paid[0].reward == 0.5  # the third measured batch: still in the configured two-batch warm-up
    state = json.loads(stage.state_path(workspace).read_text())
    assert state["warmup"] == 2 and [r["batch_id"] for r in state["records"]] == ["old-0", "old-1", "batch-0001-abcdef"]


@pytest.mark.parametrize(("measure", "gain", "reward"), [("accuracy", 0.0, 0.5), ("probability", 0.3, 1.0)])
def test_the_gain_measure_decides_what_a_batch_is_paid_on(workspace, monkeypatch, measure, gain, reward):
    def predict(workspace, model_name, version, audit, cache):
        # Both versions right on every audit item (class 0); v2 more sure: no accuracy gain, 0.3 in probability.
        proba = np.zeros((len(audit), len(workspace.schema().class_names)))
        proba[:, 0], proba[:, 1] = (0.6, 0.4) if version == "1" else (0.9, 0.1)
        return proba

    monkeypatch.setattr(stage, "_predict", predict)
    monkeypatch.setattr(stage, "log_rewards", lambda *a: None)
    _auto_batch(workspace)
    _audit_set(workspace)
    paid = stage.record_rewards(workspace, "m", "2", BanditParams(warmup=0, gain_measure=measure))
    assert paid[0].gain == pytest.approx(gain) and paid[0].reward == pytest.approx(reward)  # no warm-up: baseline 0


def test_a_batch_not_yet_in_a_data_version_waits(workspace, predictions):
    _auto_batch(workspace, versioned=False)
    _audit_set(workspace)
    assert stage.record_rewards(workspace, "m", "2", BanditParams()) == []
    assert not stage.state_path(workspace).exists()
    assert stage.bandit_line([]) is None


def test_the_cycle_line_part_names_the_arm_and_its_reward_once_measured(workspace, predictions):
    _auto_batch(workspace)
    assert stage.batch_text(workspace, "batch-0001-abcdef") == "arm margin (p 0.50), reward not measured yet"
    stage.record_rewards(workspace, "m", "2", BanditParams())  # no audit items: recorded without a reward
    assert stage.batch_text(workspace, "batch-0001-abcdef") == "arm margin (p 0.50), no reward (no audit items yet)"
    _auto_batch(workspace, "batch-0002-fedcba", arm="random")
    _audit_set(workspace)
    paid = stage.record_rewards(workspace, "m", "2", BanditParams())
    assert [r.batch_id for r in paid] == ["batch-0001-abcdef", "batch-0002-fedcba"] and paid[1].reward is not None
    assert (stage.batch_text(workspace, "batch-0002-fedcba")
            == f"arm random (p 0.50), reward {paid[1].reward:.2f} (gain {paid[1].gain:+.4f} on 20 audit)")


def test_no_arm_no_cycle_line_part(workspace):
    _pool(workspace)
    meta = select_batch(workspace, SelectParams(strategy="margin", batch_size=5, audit_fraction=0.0))
    assert stage.batch_text(workspace, meta.batch_id) is None
    assert stage.batch_text(workspace, None) is None and stage.batch_text(workspace, "batch-9999-nobody") is None
