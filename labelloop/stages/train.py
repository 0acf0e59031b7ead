"""The train stage: fit and evaluate, and a challenger trained, tracked and registered in MLflow.

`fit` and `evaluate` are the one code path behind both the Prefect train task (`train_challenger`:
one MLflow run per retrain, the model registered as a new version with alias `challenger`; a retrain
is keyed by (data tag, train params), so rerunning it returns the version it already made) and
`dvc repro`.

The DVC stages (`labelloop pipeline validate|train|evaluate`) work on a registry directory alone
(data/, schema.json, params.yaml), so they run in a plain checkout of any data version and inside
`dvc exp run`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.adapters import tracking, versioning
from labelloop.columns import ITEM_ID, LABEL
from labelloop.config import TrainParams, load_params
from labelloop.core.faults import crash_point
from labelloop.core.io import read_parquet, write_json
from labelloop.domain.metrics import holdout_metrics
from labelloop.model import LabelloopClassifier
from labelloop.schema import Schema
from labelloop.workspace import Workspace

MODEL_FILE = "model.skops"
TRUSTED_TYPES = ["labelloop.model.LabelloopClassifier", "xgboost.core.Booster", "xgboost.sklearn.XGBClassifier"]


class DataValidationError(ValueError):
    """The labelled set failed its expectations; the message lists every failure."""


@dataclass
class Evaluation:
    metrics: dict[str, float]
    class_recall: dict[str, float]
    probas: np.ndarray
    confusion: pd.DataFrame  # actual, predicted (one row per holdout example)
    calibration: pd.DataFrame  # bin, confidence, accuracy, count


def load_schema(registry: Path) -> Schema:
    return Schema.from_json(json.loads((registry / "schema.json").read_text()))


def fit(labeled: pd.DataFrame, schema: Schema, params: TrainParams) -> LabelloopClassifier:
    return LabelloopClassifier.from_params(params, schema.class_names).fit(labeled[schema.feature_columns], labeled[LABEL])


def evaluate(model: LabelloopClassifier, holdout: pd.DataFrame, schema: Schema, bins: int = 10) -> Evaluation:
    probas = model.predict_proba(holdout[schema.feature_columns])
    metrics, recall = holdout_metrics(probas, holdout[LABEL].to_numpy(), schema.class_names)
    predicted = np.asarray(schema.class_names, dtype=object)[probas.argmax(axis=1)]
    confusion = pd.DataFrame({"actual": holdout[LABEL].astype(str).to_numpy(), "predicted": predicted.astype(str)})
    confidence = probas.max(axis=1)
    correct = predicted == confusion["actual"].to_numpy()
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)
    rows = [{"bin": b, "confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean()),
             "count": int((which == b).sum())} for b in range(bins) if (which == b).any()]
    return Evaluation(metrics, recall, probas, confusion, pd.DataFrame(rows))


def validate_labeled(labeled: pd.DataFrame, holdout: pd.DataFrame, schema: Schema) -> dict:
    """Expectations on the labelled set, plus: no labelled item is in the holdout."""
    from labelloop.adapters.validation import labeled_set_checks, run_checks

    missing = [c for c in (ITEM_ID, LABEL, *schema.feature_columns) if c not in labeled.columns]
    if missing:
        raise DataValidationError(f"labelled set is missing columns {missing[:10]}")
    failures = run_checks(labeled, labeled_set_checks(schema.feature_columns, schema.class_names), "labeled_set")
    leaked = sorted(set(labeled[ITEM_ID]) & set(holdout[ITEM_ID]))
    report = {
        "rows": len(labeled),
        "failed_rows": int(failures["row"].nunique()) if len(failures) else 0,
        "failures": failures.groupby("reason")["row"].count().to_dict() if len(failures) else {},
        "holdout_overlap": leaked[:20],
        "success": failures.empty and not leaked,
    }
    return report


# -- DVC stages -------------------------------------------------------------------------------------

def stage_validate(registry: Path) -> dict:
    schema = load_schema(registry)
    report = validate_labeled(read_parquet(registry / "data/labeled.parquet"), read_parquet(registry / "data/holdout.parquet"),
                              schema)
    write_json(registry / "reports/validation.json", report)
    if not report["success"]:
        overlap = f"holdout overlap {report['holdout_overlap']}" if report["holdout_overlap"] else ""
        raise DataValidationError(f"labelled set failed validation: {report['failures'] or ''} {overlap}".strip())
    return report


def stage_train(registry: Path) -> Path:
    import skops.io

    schema = load_schema(registry)
    params = load_params(registry / "params.yaml").train
    model = fit(read_parquet(registry / "data/labeled.parquet"), schema, params)
    out = registry / "model"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{MODEL_FILE}.tmp"
    skops.io.dump(model, tmp)
    tmp.replace(out / MODEL_FILE)
    write_json(out / "train_params.json", params.model_dump(mode="json"))
    return out / MODEL_FILE


def load_pipeline_model(registry: Path) -> LabelloopClassifier:
    import skops.io

    return skops.io.load(registry / "model" / MODEL_FILE, trusted=TRUSTED_TYPES)


def stage_evaluate(registry: Path) -> dict[str, float]:
    schema = load_schema(registry)
    evaluation = evaluate(load_pipeline_model(registry), read_parquet(registry / "data/holdout.parquet"), schema)
    metrics = dict(evaluation.metrics)
    metrics.update({f"recall.{c}": r for c, r in evaluation.class_recall.items()})
    write_json(registry / "metrics.json", metrics)
    (registry / "plots").mkdir(exist_ok=True)
    evaluation.confusion.to_csv(registry / "plots/confusion.csv", index=False)
    evaluation.calibration.to_csv(registry / "plots/calibration.csv", index=False)
    return metrics


def write_plots(evaluation: Evaluation, schema: Schema, directory: Path) -> list[Path]:
    """Confusion-matrix and reliability-diagram PNGs (logged to MLflow by the train task)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    directory.mkdir(parents=True, exist_ok=True)
    matrix = confusion_matrix(evaluation.confusion["actual"], evaluation.confusion["predicted"], labels=schema.class_names)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(schema.class_names)), schema.class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(schema.class_names)), schema.class_names, fontsize=7)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("holdout confusion matrix")
    fig.tight_layout()
    confusion_png = directory / "confusion_matrix.png"
    fig.savefig(confusion_png, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.plot(evaluation.calibration["confidence"], evaluation.calibration["accuracy"], marker="o")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {evaluation.metrics['ece']:.3f})")
    fig.tight_layout()
    calibration_png = directory / "calibration.png"
    fig.savefig(calibration_png, dpi=100)
    plt.close(fig)
    return [confusion_png, calibration_png]


