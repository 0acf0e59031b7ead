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

from labelloop.core.faults import crash_point
from labelloop.adapters import versioning
from labelloop.config import GateParams, TrainParams
from labelloop.domain.gate import GateDecision, ModelMetrics, decide
from labelloop.model import LabelloopClassifier
from labelloop.stages.train import TRUSTED_TYPES
from labelloop.core.redact import redact_text
from labelloop.core.retry import TransientError
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
                # MLflow's own message never holds the password (`mlflow_uri` keeps it out of MLflow's URLs).
                raise TrackingUnavailable(redact_text(
                    f"MLflow tracking server at {workspace.tracking_uri}: {what} failed: {fault}; "
                    "rerun the stage once it answers (the rerun completes the same work)")) from error

        return wrapper  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    version: str
    data_tag: str
    metrics: dict[str, float]
    created: bool


def mlflow_uri(tracking_uri: str, environ: MutableMapping[str, str] | None = None) -> str:
    """The URI MLflow is given. `http(s)://user:password@host` becomes `http(s)://host` plus MLflow's own
    basic-auth variables (MLFLOW_TRACKING_USERNAME/PASSWORD): MLflow quotes request URLs in its errors
    ("API request to http://... failed"), so the password must not be part of them."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or parts.password is None:
        return tracking_uri
    environ = os.environ if environ is None else environ
    environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
    environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def client(workspace: Workspace):
    bound_mlflow_http()  # before the first request: MLflow reads these per request
    import mlflow
    from mlflow import MlflowClient

    uri = mlflow_uri(workspace.tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


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

    from labelloop.stages import train as pipeline

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

    from labelloop.stages import train as pipeline

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
    recorded = client(workspace).get_model_version(model_name, challenger_version).tags
    changed = rules_changed(recorded.get("gate.rules"), rules)
    if champion_version == challenger_version:
        # A rerun after promotion: the serving champion is not re-judged; say so, and what changed.
        reasons = [f"version {challenger_version} is already champion; its recorded decision stands "
                   f"({recorded.get('gate.decision', 'promote')}: {recorded.get('gate.reasons', 'no reasons recorded')})"]
        if changed:
            reasons.append(f"gate rules changed since that decision ({changed}); they apply to the next challenger — "
                           "to undo this promotion use `labelloop model rollback`")
        value = challenger.metrics[rules.primary_metric]
        return GateDecision(recorded.get("gate.decision", "promote") == "promote", reasons, rules.primary_metric, value, value,
                            challenger_version, champion_version)
    champion = model_metrics(workspace, model_name, champion_version) if champion_version else None
    if champion is not None:
        challenger = ModelMetrics(challenger.version, challenger.metrics, challenger.class_recall, challenger.holdout_digest,
                                  new_labels=challenger.new_labels - champion.new_labels)
    decision = decide(challenger, champion, rules)
    if "gate.decision" in recorded:
        note = (f"re-decided under changed gate rules ({changed}); was {recorded['gate.decision']}" if changed
                else f"re-decided with the same rules; was {recorded['gate.decision']}")
        decision = GateDecision(decision.promote, [*decision.reasons, note], decision.primary_metric, decision.challenger_value,
                                decision.champion_value, decision.challenger_version, decision.champion_version)
    return decision


def rules_changed(recorded_json: str | None, rules: GateParams) -> str:
    """'' when `rules` equal the recorded ones (or none were recorded), else 'key old → new, ...'."""
    if not recorded_json:
        return ""
    try:
        recorded = json.loads(recorded_json)
    except json.JSONDecodeError:
        return ""
    current = rules.model_dump(mode="json")
    return ", ".join(f"{key} {recorded.get(key)!r} → {value!r}" for key, value in current.items() if recorded.get(key) != value)


@_tracking_server_faults("recording the gate decision")
def record_decision(workspace: Workspace, model_name: str, decision: GateDecision, rules: GateParams | None = None) -> None:
    """Tags on the challenger's run and model version: decision, every reason, the champion it faced,
    and the rules it was judged by (so a rerun with other rules can say what changed)."""
    mlflow_client = client(workspace)
    model_version = mlflow_client.get_model_version(model_name, decision.challenger_version)
    tags: dict[str, Any] = {
        "gate.decision": decision.label,
        "gate.reasons": " | ".join(decision.reasons),
        "gate.primary_metric": decision.primary_metric,
        "gate.champion_version": str(decision.champion_version),
    }
    if rules is not None:
        tags["gate.rules"] = json.dumps(rules.model_dump(mode="json"), sort_keys=True)
    for key, value in tags.items():
        mlflow_client.set_tag(model_version.run_id, key, value)
        mlflow_client.set_model_version_tag(model_name, decision.challenger_version, key, value)
    crash_point("gate.after_record")


# The champion's history: one registered-model tag per change of `champion`, key
# `labelloop.champion_history.000001`, value one JSON record. Kept in the model registry beside the
# aliases it records, not in a workspace file: wherever the aliases live (the workspace's SQLite store,
# or the team's tracking server in production) the history lives too — same backups, shared by every
# worker and `labelloop serve`, visible in the MLflow UI — and it cannot drift to another machine's copy.
# One tag per change (not one growing JSON list) keeps every write a single small insert, far below
# MLflow's tag-value limit however long the history grows, and never rewrites an earlier record.
CHAMPION_HISTORY_TAG = "labelloop.champion_history."
MOVED_BY = ("gate", "rollback", "resume")  # who moves the alias through labelloop
MAX_REASON_CHARS = 4000


@dataclass(frozen=True)
class ChampionChange:
    """One change of the `champion` alias: `version` became champion, replacing `replaced`."""

    version: str
    at: str | None  # ISO 8601, UTC; None when derived from a store older than the history
    by: str  # gate | rollback | resume; derived (a store without history) | unrecorded (alias moved outside labelloop)
    reason: str  # the gate's reasons, or the rollback's --reason
    data_tag: str | None  # the data version the champion was trained on
    replaced: str | None  # the champion before; for a rollback, the version rolled back
    recorded: bool = True  # False: shown from the aliases, not yet written (written with the next change)

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "at": self.at, "by": self.by, "reason": self.reason[:MAX_REASON_CHARS],
                           "data_tag": self.data_tag, "replaced": self.replaced}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ChampionChange:
        record = json.loads(text)
        return cls(str(record["version"]), record.get("at"), record.get("by", "unrecorded"), record.get("reason", ""),
                   record.get("data_tag"), record.get("replaced"))


class UnknownModelVersion(ValueError):
    """A model version, alias or model the user named does not exist; the message says what does."""


def _utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _registered_model(workspace: Workspace, model_name: str):
    """The registered model (tags, aliases), or None when nothing was registered under that name yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client(workspace).get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _version_tags(workspace: Workspace, model_name: str, version: str) -> dict[str, str]:
    return dict(client(workspace).get_model_version(model_name, str(version)).tags)


