"""Retraining tracked in MLflow, the registry aliases, and the gate's record.

One MLflow run per retrain; the model is registered as a new version with alias `challenger`.
A retrain is keyed by (data tag, train params): rerunning it returns the version it already made.
MLflow is imported lazily (it costs seconds), only by the functions that need it.

A tracking server that is down: MLflow retries each HTTP request itself (urllib3, with backoff);
labelloop bounds those retries (`bound_mlflow_http`) unless the user set them, and turns the error
MLflow finally raises into one `TrackingUnavailable` naming the tracking URI and the fault. The
stages stay idempotent, so a rerun once the server answers completes the work.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from labelloop.faults import crash_point
from labelloop import versioning
from labelloop.config import GateParams, TrainParams
from labelloop.gate import GateDecision, ModelMetrics, decide
from labelloop.model import LabelloopClassifier
from labelloop.pipeline import TRUSTED_TYPES
from labelloop.retry import TransientError
from labelloop.workspace import Workspace

EXPERIMENT = "labelloop"
SKOPS_TRUSTED_TYPES = TRUSTED_TYPES
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"

# MLflow's own defaults (7 retries, backoff factor 2, 120 s per request) keep one call to a dead server
# retrying for about four minutes; these keep it to seconds. A value the user set is never overridden.
MLFLOW_HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
F = TypeVar("F", bound=Callable[..., Any])


class TrackingUnavailable(TransientError):
    """The MLflow tracking server is unreachable, answers 5xx or times out (after MLflow's bounded retries)."""


def bound_mlflow_http(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set MLflow's HTTP retry/timeout variables to bounded values where the user has not; returns what was set."""
    environ = os.environ if environ is None else environ
    applied = {key: value for key, value in MLFLOW_HTTP_BOUNDS.items() if not environ.get(key, "").strip()}
    environ.update(applied)
    return applied


def _server_fault(error: BaseException) -> str | None:
    """The short reason when `error` is MLflow giving up on an HTTP request; None for any other error."""
    message = str(error)
    if not (message.startswith("API request to ") and " failed with exception " in message):
        return None
    status = re.search(r"too many (\d{3}) error responses", message)
    if status:
        fault = f"HTTP {status.group(1)}"
    elif "Connection refused" in message or "NewConnectionError" in message:
        fault = "connection refused"
    elif "timed out" in message.lower():
        fault = f"no answer within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '120')} s"
    else:
        fault = message.split(" failed with exception ", 1)[1][:300]
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    return f"{fault} (MLflow retried each request {retries} times, MLFLOW_HTTP_REQUEST_MAX_RETRIES)"


def _tracking_server_faults(what: str) -> Callable[[F], F]:
    """Decorate a function whose first argument is the workspace: an MLflow HTTP failure becomes one
    `TrackingUnavailable` naming the tracking URI; every other error passes through unchanged."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(workspace: Workspace, *args: Any, **kwargs: Any) -> Any:
            from mlflow.exceptions import MlflowException

            try:
                return function(workspace, *args, **kwargs)
            except MlflowException as error:
                fault = _server_fault(error)
                if fault is None:
                    raise
                raise TrackingUnavailable(f"MLflow tracking server at {workspace.tracking_uri}: {what} failed: {fault}; "
                                          "rerun the stage once it answers (the rerun completes the same work)") from error

        return wrapper  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    version: str
    data_tag: str
    metrics: dict[str, float]
    created: bool


def client(workspace: Workspace):
    bound_mlflow_http()  # before the first request: MLflow reads these per request
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(workspace.tracking_uri)
    mlflow.set_registry_uri(workspace.tracking_uri)
    return MlflowClient(tracking_uri=workspace.tracking_uri, registry_uri=workspace.tracking_uri)


def experiment_id(workspace: Workspace) -> str:
    mlflow_client = client(workspace)
    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow_client.create_experiment(EXPERIMENT, artifact_location=workspace.artifacts_dir.as_uri())


def params_hash(params: TrainParams) -> str:
    return hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def pinned_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("xgboost", "scikit-learn", "pandas", "numpy", "cloudpickle")]


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\- /]", "_", name)


def find_version(workspace: Workspace, model_name: str, data_tag: str, phash: str):
    mlflow_client = client(workspace)
    try:
        versions = mlflow_client.search_model_versions(
            f"name = '{model_name}' and tags.data_tag = '{data_tag}' and tags.params_hash = '{phash}'"
        )
    except Exception as error:  # MLflow raises a bare MlflowException for a missing model
        if "RESOURCE_DOES_NOT_EXIST" in str(error):
            return None
        raise
    return max(versions, key=lambda v: int(v.version)) if versions else None


@_tracking_server_faults("training a challenger")
def train_challenger(workspace: Workspace, params: TrainParams) -> TrainResult:
    """Train on the labelled set at the registry's HEAD version; register it as `challenger`."""
    import mlflow

    registry = workspace.registry_dir
    data_tag = versioning.version_of(registry, workspace.labeled_path)
    if data_tag is None:
        raise RuntimeError("the labelled set is not a tagged data version (changed since its last tag); run the dataset stage first")
    schema = workspace.schema()
    phash = params_hash(params)
    existing = find_version(workspace, params.model_name, data_tag, phash)
    mlflow_client = client(workspace)
    if existing is not None:
        run = mlflow_client.get_run(existing.run_id)
        mlflow_client.set_registered_model_alias(params.model_name, CHALLENGER, existing.version)
        return TrainResult(existing.run_id, str(existing.version), data_tag, dict(run.data.metrics), created=False)

    from labelloop import pipeline

    labeled = pd.read_parquet(workspace.labeled_path)
    holdout = pd.read_parquet(workspace.holdout_path)
    features = labeled[schema.feature_columns]
    started = time.perf_counter()
    model = pipeline.fit(labeled, schema, params)
    fit_seconds = time.perf_counter() - started
    evaluation = pipeline.evaluate(model, holdout, schema)
    metrics, recall = evaluation.metrics, evaluation.class_recall

    from mlflow.models import infer_signature

    signature = infer_signature(features.head(20), model.predict_proba(features.head(20)))
    with mlflow.start_run(experiment_id=experiment_id(workspace), run_name=f"train-{data_tag}") as run:
        mlflow.log_params(params.model_dump(mode="json"))
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
        dataset = mlflow.data.from_pandas(labeled, name=data_tag, targets="label", source=workspace.labeled_path.as_uri())
        mlflow.log_input(dataset, context="training")
        info = mlflow.sklearn.log_model(
            model, name="model", signature=signature, input_example=features.head(3),
            pip_requirements=pinned_requirements(),
            # skops, not pickle: loading runs no arbitrary code; these are the only non-builtin types.
            serialization_format="skops", skops_trusted_types=SKOPS_TRUSTED_TYPES,
        )
        with contextlib.redirect_stderr(io.StringIO()):  # register_model eprints a banner per call
            version = mlflow.register_model(info.model_uri, params.model_name, tags={"data_tag": data_tag, "params_hash": phash})
        crash_point("train.after_register")
        mlflow.set_tag("model_version", version.version)
        _log_plots(workspace, evaluation, schema, run.info.run_id, len(labeled), metrics)
    mlflow_client.set_registered_model_alias(params.model_name, CHALLENGER, version.version)
    return TrainResult(run.info.run_id, str(version.version), data_tag, metrics, created=True)


def _log_plots(workspace: Workspace, evaluation, schema, run_id: str, n_labels: int, metrics: dict[str, float]) -> None:
    """Confusion matrix, reliability diagram, and the learning curve of all runs so far."""
    import tempfile
    from pathlib import Path

    import mlflow

    from labelloop import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        for png in pipeline.write_plots(evaluation, schema, Path(tmp)):
            mlflow.log_artifact(str(png), artifact_path="plots")
        mlflow.log_table(evaluation.calibration, artifact_file="plots/calibration.json")
        history = [(int(r.data.metrics.get("n_labels", 0)), r.data.metrics.get("accuracy"), r.data.metrics.get("macro_f1"))
                   for r in client(workspace).search_runs([experiment_id(workspace)]) if r.info.run_id != run_id
                   and "accuracy" in r.data.metrics]
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


@_tracking_server_faults("reading an alias")
def alias_version(workspace: Workspace, model_name: str, alias: str) -> str | None:
    mlflow_client = client(workspace)
    try:
        return str(mlflow_client.get_model_version_by_alias(model_name, alias).version)
    except Exception as error:  # MlflowException: the alias or the model does not exist
        if "RESOURCE_DOES_NOT_EXIST" in str(error) or "not found" in str(error).lower():
            return None
        raise


def model_metrics(workspace: Workspace, model_name: str, version: str) -> ModelMetrics:
    mlflow_client = client(workspace)
    model_version = mlflow_client.get_model_version(model_name, version)
    run = mlflow_client.get_run(model_version.run_id)
    tags = run.data.tags
    return ModelMetrics(
        version=str(version),
        metrics={k: v for k, v in run.data.metrics.items() if not k.startswith("recall.")},
        class_recall=json.loads(tags.get("class_recall", "{}")),
        holdout_digest=tags.get("holdout_digest", ""),
        new_labels=int(tags.get("n_labels", 0)),
    )


@_tracking_server_faults("evaluating the gate")
def evaluate_gate(workspace: Workspace, model_name: str, rules: GateParams) -> GateDecision:
    """The decision for the current challenger against the current champion (pure once metrics are read)."""
    challenger_version = alias_version(workspace, model_name, CHALLENGER)
    if challenger_version is None:
        raise RuntimeError(f"model {model_name!r} has no '{CHALLENGER}' version to gate; run the train stage first")
    champion_version = alias_version(workspace, model_name, CHAMPION)
    challenger = model_metrics(workspace, model_name, challenger_version)
    if champion_version == challenger_version:
        return GateDecision(False, [f"version {challenger_version} is already champion"], rules.primary_metric,
                            challenger.metrics[rules.primary_metric], challenger.metrics[rules.primary_metric],
                            challenger_version, champion_version)
    champion = model_metrics(workspace, model_name, champion_version) if champion_version else None
    if champion is not None:
        challenger = ModelMetrics(challenger.version, challenger.metrics, challenger.class_recall, challenger.holdout_digest,
                                  new_labels=challenger.new_labels - champion.new_labels)
    return decide(challenger, champion, rules)


@_tracking_server_faults("recording the gate decision")
def record_decision(workspace: Workspace, model_name: str, decision: GateDecision) -> None:
    """Tags on the challenger's run and model version: decision, every reason, the champion it faced."""
    mlflow_client = client(workspace)
    model_version = mlflow_client.get_model_version(model_name, decision.challenger_version)
    tags: dict[str, Any] = {
        "gate.decision": decision.label,
        "gate.reasons": " | ".join(decision.reasons),
        "gate.primary_metric": decision.primary_metric,
        "gate.champion_version": str(decision.champion_version),
    }
    for key, value in tags.items():
        mlflow_client.set_tag(model_version.run_id, key, value)
        mlflow_client.set_model_version_tag(model_name, decision.challenger_version, key, value)
    crash_point("gate.after_record")


@_tracking_server_faults("moving the champion alias")
def promote(workspace: Workspace, model_name: str, version: str, reason: str = "") -> str | None:
    """Move `champion` to `version`; the version it leaves keeps `previous-champion`. Idempotent."""
    mlflow_client = client(workspace)
    current = alias_version(workspace, model_name, CHAMPION)
    if current == str(version):
        return current
    if current is not None:
        mlflow_client.set_registered_model_alias(model_name, PREVIOUS, current)
        crash_point("gate.after_previous")
    mlflow_client.set_registered_model_alias(model_name, CHAMPION, str(version))
    if reason:
        mlflow_client.set_model_version_tag(model_name, str(version), "promoted_because", reason[:5000])
    return current


@_tracking_server_faults("resuming the gate")
def resume_gate(workspace: Workspace, model_name: str) -> str | None:
    """Finish a gate a crash interrupted: the challenger's recorded decision is `promote` but it is
    not champion. A version demoted by a manual rollback is left alone. Returns the version promoted."""
    challenger = alias_version(workspace, model_name, CHALLENGER)
    if challenger is None or challenger == alias_version(workspace, model_name, CHAMPION):
        return None
    tags = client(workspace).get_model_version(model_name, challenger).tags
    if tags.get("gate.decision") != "promote" or tags.get("rolled_back"):
        return None
    promote(workspace, model_name, challenger, tags.get("gate.reasons", "resumed after an interrupted gate"))
    return challenger


@_tracking_server_faults("looking up the model of this data version")
def needs_retrain(workspace: Workspace, params: TrainParams, data_tag: str) -> bool:
    """True unless a model for this data version and these params has already been gated."""
    version = find_version(workspace, params.model_name, data_tag, params_hash(params))
    return version is None or "gate.decision" not in version.tags


def mark_rolled_back(workspace: Workspace, model_name: str, version: str, reason: str) -> None:
    client(workspace).set_model_version_tag(model_name, str(version), "rolled_back", reason[:5000])


_MODEL_CACHE: dict[tuple[str, str, str], LabelloopClassifier] = {}


def load_model(workspace: Workspace, model_name: str, version: str) -> LabelloopClassifier:
    """A registered version's model, cached per process (versions are immutable)."""
    key = (workspace.tracking_uri, model_name, str(version))
    if key not in _MODEL_CACHE:
        import mlflow

        client(workspace)
        _MODEL_CACHE[key] = mlflow.sklearn.load_model(f"models:/{model_name}/{version}")
    return _MODEL_CACHE[key]


def champion_model(workspace: Workspace, model_name: str) -> tuple[str, LabelloopClassifier] | None:
    version = alias_version(workspace, model_name, CHAMPION)
    if version is None:
        return None
    return version, load_model(workspace, model_name, version)


def predict_in_batches(model: LabelloopClassifier, features: pd.DataFrame, batch_rows: int = 100_000) -> np.ndarray:
    parts = [model.predict_proba(features.iloc[i:i + batch_rows]) for i in range(0, len(features), batch_rows)]
    return np.vstack(parts) if parts else np.empty((0, len(model.classes_)))
