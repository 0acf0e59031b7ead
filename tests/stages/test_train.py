"""The train stage: a challenger trained, tracked and registered in MLflow (a real store, SQLite in the
workspace), and the DVC pipeline (validate → train → evaluate) run by real `dvc repro` / `dvc exp run`
in a workspace registry."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.adapters import tracking
from labelloop.config import TrainParams, dump_params
from labelloop.schema import ColumnSpec, Schema
from labelloop.stages import train
from tests.conftest import clone_workspace

FAST = TrainParams(n_estimators=30, max_depth=3)
WORDS = {"billing": ["invoice", "charged", "refund", "payment"], "bug": ["crash", "error", "broken", "freeze"],
         "praise": ["love", "great", "thanks", "excellent"]}
FILLER = ["the", "app", "today", "again", "please", "my", "account", "when", "opening", "screen"]


def mixed_table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A support-ticket table: an id, a nullable amount, a nullable country code, a text, and the label."""
    rng = np.random.RandomState(seed)
    labels = rng.choice(list(WORDS), n, p=[0.4, 0.35, 0.25])
    every_word = [word for words in WORDS.values() for word in words]
    text = [" ".join([*rng.choice(WORDS[label] if rng.rand() < 0.8 else every_word, 2), *rng.choice(FILLER, 6)])
            for label in labels]
    country = [rng.choice(["fr", "de"] if label == "billing" else ["us", "es", "it", "fr"]) for label in labels]
    amount = np.where(labels == "billing", rng.normal(80, 20, n), rng.normal(20, 20, n))
    frame = pd.DataFrame({
        "ticket_id": [f"T{i:05d}" for i in range(n)],
        "amount": np.where(rng.rand(n) < 0.15, np.nan, amount),
        "country": pd.Series([None if rng.rand() < 0.05 else c for c in country], dtype=object),
        "text": pd.Series([None if rng.rand() < 0.05 else t for t in text], dtype=object),
        "label": labels,
    })
    return frame


MIXED = Schema([ColumnSpec("ticket_id", "id", "string"), ColumnSpec("amount", "numeric", "float64", True),
                ColumnSpec("country", "categorical", "string", True, categories=["de", "es", "fr", "it", "us"]),
                ColumnSpec("text", "text", "string", True, min_length=30, max_length=80)], sorted(WORDS))


@pytest.mark.parametrize(("estimator", "text"), [("xgboost", True), ("logistic_regression", True),
                                                 ("hist_gradient_boosting", False)])
def test_each_estimator_trains_evaluates_and_stores_as_a_safe_skops_pipeline(estimator, text):
    import skops.io

    table = mixed_table()
    schema = MIXED if text else Schema([c for c in MIXED.columns if c.role != "text"], MIXED.class_names)
    labeled, holdout = table.iloc[:300], table.iloc[300:]
    model = train.fit(labeled, schema, TrainParams(estimator=estimator, n_estimators=20, max_depth=3))
    evaluation = train.evaluate(model, holdout, schema)
    majority = float(holdout["label"].value_counts(normalize=True).iloc[0])
    assert evaluation.metrics["accuracy"] > majority + 0.1, evaluation.metrics  # it learned from the columns
    assert evaluation.probas.shape == (100, 3)
    serialization, data, trusted = tracking.pipeline_storage(model.pipeline_)
    assert serialization == tracking.SKOPS and data is not None
    assert all(tracking.is_safe_type(name) for name in trusted) and not any("labelloop" in name for name in trusted)
    loaded = skops.io.loads(data, trusted=trusted)
    assert type(loaded).__name__ == "Pipeline"
    np.testing.assert_allclose(loaded.predict_proba(holdout[schema.feature_columns]),
                               model.pipeline_.predict_proba(holdout[schema.feature_columns]))


def test_a_pipeline_naming_an_unsafe_type_is_stored_with_cloudpickle():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    assert tracking.pipeline_storage(Pipeline([("f", FunctionTransformer(json.dumps))]))[0] == tracking.CLOUDPICKLE
    assert tracking.pipeline_storage(Pipeline([("f", FunctionTransformer(np.ravel))]))[0] == tracking.SKOPS
    assert not tracking.is_safe_type("labelloop.model.LabelloopClassifier") and not tracking.is_safe_type("builtins.eval")


def test_train_registers_a_challenger_with_data_tag_and_metrics(workspace):
    result = train.train_challenger(workspace, FAST)
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
    first = train.train_challenger(workspace, FAST)
    again = train.train_challenger(workspace, FAST)
    assert (again.version, again.run_id, again.created) == (first.version, first.run_id, False)
    other = train.train_challenger(workspace, TrainParams(n_estimators=31, max_depth=3))
    assert other.version != first.version


