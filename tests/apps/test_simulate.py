import json

import numpy as np
import pandas as pd
import pytest

from labelloop.apps.simulate import (
    SimulationConfig,
    area_under_curve,
    labels_to_target,
    run_simulation,
    savings_vs_random,
    summarize,
)


def hand_curves():
    n = [50, 150, 250, 350, 450]
    rows = []
    # full-pool value 0.9 → target 0.891
    for rep, jitter in ((0, 0.0), (1, 0.002)):
        for k, v in zip(n, [0.5, 0.895, 0.9, 0.9, 0.9]):
            rows.append({"strategy": "margin", "repeat": rep, "n_labels": k, "accuracy": v + jitter, "minority_recall": 0.5})
        for k, v in zip(n, [0.5, 0.6, 0.7, 0.85, 0.892]):
            rows.append({"strategy": "random", "repeat": rep, "n_labels": k, "accuracy": v - jitter, "minority_recall": 0.4})
        for k, v in zip(n, [0.5, 0.6, 0.7, 0.8, 0.85]):
            rows.append({"strategy": "entropy", "repeat": rep, "n_labels": k, "accuracy": v, "minority_recall": 0.4})
    return pd.DataFrame(rows)


def test_savings_on_a_hand_made_curve():
    summary = summarize(hand_curves(), [0.9, 0.9], "accuracy")
    assert summary["target"] == pytest.approx(0.891)
    s = summary["strategies"]
    assert s["random"]["labels_to_target"] == 450  # mean 0.891 at 450 (0.892 − 0.001 mean jitter)
    assert s["margin"]["labels_to_target"] == 150
    assert s["margin"]["savings_vs_random_pct"] == pytest.approx(100 * (1 - 150 / 450))
    assert s["margin"]["savings_is_lower_bound"] is False
    assert s["entropy"]["labels_to_target"] is None
    assert s["entropy"]["savings_vs_random_pct"] is None
    assert s["random"]["savings_vs_random_pct"] == pytest.approx(0.0)


def test_random_never_reaching_uses_the_budget_as_a_lower_bound():
    curves = hand_curves()
    curves = curves[~((curves["strategy"] == "random") & (curves["n_labels"] == 450))]
    curves = pd.concat([curves, pd.DataFrame([
        {"strategy": "random", "repeat": r, "n_labels": 450, "accuracy": 0.86, "minority_recall": 0.4} for r in (0, 1)
    ])])
    s = summarize(curves, [0.9, 0.9], "accuracy")["strategies"]
    assert s["random"]["labels_to_target"] is None
    assert s["margin"]["savings_vs_random_pct"] == pytest.approx(100 * (1 - 150 / 450))
    assert s["margin"]["savings_is_lower_bound"] is True


def test_helpers():
    assert labels_to_target(np.array([300, 100, 200]), np.array([0.9, 0.1, 0.95]), 0.9) == 200
    assert labels_to_target(np.array([100]), np.array([0.1]), 0.9) is None
    assert savings_vs_random(None, 100, 500) == (None, False)
    assert area_under_curve(np.array([0, 100]), np.array([0.0, 1.0])) == pytest.approx(0.5)


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="metric"):
        SimulationConfig(data="x", metric="auc").validate()
    with pytest.raises(ValueError, match="unknown strategy"):
        SimulationConfig(data="x", strategies=["nope"]).validate()
    with pytest.raises(ValueError, match="does not exist"):
        run_simulation(SimulationConfig(data=str(tmp_path / "none.csv"), log_mlflow=False, progress=False))


def test_a_misspelt_strategy_or_selector_parameter_fails_before_the_simulation():
    def config(**kw):
        return SimulationConfig(data="x", **kw)

    with pytest.raises(ValueError, match="strategy 'information_density' has no parameter 'betta'; allowed: beta"):
        config(strategies=["information_density"], strategy_params={"information_density": {"betta": 2}}).validate()
    with pytest.raises(ValueError, match="selector 'hybrid' .*'explore_fracton'; allowed: exploit_fraction, quota_fraction"):
        config(strategies=["hybrid"], selector_params={"hybrid": {"explore_fracton": 0.0}}).validate()
    with pytest.raises(ValueError, match="selector 'coreset' .*'explore_fraction'; allowed: top_m_factor"):
        config(strategies=["hybrid"], selector="coreset", selector_params={"hybrid": {"explore_fraction": 0.0}}).validate()
    config(strategies=["hybrid"], selector_params={"hybrid": {"explore_fraction": 0.0}}).validate()


def three_class_csv(tmp_path, n=400):
    """A small numeric table (label column `target`, classes a/b/c, c rare) written to tmp_path/data.csv."""
    rng = np.random.default_rng(0)
    y = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.4, 0.1])
    centers = {"a": 0.0, "b": 2.0, "c": 4.0}
    frame = pd.DataFrame({"x1": [centers[v] for v in y] + rng.normal(size=n), "x2": rng.normal(size=n), "target": y})
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


def test_tiny_simulation_end_to_end(tmp_path):
    from labelloop.config import TrainParams

    path = three_class_csv(tmp_path)
    cfg = SimulationConfig(
        data=str(path), label_col="target", strategies=["random", "margin", "hybrid"], seed_size=20, batch_size=20,
        rounds=2, repeats=2, out=str(tmp_path / "out"), train_params=TrainParams(n_estimators=10, max_depth=3),
        log_mlflow=False, progress=False,
    )
    summary = run_simulation(cfg)
    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    assert set(curves["strategy"]) == {"random", "margin", "hybrid"}
    assert sorted(curves["n_labels"].unique()) == [20, 40, 60]
    assert {"accuracy", "macro_f1", "minority_recall"} <= set(curves.columns)
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["strategies"].keys() == summary["strategies"].keys()
    assert (tmp_path / "out" / "learning_curves.png").stat().st_size > 1000
    # Same seed set for every strategy within a repeat: identical first points.
    first = curves[curves["round"] == 0].groupby("repeat")["accuracy"].nunique()
    assert (first == 1).all()