# -- the train stage: a challenger tracked and registered in MLflow -----------------------------

@dataclass(frozen=True)
class TrainResult:
    run_id: str
    version: str
    data_tag: str
    metrics: dict[str, float]
    created: bool


def params_hash(params: TrainParams) -> str:
    return hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def pinned_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("xgboost", "scikit-learn", "pandas", "numpy", "cloudpickle")]


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\- /]", "_", name)


@tracking.server_faults("training a challenger")
def train_challenger(workspace: Workspace, params: TrainParams) -> TrainResult:
    """Train on the labelled set at the registry's HEAD version; register it as `challenger`."""
    import mlflow

    registry = workspace.registry_dir
    data_tag = versioning.version_of(registry, workspace.labeled_path)
    if data_tag is None:
        raise RuntimeError("the labelled set is not a tagged data version (changed since its last tag); "
                           "run the dataset stage first")
    schema = workspace.schema()
    phash = params_hash(params)
    existing = tracking.find_version(workspace, params.model_name, data_tag, phash)
    mlflow_client = tracking.client(workspace)
    if existing is not None:
        run = mlflow_client.get_run(existing.run_id)
        mlflow_client.set_registered_model_alias(params.model_name, tracking.CHALLENGER, existing.version)
        return TrainResult(existing.run_id, str(existing.version), data_tag, dict(run.data.metrics), created=False)

    labeled = pd.read_parquet(workspace.labeled_path)
    holdout = pd.read_parquet(workspace.holdout_path)
    features = labeled[schema.feature_columns]
    started = time.perf_counter()
    model = fit(labeled, schema, params)
    fit_seconds = time.perf_counter() - started
    evaluation = evaluate(model, holdout, schema)
    metrics, recall = evaluation.metrics, evaluation.class_recall

    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature

    signature = infer_signature(features.head(20), model.predict_proba(features.head(20)))
    with mlflow.start_run(experiment_id=tracking.experiment_id(workspace), run_name=f"train-{data_tag}") as run:
        from labelloop.core.threads import resolve_n_jobs

        mlflow.log_params({**params.model_dump(mode="json"), "n_jobs_resolved": resolve_n_jobs(params.n_jobs)})
        mlflow.log_metrics(metrics)
        mlflow.log_metrics({f"recall.{_metric_key(c)}": r for c, r in recall.items()})
        mlflow.log_metric("n_labels", len(labeled))
        mlflow.log_metric("fit_seconds", fit_seconds)
        tags = {
            "data_tag": data_tag,
            "data_commit": versioning.head_sha(registry),
            "holdout_tag": versioning.HOLDOUT_TAG,
            "holdout_digest": file_digest(workspace.holdout_path),
            "params_hash": phash,
            "n_labels": str(len(labeled)),
            "batches": ",".join(sorted(set(labeled["batch_id"]))),
            "class_recall": json.dumps(recall, sort_keys=True),
        }
        mlflow.set_tags(tags)
        dataset = from_pandas(labeled, name=data_tag, targets=LABEL, source=workspace.labeled_path.as_uri())
        mlflow.log_input(dataset, context="training")
        info = mlflow.sklearn.log_model(
            model, name="model", signature=signature, input_example=features.head(3),
            pip_requirements=pinned_requirements(),
            # skops, not pickle: loading runs no arbitrary code; these are the only non-builtin types.
            serialization_format="skops", skops_trusted_types=TRUSTED_TYPES,
        )
        with contextlib.redirect_stderr(io.StringIO()):  # register_model eprints a banner per call
            version = mlflow.register_model(info.model_uri, params.model_name, tags={"data_tag": data_tag, "params_hash": phash})
        crash_point("train.after_register")
        mlflow.set_tag("model_version", version.version)
        _log_plots(workspace, evaluation, schema, run.info.run_id, len(labeled), metrics)
    mlflow_client.set_registered_model_alias(params.model_name, tracking.CHALLENGER, version.version)
    return TrainResult(run.info.run_id, str(version.version), data_tag, metrics, created=True)


