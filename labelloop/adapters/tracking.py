"""The MLflow adapter: a workspace's tracking store and model registry.

The client and experiment, model versions found by their tags, the aliases (`champion`, `challenger`,
`previous-champion`), a version's metrics, a version's model, and the champion history kept as
registered-model tags. The train and gate stages (`labelloop.stages.train`, `labelloop.stages.gate`)
build on these. MLflow is imported lazily (it costs seconds), only by the functions that need it.

A tracking server that is down: MLflow retries each HTTP request itself (urllib3, with backoff);
labelloop bounds those retries (`bound_mlflow_http`) unless the user set them, and turns the error
MLflow finally raises into one `TrackingUnavailable` naming the tracking URI and the fault
(`server_faults`). The stages stay idempotent, so a rerun once the server answers completes the work.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, TypeVar

from labelloop.core.redact import redact_text
from labelloop.core.retry import TransientError
from labelloop.domain.gate import GateDecision, ModelMetrics
from labelloop.model import LabelloopClassifier
from labelloop.workspace import Workspace

EXPERIMENT = "labelloop"

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


def server_faults(what: str) -> Callable[[F], F]:
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


@server_faults("reading an alias")
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


# A model version's description (the MLflow UI's first line about it): the train stage writes what it was
# trained on and how it scored (`labelloop.stages.train.version_description`); the gate adds its decision and
# every reason under a heading, replacing an earlier decision on a rerun, never the train stage's text.
GATE_HEADING = "\n\n**Gate: "
MAX_DESCRIPTION_CHARS = 5000  # MLflow's model_versions.description column


def gate_description(description: str, decision: GateDecision) -> str:
    """`description` with its gate section (decision, the champion it faced, each reason) set to `decision`'s."""
    scored = f"{decision.primary_metric} {decision.challenger_value:.4g}"
    if decision.champion_version is None:
        against = f"{scored}; no champion yet"
    elif decision.champion_value is None or decision.champion_version == decision.challenger_version:
        against = f"{scored}; champion version {decision.champion_version}"
    else:
        against = f"{scored} against {decision.champion_value:.4g} of champion version {decision.champion_version}"
    section = f"{GATE_HEADING}{decision.label}** ({against})\n" + "".join(f"\n- {reason}" for reason in decision.reasons)
    description = description or ""
    trained = "" if description.startswith(GATE_HEADING.lstrip("\n")) else description.split(GATE_HEADING, 1)[0]
    text = trained + section if trained else section.lstrip("\n")
    return text if len(text) <= MAX_DESCRIPTION_CHARS else text[:MAX_DESCRIPTION_CHARS - 1] + "…"


def describe_gate_decision(workspace: Workspace, model_name: str, decision: GateDecision) -> None:
    """Write the gate's decision and reasons into the challenger version's description (idempotent)."""
    mlflow_client = client(workspace)
    version = mlflow_client.get_model_version(model_name, decision.challenger_version)
    description = gate_description(version.description or "", decision)
    if description != version.description:
        mlflow_client.update_model_version(model_name, decision.challenger_version, description=description)


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
    from datetime import datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def new_champion_change(workspace: Workspace, model_name: str, version: str, by: str, reason: str,
                        replaced: str | None) -> ChampionChange:
    """The record of a change of `champion` labelloop makes now (`by`: one of MOVED_BY)."""
    tags = client(workspace).get_model_version(model_name, str(version)).tags
    return ChampionChange(str(version), _utc_now(), by, reason, tags.get("data_tag"), replaced)


def _registry_reader(workspace: Workspace):
    """The registry read through MLflow's client (`tracking_store` holds the rules; this module writes)."""
    from labelloop.adapters.tracking_store import MlflowReader

    return MlflowReader(workspace)


def champion_history(workspace: Workspace, model_name: str) -> list[ChampionChange]:
    """Every change of `champion`, oldest first. A store older than the history gets entries derived from
    its aliases (previous-champion, unless a rollback demoted it, then champion); an alias moved without a
    record (by hand in the MLflow UI, or a crash between the move and its record) gets an `unrecorded`
    entry. Those carry recorded=False and are written with the next change (`tracking_store.history_from`)."""
    from labelloop.adapters import tracking_store

    return tracking_store.champion_history(_registry_reader(workspace), model_name)


def write_champion_changes(
    workspace: Workspace, model_name: str, history: list[ChampionChange], new: list[ChampionChange]
) -> None:
    """Write the not-yet-recorded entries of `history`, then `new`, each under the next sequence number."""
    mlflow_client = client(workspace)
    stored = sum(1 for change in history if change.recorded)
    for offset, change in enumerate([c for c in history if not c.recorded] + new, start=1):
        mlflow_client.set_registered_model_tag(model_name, f"{CHAMPION_HISTORY_TAG}{stored + offset:06d}", change.to_json())


def describe_versions(workspace: Workspace, model_name: str) -> str:
    """'model 'x' has versions 1–5; aliases champion=5, previous-champion=3' — what a user may name."""
    from labelloop.adapters import tracking_store

    return tracking_store.describe_versions(_registry_reader(workspace), model_name)


