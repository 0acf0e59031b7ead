"""The DVC pipeline (validate → train → evaluate) run by real `dvc repro` / `dvc exp run` in a workspace registry."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from labelloop.stages import train as pipeline
from labelloop.adapters import tracking
from labelloop.config import TrainParams

pytestmark = pytest.mark.slow


def _dvc(registry: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=registry, env=env,
                          capture_output=True, text=True, timeout=600)


def _small_train(ws, **train):
    params = ws.params().with_overrides(train={"n_estimators": 20, "max_depth": 3, **train})
    ws.params_path.write_text(__import__("labelloop.config", fromlist=["dump_params"]).dump_params(params))
    return params


def test_dvc_repro_rebuilds_the_same_model_metrics_as_the_train_task(workspace):
    params = _small_train(workspace)
    from labelloop.adapters import versioning

    versioning.git(workspace.registry_dir, "commit", "-qam", "smaller model for the test")
    result = _dvc(workspace.registry_dir, "repro")
    assert result.returncode == 0, result.stderr + result.stdout
    metrics = json.loads((workspace.registry_dir / "metrics.json").read_text())
    assert (workspace.registry_dir / "plots/confusion.csv").exists()
    trained = tracking.train_challenger(workspace, params.train)
    assert metrics["accuracy"] == pytest.approx(trained.metrics["accuracy"])
    assert metrics["log_loss"] == pytest.approx(trained.metrics["log_loss"])


def test_dvc_exp_run_compares_a_variant(workspace):
    _small_train(workspace)
    from labelloop.adapters import versioning

    versioning.git(workspace.registry_dir, "commit", "-qam", "smaller model for the test")
    assert _dvc(workspace.registry_dir, "repro").returncode == 0
    versioning.git(workspace.registry_dir, "add", "-A")
    versioning.git(workspace.registry_dir, "commit", "-qm", "pipeline outputs")
    result = _dvc(workspace.registry_dir, "exp", "run", "-S", "train.max_depth=2")
    assert result.returncode == 0, result.stderr + result.stdout
    shown = _dvc(workspace.registry_dir, "exp", "show", "--json")
    assert shown.returncode == 0
    assert '"max_depth": 2' in shown.stdout.replace("'", '"') or "max_depth\": 2" in shown.stdout


def test_validate_stage_fails_on_a_holdout_leak_and_names_it(workspace):
    labeled = pd.read_parquet(workspace.labeled_path)
    holdout = pd.read_parquet(workspace.holdout_path)
    leaked = pd.concat([labeled, holdout.head(1).assign(batch_id="x", source="x")], ignore_index=True)
    leaked.to_parquet(workspace.labeled_path)
    with pytest.raises(pipeline.DataValidationError, match="holdout overlap"):
        pipeline.stage_validate(workspace.registry_dir)
    report = json.loads((workspace.registry_dir / "reports/validation.json").read_text())
    assert report["holdout_overlap"] == [holdout.item_id.iloc[0]]


def test_validate_stage_reports_unknown_labels_and_duplicates(workspace):
    labeled = pd.read_parquet(workspace.labeled_path)
    broken = pd.concat([labeled, labeled.head(1)], ignore_index=True)
    broken.loc[0, "label"] = "not-a-class"
    broken.to_parquet(workspace.labeled_path)
    with pytest.raises(pipeline.DataValidationError) as error:
        pipeline.stage_validate(workspace.registry_dir)
    assert "ExpectColumnValuesToBeInSet(label" in str(error.value)
    assert "ExpectColumnValuesToBeUnique(item_id)" in str(error.value)