def _log_plots(workspace: Workspace, evaluation, schema, run_id: str, n_labels: int, metrics: dict[str, float]) -> None:
    """Confusion matrix, reliability diagram, and the learning curve of all runs so far."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        for png in write_plots(evaluation, schema, Path(tmp)):
            mlflow.log_artifact(str(png), artifact_path="plots")
        mlflow.log_table(evaluation.calibration, artifact_file="plots/calibration.json")
        runs = tracking.client(workspace).search_runs([tracking.experiment_id(workspace)])
        history = [(int(r.data.metrics.get("n_labels", 0)), r.data.metrics.get("accuracy"), r.data.metrics.get("macro_f1"))
                   for r in runs if r.info.run_id != run_id and "accuracy" in r.data.metrics]
        history.append((n_labels, metrics["accuracy"], metrics["macro_f1"]))
        history.sort()
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([h[0] for h in history], [h[1] for h in history], marker="o", label="accuracy")
        ax.plot([h[0] for h in history], [h[2] for h in history], marker="s", label="macro-F1")
        ax.set_xlabel("labelled examples")
        ax.set_ylabel("holdout")
        ax.set_title("learning curve (all retrains so far)")
        ax.legend()
        fig.tight_layout()
        curve = Path(tmp) / "learning_curve.png"
        fig.savefig(curve, dpi=100)
        plt.close(fig)
        mlflow.log_artifact(str(curve), artifact_path="plots")


@tracking.server_faults("looking up the model of this data version")
def needs_retrain(workspace: Workspace, params: TrainParams, data_tag: str) -> bool:
    """True unless a model for this data version and these params has already been gated."""
    version = tracking.find_version(workspace, params.model_name, data_tag, params_hash(params))
    return version is None or "gate.decision" not in version.tags