def _change(workspace: Workspace, model_name: str, version: str, by: str, reason: str, replaced: str | None,
            at: str | None, recorded: bool = True) -> ChampionChange:
    tags = _version_tags(workspace, model_name, version)
    return ChampionChange(str(version), at, by, reason, tags.get("data_tag"), replaced, recorded)


def champion_history(workspace: Workspace, model_name: str) -> list[ChampionChange]:
    """Every change of `champion`, oldest first. A store older than the history gets entries derived from
    its aliases (previous-champion, unless a rollback demoted it, then champion); an alias moved without a
    record (by hand in the MLflow UI, or a crash between the move and its record) gets an `unrecorded`
    entry. Those carry recorded=False and are written with the next change."""
    model = _registered_model(workspace, model_name)
    if model is None:
        return []
    history = [ChampionChange.from_json(value) for key, value in sorted(model.tags.items()) if key.startswith(CHAMPION_HISTORY_TAG)]
    aliases = {alias: str(version) for alias, version in (model.aliases or {}).items()}
    champion = aliases.get(CHAMPION)
    if champion is None or (history and history[-1].version == champion):
        return history
    if not history:
        previous = aliases.get(PREVIOUS)
        if previous and previous != champion and not _version_tags(workspace, model_name, previous).get("rolled_back"):
            history.append(_change(workspace, model_name, previous, "derived", "champion before labelloop kept a champion history",
                                   None, None, recorded=False))
        tags = _version_tags(workspace, model_name, champion)
        reason = tags.get("promoted_because") or tags.get("gate.reasons") or "champion before labelloop kept a champion history"
        history.append(ChampionChange(champion, None, "derived", reason, tags.get("data_tag"), previous, recorded=False))
        return history
    history.append(_change(workspace, model_name, champion, "unrecorded",
                           "the champion alias was moved without a record (by hand, or a run killed right after the move)",
                           history[-1].version, None, recorded=False))
    return history