def test_recorded_batches_are_the_picked_rows_with_the_truth_of_their_predictions(tmp_path):
    from labelloop.config import TrainParams

    path = three_class_csv(tmp_path)
    cfg = SimulationConfig(
        data=str(path), label_col="target", strategies=["margin"], seed_size=20, batch_size=15, rounds=2, repeats=1,
        out=str(tmp_path / "out"), train_params=TrainParams(n_estimators=10, max_depth=3), log_mlflow=False,
        progress=False, record_batches=True,
    )
    run_simulation(cfg)
    batches = pd.read_csv(tmp_path / "out" / "batches.csv")
    truth = pd.read_csv(path)["target"].to_numpy()
    assert batches.groupby("round").size().to_dict() == {0: 15, 1: 15}  # none after the last model
    assert batches["row"].is_unique  # a row is bought once
    assert (batches["correct"] == (batches["predicted"] == truth[batches["row"]])).all()
    assert batches["confidence"].between(1 / 3, 1).all()
    # margin picks the rows the model is least sure of
    assert batches["confidence"].mean() < 0.9
    # Off by default: no file.
    cfg.record_batches, cfg.out = False, str(tmp_path / "plain")
    run_simulation(cfg)
    assert not (tmp_path / "plain" / "batches.csv").exists()


def test_batch_record_marks_wrong_guesses():
    from labelloop.apps.simulate import batch_record

    frame = batch_record(np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]), ["a", "b"], np.array(["a", "a", "b"]),
                         np.array([5, 7, 9]))
    assert frame["predicted"].tolist() == ["a", "b", "a"]
    assert frame["correct"].tolist() == [True, False, False]
    assert frame["confidence"].tolist() == [0.9, 0.7, 0.6]
    assert frame["row"].tolist() == [5, 7, 9]


@pytest.mark.slow
def test_simulation_logs_to_mlflow(tmp_path):
    from labelloop.config import TrainParams

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=200), "label": rng.choice(["p", "q"], size=200)})
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    out = tmp_path / "out"
    run_simulation(SimulationConfig(
        data=str(path), strategies=["random", "margin"], seed_size=10, batch_size=10, rounds=1, repeats=1,
        out=str(out), train_params=TrainParams(n_estimators=5), progress=False,
    ))
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("labelloop-simulate").experiment_id])
    assert len(runs) == 3


def test_simulate_on_a_mixed_table_uses_every_column_and_reports_the_roles(tmp_path):
    """Categorical, text, numeric with NaN and an id column: every feature used, the id not, each role printed."""
    from labelloop.config import TextParams, TrainParams
    from tests.domain.acquisition.test_space import mixed_frame

    frame, y, _ = mixed_frame(n=260, seed=4)
    frame.insert(0, "ticket_id", [f"T{i:05d}" for i in range(len(frame))])
    frame["label"] = y
    frame.loc[[3, 7], "label"] = None  # rows without a label: left out, and said so
    path = tmp_path / "tickets.parquet"
    frame.to_parquet(path)
    printed: list[str] = []
    summary = run_simulation(SimulationConfig(
        data=str(path), strategies=["random", "margin", "hybrid", "bald"], seed_size=20, batch_size=15, rounds=2, repeats=1,
        committee_size=2, out=str(tmp_path / "out"), log_mlflow=False, progress=False,
        train_params=TrainParams(estimator="logistic_regression", text=TextParams(char_ngrams=None, min_df=1)),
    ), echo=printed.append)
    assert summary["roles"] == {"ticket_id": "id", "amount": "numeric", "country": "categorical", "body": "text"}
    assert summary["feature_columns"] == ["amount", "country", "body"] and summary["n_features"] == 3
    assert summary["estimator"] == "logistic_regression" and summary["n_rows"] == len(frame) - 2
    table = "\n".join(printed)
    for column, role in summary["roles"].items():
        assert any(line.split()[:2] == [column, role] for line in printed), (column, role, table)
    assert "2 of 260 rows have no label" in table and "ticket_id" in table
    assert any("looks like an id" in w for w in summary["schema_warnings"])
    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    assert set(curves["strategy"]) == {"random", "margin", "hybrid", "bald"}
    assert sorted(curves["n_labels"].unique()) == [20, 35, 50]


def test_schema_overrides_reach_the_simulation(tmp_path):
    from labelloop.config import TrainParams

    rng = np.random.default_rng(0)
    n = 200
    y = rng.choice(["a", "b"], size=n)
    frame = pd.DataFrame({"code": rng.integers(0, 5, n), "x": rng.normal(size=n) + (y == "b"), "label": y})
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    config = SimulationConfig(data=str(path), strategies=["margin"], seed_size=20, batch_size=10, rounds=1, repeats=1,
                              out=str(tmp_path / "out"), log_mlflow=False, progress=False,
                              train_params=TrainParams(n_estimators=5, max_depth=2),
                              categorical_columns=["code"], drop_columns=[])
    summary = run_simulation(config, echo=None)
    assert summary["roles"] == {"code": "categorical", "x": "numeric"}
    dropped = run_simulation(SimulationConfig(**{**config.__dict__, "drop_columns": ["code"], "categorical_columns": [],
                                                 "out": str(tmp_path / "out2")}), echo=None)
    assert dropped["roles"] == {"code": "ignored", "x": "numeric"} and dropped["feature_columns"] == ["x"]
