"""`labelloop simulate --strategies ...,auto`: the bandit runs like any strategy, its arms reported per round."""

import json

import numpy as np
import pandas as pd
import pytest

from labelloop.apps.simulate import SimulationConfig, arm_report, run_simulation
from labelloop.config import BanditParams
from tests.apps.test_simulate import three_class_csv


def test_auto_runs_like_any_strategy_and_reports_its_arms(tmp_path):
    from labelloop.config import TrainParams

    path = three_class_csv(tmp_path)
    cfg = SimulationConfig(
        data=str(path), label_col="target", strategies=["random", "auto"], seed_size=20, batch_size=20, rounds=3,
        repeats=2, out=str(tmp_path / "out"), train_params=TrainParams(n_estimators=10, max_depth=3),
        bandit=BanditParams(arms=["random", "margin"]), audit_size=60, log_mlflow=False, progress=False,
    )
    summary = run_simulation(cfg, echo=None)
    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    auto = curves[curves["strategy"] == "auto"].sort_values(["repeat", "round"])
    assert sorted(auto["n_labels"].unique()) == [20, 40, 60, 80]  # the same label counts as random
    drawn = auto.dropna(subset=["arm"])
    assert len(drawn) == 2 * 3 and set(drawn["arm"]) <= {"random", "margin"}
    assert np.allclose(drawn["p_random"] + drawn["p_margin"], 1.0)
    # Random starts at its floor; the floor itself applies after the warm-up (three gains recorded, round 3 on):
    assert (drawn["p_random"] < 0.02).all()
    paid = auto[auto["round"] >= 1]
    assert paid["bandit_reward"].between(0, 1).all() and (paid["n_audit"] > 0).all()
    assert auto.loc[auto["round"] == 0, "bandit_reward"].isna().all()  # the seed model selected, nothing to pay yet
    arms = json.loads((tmp_path / "out" / "summary.json").read_text())["strategies"]["auto"]["arms"]
    assert arms == json.loads(json.dumps(summary["strategies"]["auto"]["arms"]))
    assert sum(arms["shares"].values()) == pytest.approx(1.0)
    assert [r["round"] for r in arms["by_round"]] == [0, 1, 2]
    assert "arm" not in curves[curves["strategy"] == "random"].dropna(axis=1, how="all").columns


def test_auto_checks_its_arms_before_simulating():
    with pytest.raises(ValueError, match="alpha"):
        SimulationConfig(data="x", strategies=["auto"], strategy_params={"margin": {"alpha": 1}}).validate()
    with pytest.raises(ValueError, match="audit-size"):
        SimulationConfig(data="x", strategies=["auto"], audit_size=0).validate()


def test_arm_report_on_hand_made_curves():
    curves = pd.DataFrame({
        "strategy": "auto", "repeat": [0, 0, 0, 1, 1, 1], "round": [0, 1, 2, 0, 1, 2],
        "n_labels": [10, 20, 30, 10, 20, 30],
        "arm": ["margin", "random", None, "margin", "margin", None],
        "bandit_reward": [None, 0.9, 0.4, None, 0.7, 0.6], "bandit_gain": [None, 0.02, -0.01, None, 0.01, 0.005],
    })
    report = arm_report(curves)
    assert report["shares"] == {"margin": 0.75, "random": 0.25}
    assert report["by_round"][0] == {"round": 0, "n_labels": 10, "shares": {"margin": 1.0, "random": 0.0}}
    # A batch's reward sits on the next row: margin drew r0 (paid 0.9 and 0.7) and r1 of repeat 1 (paid 0.6).
    assert report["mean_reward"]["margin"] == pytest.approx((0.9 + 0.7 + 0.6) / 3)
    assert report["mean_reward"]["random"] == pytest.approx(0.4)
    assert arm_report(curves.drop(columns=["arm"]))["shares"] == {}


def test_the_simulated_bandit_plays_select_bandits_start_settings():
    from labelloop.apps.simulate import _BanditRun

    labels, pool = np.array(["a", "b"] * 10), np.arange(20)

    def play(**settings):
        """One paid batch: both models right on every audit row, the second surer (accuracy gain 0, probability
        gain 0.3). Returns the arms' probabilities at the first choice and what the batch was paid."""
        config = SimulationConfig(data="x", seed=3, audit_size=10, bandit=BanditParams(arms=["random", "margin"], **settings))
        run = _BanditRun(config, pool, labels, 0, ["a", "b"])
        truth = (labels[run.audit] == "b").astype(int)

        def proba(sure):
            out = np.full((len(run.audit), 2), 1.0 - sure)
            out[np.arange(len(run.audit)), truth] = sure
            return out

        in_labelled = np.zeros(len(labels), dtype=bool)
        run.measure(proba(0.6), in_labelled)
        _, chosen = run.choose(0)
        return chosen, run.measure(proba(0.9), in_labelled)

    chosen, paid = play()  # the defaults: random at its floor, a warm-up, paid on accuracy
    assert chosen["p_random"] < 0.02 and paid["bandit_reward"] == 0.5 and paid["bandit_paid_gain"] == 0.0
    chosen, paid = play(random_start=0.0, warmup=0, gain_measure="probability")
    assert chosen["p_random"] == pytest.approx(0.5)
    assert paid["bandit_gain"] == 0.0 and paid["bandit_paid_gain"] == pytest.approx(0.3) and paid["bandit_reward"] == 1.0