@server_faults("looking up a model version")
def resolve_version(workspace: Workspace, model_name: str, ref: str) -> str:
    """A version number ('3' or 'v3') or an alias (champion, challenger, previous-champion) → the version
    number; anything else is one `UnknownModelVersion` that names the versions and aliases that exist."""
    from labelloop.adapters import tracking_store

    return tracking_store.resolve_version(_registry_reader(workspace), model_name, ref)


# -- how a model is stored -----------------------------------------------------------------------
# What MLflow (and `dvc repro`) stores is the model's scikit-learn Pipeline alone, so it loads without
# labelloop. skops, not pickle, where it can: skops loads only the types it is told to trust, and runs no
# code of the file's choosing. A labelloop pipeline names a few types beyond skops's defaults (numpy.dtype
# for dtype parameters, numpy.ravel in a text branch, HistGradientBoosting's functools.partial of a sklearn
# function); they are computed from the pipeline at save time (`skops.io.get_untrusted_types`), recorded (the
# MLmodel's `skops_trusted_types`), and trusted only when each is one of these (a partial only binds arguments:
# the function it wraps is a type of its own in that list). A pipeline naming anything else
# (an estimator class from another package, through `train.estimator`) is stored with cloudpickle, which
# loads by running code from the file: load such models from trusted stores only.
SAFE_TYPE_PACKAGES = ("sklearn", "xgboost", "numpy", "scipy")
SAFE_TYPES = frozenset({"functools.partial"})
SKOPS, CLOUDPICKLE = "skops", "cloudpickle"


class IncompatibleModel(ValueError):
    """A stored model labelloop can no longer load (stored before models were plain scikit-learn pipelines)."""


def is_safe_type(name: str) -> bool:
    return name in SAFE_TYPES or name.split(".", 1)[0] in SAFE_TYPE_PACKAGES


def pipeline_storage(pipeline: Any) -> tuple[str, bytes | None, list[str]]:
    """How to store `pipeline`: (skops, its skops bytes, the types to trust) when every type it names beyond
    skops's defaults is safe; else (cloudpickle, None, [])."""
    import skops.io

    try:
        data = skops.io.dumps(pipeline)
    except (TypeError, ValueError, AttributeError, NotImplementedError):  # an object skops cannot represent
        return CLOUDPICKLE, None, []
    names = sorted(skops.io.get_untrusted_types(data=data))
    if all(is_safe_type(name) for name in names):
        return SKOPS, data, names
    return CLOUDPICKLE, None, []


def old_model_error(what: str, found: str) -> IncompatibleModel:
    return IncompatibleModel(
        f"{what} was stored by an older labelloop ({found}), not as a scikit-learn pipeline, and cannot be loaded any "
        "more; retrain it: `labelloop train` registers a new version from the current data version and `labelloop gate` "
        "promotes it (or, for a `dvc repro` checkout, `dvc repro --force train`)")


def check_pipeline(model: Any, what: str) -> Any:
    """`model` when it is a scikit-learn Pipeline, else the `IncompatibleModel` error naming `what`."""
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline):
        raise old_model_error(what, f"a {type(model).__module__}.{type(model).__qualname__}")
    return model


def load_pipeline(model_uri: str, what: str) -> Any:
    """The scikit-learn Pipeline stored at `model_uri` (models:/, runs:/ or a path). An older labelloop's model
    (a pickled or skops `labelloop.model.LabelloopClassifier`) is refused before it is deserialised, when its
    MLmodel shows it (skops), or right after (pickle)."""
    import mlflow

    flavor = mlflow.models.get_model_info(model_uri).flavors.get("sklearn", {})
    unsafe = [name for name in flavor.get("skops_trusted_types") or [] if not is_safe_type(name)]
    if flavor.get("serialization_format") == SKOPS and unsafe:
        raise old_model_error(what, f"skops, trusting {', '.join(unsafe)}")
    return check_pipeline(mlflow.sklearn.load_model(model_uri), what)


_MODEL_CACHE: dict[tuple[str, str, str], LabelloopClassifier] = {}


def load_model(workspace: Workspace, model_name: str, version: str) -> LabelloopClassifier:
    """A registered version's model (its pipeline, wrapped with the workspace's schema), cached per process
    (versions are immutable). A version stored by an older labelloop raises `IncompatibleModel`."""
    key = (workspace.tracking_uri, model_name, str(version))
    if key not in _MODEL_CACHE:
        client(workspace)
        pipeline = load_pipeline(f"models:/{model_name}/{version}", f"model {model_name!r} version {version}")
        _MODEL_CACHE[key] = LabelloopClassifier.from_pipeline(pipeline, workspace.schema())
    return _MODEL_CACHE[key]


def champion_model(workspace: Workspace, model_name: str) -> tuple[str, LabelloopClassifier] | None:
    version = alias_version(workspace, model_name, CHAMPION)
    if version is None:
        return None
    return version, load_model(workspace, model_name, version)
