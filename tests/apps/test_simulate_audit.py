"""The audit sample in the simulator: drawn from the unlabelled pool, never by the strategy, estimated against the
hidden truth, then trained on."""

import numpy as np
import pandas as pd
import pytest

from labelloop.apps.simulate import SimulationConfig, run_simulation
from labelloop.apps.simulate_audit import AuditRun, audit_items, coverage


def test_audit_run_draws_from_the_window_with_its_weight_and_measures_the_truth():
    labels = np.array(["a", "b"] * 500)
    run = AuditRun(0.1, 100, 200, labels, ["a", "b"], [0])
    window = np.arange(0, 1000, 2)  # only "a" rows: a model answering "a" is right everywhere
    row = run.measure(lambda rows: np.array(["a"] * len(rows)), lambda index: index, window, round_=0)
    assert len(run.drawn) == 10 and set(run.drawn) <= set(window)
    assert row["live_accuracy"] == 1.0 and row["audit_accuracy"] == 1.0 and row["audit_covered"]
    assert row["audit_accuracy_low"] < 1.0  # 10 items: a wide interval
    assert audit_items(0.0, 100) == 0 and AuditRun(0.0, 100, 200, labels, ["a", "b"], [0]).measure(
        None, None, window, 0) == {}


def test_simulation_with_an_audit_sample_reports_coverage_and_trains_on_the_audit_items(tmp_path):
    from labelloop.config import TrainParams

    rng = np.random.default_rng(0)
    n = 500
    y = rng.choice(["a", "b"], size=n, p=[0.6, 0.4])
    frame = pd.DataFrame({"x1": np.where(y == "a", 0.0, 1.5) + rng.normal(size=n), "target": y})
    frame.to_csv(tmp_path / "data.csv", index=False)
    summary = run_simulation(SimulationConfig(
        data=str(tmp_path / "data.csv"), label_col="target", strategies=["margin"], seed_size=20, batch_size=20,
        rounds=2, repeats=1, out=str(tmp_path / "out"), train_params=TrainParams(n_estimators=10, max_depth=2),
        log_mlflow=False, progress=False, audit_fraction=0.25,
    ))
    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    assert curves["n_labels"].tolist() == [20, 45, 70]  # the batch and its 5 audit items, trained on after
    assert (curves["audit_n"] == 5).all()
    assert curves["live_accuracy"].between(0, 1).all()
    assert summary["audit"]["rounds"] == 3 and 0 <= summary["audit"]["coverage"] <= 1
    with pytest.raises(ValueError, match="audit-fraction"):
        SimulationConfig(data="x", audit_fraction=2.0).validate()


def test_coverage_counts_the_rounds_whose_truth_is_in_the_interval():
    curves = pd.DataFrame({"strategy": ["r", "r", "m"], "audit_covered": [True, False, True],
                           "audit_accuracy": [0.8, 0.7, 0.9], "audit_accuracy_low": [0.7, 0.6, 0.8],
                           "audit_accuracy_high": [0.9, 0.8, 1.0], "live_accuracy": [0.85, 0.9, 0.9]})
    result = coverage(curves)
    assert result["coverage"] == pytest.approx(2 / 3) and result["per_strategy"] == {"r": 0.5, "m": 1.0}
    assert coverage(pd.DataFrame({"strategy": ["r"]})) == {}