def champion_line(history: list[ChampionChange]) -> list[str]:
    """The champions a rollback steps back along, oldest first; the last is the current champion.
    A rollback removes the version it demoted, and a rollback to an earlier champion removes every
    champion after it — so stepping back never returns to a rolled-back version (never forward)."""
    line: list[str] = []
    for change in history:
        if change.by == "rollback" and change.version in line:
            del line[line.index(change.version) + 1:]
            continue
        if change.by == "rollback" and line and line[-1] == change.replaced:
            line.pop()
        if change.version in line:
            line.remove(change.version)
        line.append(change.version)
    return line


def rolled_back(history: list[ChampionChange]) -> dict[str, ChampionChange]:
    """Version → the rollback that demoted it, for versions no later change made champion again."""
    demoted: dict[str, ChampionChange] = {}
    for change in history:
        demoted.pop(change.version, None)
        if change.by == "rollback" and change.replaced:
            demoted[change.replaced] = change
    return demoted


def _write_changes(workspace: Workspace, model_name: str, history: list[ChampionChange], new: list[ChampionChange]) -> None:
    """Write the not-yet-recorded entries of `history`, then `new`, each under the next sequence number."""
    mlflow_client = client(workspace)
    stored = sum(1 for change in history if change.recorded)
    for offset, change in enumerate([c for c in history if not c.recorded] + new, start=1):
        mlflow_client.set_registered_model_tag(model_name, f"{CHAMPION_HISTORY_TAG}{stored + offset:06d}", change.to_json())


@_tracking_server_faults("moving the champion alias")
def promote(workspace: Workspace, model_name: str, version: str, reason: str = "", by: str = "gate") -> str | None:
    """Move `champion` to `version`; the version it leaves keeps `previous-champion`; the change is
    appended to the champion history (`by`: gate, rollback or resume). Idempotent: a rerun after the
    alias moved only writes the history record a crash may have left unwritten."""
    if by not in MOVED_BY:
        raise ValueError(f"unknown champion change {by!r}; allowed: {', '.join(MOVED_BY)}")
    version = str(version)
    mlflow_client = client(workspace)
    history = champion_history(workspace, model_name)  # read before the move, so the move is not taken for an unrecorded one
    current = alias_version(workspace, model_name, CHAMPION)
    if current == version:
        if history and history[-1].version == version and history[-1].by == "unrecorded":
            replaced = history[-1].replaced
            _write_changes(workspace, model_name, history[:-1],
                           [_change(workspace, model_name, version, by, reason or "resumed", replaced, _utc_now())])
        return current
    if current is not None:
        mlflow_client.set_registered_model_alias(model_name, PREVIOUS, current)
        crash_point("gate.after_previous")
    mlflow_client.set_registered_model_alias(model_name, CHAMPION, version)
    if reason:
        because = f"rollback: {reason}" if by == "rollback" else reason
        mlflow_client.set_model_version_tag(model_name, version, "promoted_because", because[:5000])
    crash_point("gate.after_champion")
    _write_changes(workspace, model_name, history, [_change(workspace, model_name, version, by, reason, current, _utc_now())])
    return current


