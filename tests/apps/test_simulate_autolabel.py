"""The simulator with auto-labels: human labels counted apart, true precision of each round's auto-labels."""

import pandas as pd

from labelloop.apps.simulate import SimulationConfig, run_simulation
from labelloop.config import AutolabelParams, TrainParams


def test_simulator_auto_labels_count_apart_and_measure_their_true_precision(tmp_path):
    from labelloop.apps.init import shipped_dataset_path

    data = tmp_path / "small.csv"
    pd.read_parquet(shipped_dataset_path()).sample(900, random_state=0).to_csv(data, index=False)
    autolabel = AutolabelParams(enabled=True, check_holdout=True, min_precision=0.6, confidence=0.6, min_confidence=0.5,
                                min_checked=30, min_checked_per_class=3, max_rows=100, holdback_share=0.2)
    config = SimulationConfig(data=str(data), strategies=["margin"], seed_size=40, batch_size=20, rounds=3, repeats=1,
                              out=str(tmp_path / "out"), train_params=TrainParams(n_estimators=20, max_depth=3, n_jobs=1),
                              log_mlflow=False, progress=False, autolabel=autolabel)
    run_simulation(config, echo=None)
    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    # n_labels counts human labels only: the seed, then batch_size per round (check items included).
    assert curves["n_labels"].tolist() == [40, 60, 80, 100]
    assert curves["auto_total"].max() > 0
    active = curves[curves["auto_added"] > 0]
    assert active["auto_true_precision"].between(0, 1).all()
    assert (curves["auto_total"].diff().dropna() >= 0).all()