def test_train_refuses_an_untagged_dataset(workspace):
    labeled = pd.read_parquet(workspace.labeled_path)
    labeled.head(10).to_parquet(workspace.labeled_path)  # edited by hand, never versioned
    with pytest.raises(RuntimeError, match="not a tagged data version"):
        train.train_challenger(workspace, FAST)


# -- the DVC pipeline --------------------------------------------------------------------------------


def _dvc(registry: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=registry, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def _small_train(ws, **overrides):
    params = ws.params().with_overrides(train={"n_estimators": 20, "max_depth": 3, **overrides})
    ws.params_path.write_text(dump_params(params))
    return params


@pytest.fixture(scope="module")
def reproduced(workspace_template, tmp_path_factory):
    """A workspace whose registry ran `dvc repro` once (a smaller model, committed), shared by the DVC pipeline
    tests: each `labelloop pipeline` stage is a process of its own, so a repro costs three of them."""
    from labelloop.adapters import versioning

    ws = clone_workspace(workspace_template, tmp_path_factory.mktemp("reproduced") / "ws")
    params = _small_train(ws)
    versioning.git(ws.registry_dir, "commit", "-qam", "smaller model for the test")
    result = _dvc(ws.registry_dir, "repro")
    assert result.returncode == 0, result.stderr + result.stdout
    return ws, params


@pytest.mark.slow
def test_dvc_repro_rebuilds_the_same_model_metrics_as_the_train_task(reproduced, tmp_path):
    workspace = clone_workspace(reproduced[0], tmp_path / "ws")  # the train task writes the MLflow store
    metrics = json.loads((workspace.registry_dir / "metrics.json").read_text())
    assert (workspace.registry_dir / "plots/confusion.csv").exists()
    trained = train.train_challenger(workspace, reproduced[1].train)
    assert metrics["accuracy"] == pytest.approx(trained.metrics["accuracy"])
    assert metrics["log_loss"] == pytest.approx(trained.metrics["log_loss"])


@pytest.mark.slow
def test_dvc_exp_run_compares_a_variant(reproduced, tmp_path):
    from labelloop.adapters import versioning

    workspace = clone_workspace(reproduced[0], tmp_path / "ws")  # an experiment changes the registry
    versioning.git(workspace.registry_dir, "add", "-A")
    versioning.git(workspace.registry_dir, "commit", "-qm", "pipeline outputs")
    result = _dvc(workspace.registry_dir, "exp", "run", "-S", "train.max_depth=2")
    assert result.returncode == 0, result.stderr + result.stdout
    shown = _dvc(workspace.registry_dir, "exp", "show", "--json")
    assert shown.returncode == 0
    assert '"max_depth": 2' in shown.stdout.replace("'", '"') or "max_depth\": 2" in shown.stdout


@pytest.mark.slow
def test_validate_stage_fails_on_a_holdout_leak_and_names_it(workspace):
    labeled = pd.read_parquet(workspace.labeled_path)
    holdout = pd.read_parquet(workspace.holdout_path)
    leaked = pd.concat([labeled, holdout.head(1).assign(batch_id="x", source="x")], ignore_index=True)
    leaked.to_parquet(workspace.labeled_path)
    with pytest.raises(train.DataValidationError, match="holdout overlap"):
        train.stage_validate(workspace.registry_dir)
    report = json.loads((workspace.registry_dir / "reports/validation.json").read_text())
    assert report["holdout_overlap"] == [holdout.item_id.iloc[0]]


@pytest.mark.slow
def test_validate_stage_reports_unknown_labels_and_duplicates(workspace):
    labeled = pd.read_parquet(workspace.labeled_path)
    broken = pd.concat([labeled, labeled.head(1)], ignore_index=True)
    broken.loc[0, "label"] = "not-a-class"
    broken.to_parquet(workspace.labeled_path)
    with pytest.raises(train.DataValidationError) as error:
        train.stage_validate(workspace.registry_dir)
    assert "ExpectColumnValuesToBeInSet(label" in str(error.value)
    assert "ExpectColumnValuesToBeUnique(item_id)" in str(error.value)


def test_the_dvc_train_stage_stores_one_model_file_and_refuses_a_skops_file_naming_unsafe_types(workspace, monkeypatch):
    import skops.io
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    _small_train(workspace)
    registry, holdout = workspace.registry_dir, pd.read_parquet(workspace.holdout_path)
    assert train.stage_train(registry).name == "model.skops"
    expected = train.load_pipeline_model(registry).predict_proba(holdout)
    monkeypatch.setattr(tracking, "pipeline_storage", lambda pipeline: (tracking.CLOUDPICKLE, None, []))
    assert train.stage_train(registry).name == "model.pkl"  # the fallback: and the skops file is gone
    assert sorted(p.name for p in (registry / "model").iterdir()) == ["model.pkl", "serialization.json", "train_params.json"]
    np.testing.assert_allclose(train.load_pipeline_model(registry).predict_proba(holdout), expected)
    # A skops file that names a type beyond the safe ones is not loaded, whatever serialization.json says.
    skops.io.dump(Pipeline([("f", FunctionTransformer(json.dumps))]), registry / "model" / "model.skops")
    (registry / "model" / "serialization.json").write_text(json.dumps({"format": "skops", "file": "model.skops"}))
    with pytest.raises(tracking.IncompatibleModel, match=r"skops, naming json.dumps"):
        train.load_pipeline_model(registry)


# -- seed twins (gate.seed_twins, issue 16) ------------------------------------------------------------

SEEDED = TrainParams(estimator="random_forest", estimator_params={"n_estimators": 20})


def _count_fits(monkeypatch) -> list[int]:
    """The random_state of every fit the train stage makes from here on."""
    fits: list[int] = []
    real = train.fit

    def counted(labeled, schema, params):
        fits.append(params.random_state)
        return real(labeled, schema, params)

    monkeypatch.setattr(train, "fit", counted)
    return fits


def _twins_file(workspace, params: TrainParams, data_tag: str) -> Path:
    return train.seed_twins_path(workspace, params.model_name, data_tag, train.params_hash(params),
                                 train.file_digest(workspace.holdout_path))


def test_planned_twins_none_for_a_deterministic_estimator_two_for_a_seeded_one():
    from labelloop.config import GateParams

    schema = Schema.numeric(["f1"], ["a", "b"])
    assert train.planned_twins(GateParams(), FAST, schema) == (0, False)  # xgboost defaults: no extra fit
    assert train.planned_twins(GateParams(), SEEDED, schema) == (train.TWINS_AUTO, False)
    assert train.planned_twins(GateParams(seed_twins=4), SEEDED, schema) == (4, False)
    assert train.planned_twins(GateParams(seed_twins=0), SEEDED, schema) == (0, False)
    assert train.planned_twins(GateParams(min_confidence=0), SEEDED, schema) == (0, False)  # no test to feed
    assert train.planned_twins(GateParams(seed_twins=2), FAST, schema) == (2, True)  # asked for: a probe first
    assert train.planned_twins(GateParams(), TrainParams(estimator="hist_gradient_boosting"), schema) == (2, True)


def test_seed_twins_are_fitted_once_kept_and_reused_on_a_rerun(workspace, monkeypatch):
    from labelloop.config import GateParams
    from labelloop.model import twin_seeds

    fits = _count_fits(monkeypatch)
    first = train.train_challenger(workspace, SEEDED, GateParams())
    twins = twin_seeds(SEEDED.random_state, train.TWINS_AUTO)
    assert fits == [SEEDED.random_state, *twins]
    path = _twins_file(workspace, SEEDED, first.data_tag)
    kept = pd.read_parquet(path)
    assert kept[train.TWIN_SEED].drop_duplicates().tolist() == fits
    holdout = pd.read_parquet(workspace.holdout_path)
    assert len(kept) == 3 * len(holdout)
    assert tracking.client(workspace).get_run(first.run_id).data.metrics["seed_twins"] == train.TWINS_AUTO
    written = path.stat().st_mtime_ns
    fits.clear()
    again = train.train_challenger(workspace, SEEDED, GateParams())
    assert (again.version, again.created, fits) == (first.version, False, []) and path.stat().st_mtime_ns == written
    path.unlink()  # lost (state/ wiped, or a crash before they were written): a rerun fits the twins alone
    train.train_challenger(workspace, SEEDED, GateParams())
    assert fits == twins
    pd.testing.assert_frame_equal(pd.read_parquet(path), kept)  # the same seeds give the same twins


def test_a_deterministic_challenger_fits_no_twin_and_a_probe_stops_at_one(workspace, monkeypatch):
    from labelloop.config import GateParams
    from labelloop.model import twin_seeds

    fits = _count_fits(monkeypatch)
    result = train.train_challenger(workspace, FAST, GateParams())
    assert fits == [FAST.random_state] and not list((workspace.state_dir / "gate").glob("twins-*"))
    # Twins asked for on an estimator known to ignore the seed: one probe twin predicts alike, no more are fitted.
    fits.clear()
    train.train_challenger(workspace, FAST, GateParams(seed_twins=3))
    assert fits == twin_seeds(FAST.random_state, 1)
    kept = pd.read_parquet(_twins_file(workspace, FAST, result.data_tag))
    blocks = [block.drop(columns=[train.TWIN_SEED]).reset_index(drop=True) for _, block in kept.groupby(train.TWIN_SEED)]
    assert len(blocks) == 2
    pd.testing.assert_frame_equal(*blocks)
    fits.clear()
    train.train_challenger(workspace, FAST, GateParams(seed_twins=3))
    assert fits == []  # the probe's verdict is kept too