@_tracking_server_faults("resuming the gate")
def resume_gate(workspace: Workspace, model_name: str) -> str | None:
    """Finish a gate a crash interrupted: the challenger's recorded decision is `promote` but it is
    not champion, or it is champion but its history record was never written. A version a rollback
    demoted is left alone. Returns the version promoted."""
    challenger = alias_version(workspace, model_name, CHALLENGER)
    if challenger is None:
        return None
    tags = client(workspace).get_model_version(model_name, challenger).tags
    # The reasons as the gate stage passes them to promote ("; "-joined; the tag joins them with " | ").
    reason = tags.get("gate.reasons", "resumed after an interrupted gate").replace(" | ", "; ")
    if challenger == alias_version(workspace, model_name, CHAMPION):
        history = champion_history(workspace, model_name)
        if tags.get("gate.decision") == "promote" and history and history[-1].by == "unrecorded":
            promote(workspace, model_name, challenger, reason, by="resume")  # writes only the missing record
        return None
    if (tags.get("gate.decision") != "promote" or tags.get("rolled_back")
            or challenger in rolled_back(champion_history(workspace, model_name))):
        return None
    promote(workspace, model_name, challenger, reason, by="resume")
    return challenger


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] → '1–3, 5'."""
    parts: list[str] = []
    for number in sorted(numbers):
        if parts and parts[-1][1] == number - 1:
            parts[-1] = (parts[-1][0], number)
        else:
            parts.append((number, number))
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in parts)


def describe_versions(workspace: Workspace, model_name: str) -> str:
    """'model 'x' has versions 1–5; aliases champion=5, previous-champion=3' — what a user may name."""
    model = _registered_model(workspace, model_name)
    if model is None:
        return f"model {model_name!r} has no registered versions yet (run `labelloop train` or `labelloop cycle`)"
    versions = [int(v.version) for v in client(workspace).search_model_versions(f"name = '{model_name}'")]
    aliases = ", ".join(f"{alias}={version}" for alias, version in sorted((model.aliases or {}).items())) or "none"
    return f"model {model_name!r} has versions {_ranges(versions) or 'none'}; aliases {aliases}"


@_tracking_server_faults("looking up a model version")
def resolve_version(workspace: Workspace, model_name: str, ref: str) -> str:
    """A version number ('3' or 'v3') or an alias (champion, challenger, previous-champion) → the version
    number; anything else is one `UnknownModelVersion` that names the versions and aliases that exist."""
    from mlflow.exceptions import MlflowException

    ref = str(ref).strip()
    number = ref[1:] if ref[:1] in ("v", "V") and ref[1:].isdigit() else ref
    model = _registered_model(workspace, model_name)
    if model is None:
        raise UnknownModelVersion(f"no version {ref!r}: {describe_versions(workspace, model_name)}")
    if number.isdigit():
        try:
            return str(client(workspace).get_model_version(model_name, number).version)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise UnknownModelVersion(f"no version {ref!r}: {describe_versions(workspace, model_name)}") from None
    aliases = {alias: str(version) for alias, version in (model.aliases or {}).items()}
    if ref not in aliases:
        raise UnknownModelVersion(f"no version or alias {ref!r}: {describe_versions(workspace, model_name)}")
    return aliases[ref]


@_tracking_server_faults("rolling back the champion")
def rollback(workspace: Workspace, model_name: str, reason: str, version: str | None = None) -> tuple[str | None, str]:
    """Make an earlier model champion again; returns (the champion it demoted, the new champion).

    Without `version`: one step back along the champion history — to the champion the current one
    replaced, skipping versions a rollback demoted — so rollback twice goes v5 → v3 → v2, never forward.
    With `version` (a number or alias): that version, which must exist. The demoted version is tagged
    `rolled_back` (the gate's resume never re-promotes it) and the reason is kept in the history."""
    history = champion_history(workspace, model_name)
    current = alias_version(workspace, model_name, CHAMPION)
    if version is None:
        if current is None:
            raise UnknownModelVersion(f"no champion to roll back: {describe_versions(workspace, model_name)}")
        line = champion_line(history)
        if len(line) < 2:
            raise UnknownModelVersion(f"no earlier champion to roll back to: version {current} is the first in the champion "
                                      f"history (`labelloop model history`); name a VERSION — {describe_versions(workspace, model_name)}")
        target = line[-2]
    else:
        target = resolve_version(workspace, model_name, version)
        if target == current:
            return current, target
    if current is not None:
        mark_rolled_back(workspace, model_name, current, reason)
    left = promote(workspace, model_name, target, reason, by="rollback")
    return left, target


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
