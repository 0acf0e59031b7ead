"""The train stage: fit and evaluate, and a challenger trained, tracked and registered in MLflow.

`fit` and `evaluate` are the one code path behind both the Prefect train task (`train_challenger`:
one MLflow run per retrain, the model registered as a new version with alias `challenger`; a retrain
is keyed by (data tag, train params), so rerunning it returns the version it already made) and
`dvc repro`.

What is stored is the model's scikit-learn Pipeline alone (`LabelloopClassifier.pipeline_`), so it loads
without labelloop: MLflow's scikit-learn flavour with a signature typed per schema role (numeric → double,
categorical and text → string, null accepted where a value is missing) and string labels out:

    model = mlflow.pyfunc.load_model("models:/<model_name>@champion")
    model.predict(frame)                           # class names, one per row

and the class probabilities from the same artifact, in the order of `classes_` (the classes the labelled
set held when it was trained; labelloop's own wrapper widens them to the workspace's full class list):

    pipeline = mlflow.sklearn.load_model("models:/<model_name>@champion")
    pipeline.predict_proba(frame), pipeline.classes_

(or `mlflow.pyfunc.load_model(...).get_raw_model()`, the same Pipeline). Numeric columns are doubles: a
Python caller passes floats (MLflow refuses int64 it cannot convert safely); over REST, JSON numbers and
null are fine. Stored with skops when the pipeline names only safe types (see `tracking.pipeline_storage`),
else with cloudpickle (run tag `model_serialization`).

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
from labelloop.config import GateParams, TrainParams, load_params
from labelloop.core.faults import crash_point
from labelloop.core.io import read_json, read_parquet, write_bytes, write_json, write_parquet
from labelloop.domain.metrics import holdout_metrics
from labelloop.model import LabelloopClassifier, seed_dependent, twin_seeds
from labelloop.schema import Schema, conform
from labelloop.workspace import Workspace

MODEL_FILES = {tracking.SKOPS: "model.skops", tracking.CLOUDPICKLE: "model.pkl"}
SERIALIZATION_FILE = "serialization.json"  # beside the DVC pipeline's model: its format and trusted types
# Part of every retrain's key (params_hash): a version stored in an older format is never reused.
MODEL_FORMAT = "sklearn-pipeline"


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
    return LabelloopClassifier.from_params(params, schema).fit(labeled, labeled[LABEL])


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
    failures = run_checks(labeled, labeled_set_checks(schema), "labeled_set")
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
    """Fit on the checked-out labelled set; model/ gets the pipeline (skops when safe, as MLflow stores it)."""
    schema = load_schema(registry)
    params = load_params(registry / "params.yaml").train
    model = fit(read_parquet(registry / "data/labeled.parquet"), schema, params)
    out = registry / "model"
    out.mkdir(parents=True, exist_ok=True)
    serialization, data, trusted = tracking.pipeline_storage(model.pipeline_)
    if data is None:
        import cloudpickle  # type: ignore[import-untyped]

        data = cloudpickle.dumps(model.pipeline_)
    path = out / MODEL_FILES[serialization]
    write_bytes(path, data)
    for other in set(MODEL_FILES.values()) - {path.name}:  # a previous run's file in the other format
        (out / other).unlink(missing_ok=True)
    write_json(out / SERIALIZATION_FILE, {"format": serialization, "file": path.name, "skops_trusted_types": trusted})
    write_json(out / "train_params.json", params.model_dump(mode="json"))
    return path


def load_pipeline_model(registry: Path) -> LabelloopClassifier:
    """The DVC pipeline's model/ as labelloop's classifier (the stored pipeline wrapped with the schema)."""
    out = registry / "model"
    what = f"{out} (the DVC pipeline's model)"
    recorded = read_json(out / SERIALIZATION_FILE)
    if recorded is None:
        raise tracking.old_model_error(what, f"no {SERIALIZATION_FILE}")
    path = out / recorded["file"]
    if recorded["format"] == tracking.SKOPS:
        import skops.io

        names = skops.io.get_untrusted_types(file=path)  # what the file names, not what the record says
        unsafe = [name for name in names if not tracking.is_safe_type(name)]
        if unsafe:
            raise tracking.old_model_error(what, f"skops, naming {', '.join(unsafe)}")
        pipeline = skops.io.load(path, trusted=names)
    else:
        import cloudpickle

        with path.open("rb") as handle:
            pipeline = cloudpickle.load(handle)
    return LabelloopClassifier.from_pipeline(tracking.check_pipeline(pipeline, what), load_schema(registry))


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


# Every training run logs its plots under these fixed artifact paths (never a name with a tag or version in
# it), so MLflow's compare page lines the runs' plots up side by side.
PLOTS_DIR = "plots"
CONFUSION_PNG, CALIBRATION_PNG, LEARNING_CURVE_PNG = "confusion_matrix.png", "calibration.png", "learning_curve.png"
CALIBRATION_TABLE = "calibration.json"
PLOT_ARTIFACTS = tuple(f"{PLOTS_DIR}/{name}" for name in (CONFUSION_PNG, CALIBRATION_PNG, LEARNING_CURVE_PNG,
                                                           CALIBRATION_TABLE))


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
    confusion_png = directory / CONFUSION_PNG
    fig.savefig(confusion_png, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.plot(evaluation.calibration["confidence"], evaluation.calibration["accuracy"], marker="o")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {evaluation.metrics['ece']:.3f})")
    fig.tight_layout()
    calibration_png = directory / CALIBRATION_PNG
    fig.savefig(calibration_png, dpi=100)
    plt.close(fig)
    return [confusion_png, calibration_png]


# -- seed twins: the challenger refitted with other random_states, for the gate's seed term -------------

TWINS_AUTO = 2  # gate.seed_twins auto for a seed-dependent estimator: k = 3 fits, t on 2 df
TWIN_SEED = "twin_seed"


def planned_twins(gate: GateParams, params: TrainParams, schema: Schema) -> tuple[int, bool]:
    """(seed twins to fit, whether the first is a probe): a probe twin that predicts the holdout exactly as the
    challenger does shows the fit does not depend on the seed, and no more are fitted. `gate.seed_twins` auto:
    none for an estimator known to be deterministic (`labelloop.model.seed_dependent`: no extra fit for XGBoost
    at its defaults), TWINS_AUTO otherwise, behind a probe where only a refit can tell. None with
    min_confidence 0 (no test to feed)."""
    if gate.min_confidence == 0 or gate.seed_twins == 0:
        return 0, False
    dependent = seed_dependent(params, schema)
    if gate.seed_twins == "auto" and dependent is False:
        return 0, False
    return (TWINS_AUTO if gate.seed_twins == "auto" else int(gate.seed_twins)), dependent is not True


def seed_twins_path(workspace: Workspace, model_name: str, data_tag: str, phash: str, holdout_digest: str) -> Path:
    """The seed twins' holdout predictions of the retrain keyed by (model, data version, train params, holdout)."""
    model = hashlib.sha256(model_name.encode("utf-8")).hexdigest()[:12]
    key = hashlib.sha256(f"{data_tag}|{phash}|{holdout_digest}".encode()).hexdigest()[:16]
    return workspace.state_dir / "gate" / f"twins-{model}-{key}.parquet"


def read_seed_twins(path: Path, holdout: pd.DataFrame, schema: Schema) -> list[tuple[int, np.ndarray]]:
    """The kept (random_state, holdout probabilities) blocks, the challenger's first; [] when the file is missing,
    damaged or for other rows or classes (then they are fitted again)."""
    if not path.exists():
        return []
    try:
        frame = read_parquet(path)
    except (OSError, ValueError):
        return []
    columns = schema.proba_columns
    if list(frame.columns) != [TWIN_SEED, ITEM_ID, *columns]:
        return []
    ids = holdout[ITEM_ID].astype(str).tolist()
    blocks = []
    for seed, block in frame.groupby(TWIN_SEED, sort=False):
        if block[ITEM_ID].astype(str).tolist() != ids:
            return []
        blocks.append((int(seed), block[columns].to_numpy(dtype=np.float64)))
    return blocks


def _twins_complete(blocks: list[tuple[int, np.ndarray]], random_state: int, count: int, probe: bool) -> bool:
    seeds = [seed for seed, _ in blocks]
    if seeds == [random_state, *twin_seeds(random_state, count)]:
        return True
    # A probe twin alike to the challenger: the seed changes nothing, no other twin was fitted.
    return probe and len(blocks) == 2 and seeds[0] == random_state and np.array_equal(blocks[0][1], blocks[1][1])


def ensure_seed_twins(workspace: Workspace, params: TrainParams, gate: GateParams, schema: Schema, data_tag: str,
                      labeled: pd.DataFrame, holdout: pd.DataFrame, challenger_proba) -> int:
    """Fit the challenger's seed twins on `labeled` and keep their holdout predictions (atomically, keyed by
    `seed_twins_path`), unless already kept: a rerun fits nothing. `challenger_proba`: the challenger's holdout
    probabilities, or a callable giving them (only called when twins must be fitted). Returns the twins kept."""
    count, probe = planned_twins(gate, params, schema)
    if count == 0:
        return 0
    path = seed_twins_path(workspace, params.model_name, data_tag, params_hash(params), file_digest(workspace.holdout_path))
    blocks = read_seed_twins(path, holdout, schema)
    if blocks and _twins_complete(blocks, params.random_state, count, probe):
        return len(blocks) - 1
    challenger = np.asarray(challenger_proba() if callable(challenger_proba) else challenger_proba, dtype=np.float64)
    blocks = [(params.random_state, challenger)]
    features = holdout[schema.feature_columns]
    for seed in twin_seeds(params.random_state, count):
        twin = fit(labeled, schema, params.model_copy(update={"random_state": seed}))
        blocks.append((seed, np.asarray(twin.predict_proba(features), dtype=np.float64)))
        if probe and len(blocks) == 2 and np.array_equal(blocks[0][1], blocks[1][1]):
            break  # the seed changes nothing on these rows: one twin shows it
    frames = []
    for seed, proba in blocks:
        frame = pd.DataFrame(proba, columns=schema.proba_columns)
        frame.insert(0, ITEM_ID, holdout[ITEM_ID].astype(str).to_numpy())
        frame.insert(0, TWIN_SEED, seed)
        frames.append(frame)
    write_parquet(path, pd.concat(frames, ignore_index=True))
    for other in path.parent.glob(f"{path.name.rsplit('-', 1)[0]}-*.parquet"):  # earlier retrains' twins
        if other != path:
            other.unlink(missing_ok=True)
    return len(blocks) - 1


# -- the train stage: a challenger tracked and registered in MLflow -----------------------------

@dataclass(frozen=True)
class TrainResult:
    run_id: str
    version: str
    data_tag: str
    metrics: dict[str, float]
    created: bool


def params_hash(params: TrainParams) -> str:
    keyed = {**params.model_dump(mode="json"), "model_format": MODEL_FORMAT}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def pinned_requirements(estimator: object | None = None, serialization: str = tracking.SKOPS) -> list[str]:
    """What loading the model needs, pinned to the versions it was trained with (plus, for an estimator class
    from another package, that package's distribution)."""
    from importlib.metadata import packages_distributions, version

    names = ["xgboost", "scikit-learn", "pandas", "numpy", "cloudpickle"]
    if serialization == tracking.SKOPS:
        names.append("skops")
    package = type(estimator).__module__.split(".", 1)[0] if estimator is not None else "sklearn"
    if package not in ("sklearn", "xgboost"):  # packages_distributions scans every installed package: only when needed
        names.extend(packages_distributions().get(package, []))
    return [f"{name}=={version(name)}" for name in dict.fromkeys(names)]


def model_signature(schema: Schema):
    """Typed inputs per role (numeric → double, categorical and text → string), string labels out.

    Every feature column is `required` (MLflow's word for "present": the pipeline selects each by name);
    a missing value is null in any of them — MLflow passes None/NaN through, the pipeline imputes or keeps it."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, TensorSpec
    from mlflow.types import Schema as ColumnSchema

    inputs: list[ColSpec | TensorSpec] = [ColSpec("double" if spec.role == "numeric" else "string", spec.name)
                                          for spec in schema.features]
    return ModelSignature(inputs=ColumnSchema(inputs), outputs=ColumnSchema([ColSpec("string")]))


def model_metadata(schema: Schema, serialization: str) -> dict:
    """What a reader of the MLmodel file needs beside the signature: roles, nullability, the probabilities."""
    return {"labelloop": {
        "label_column": schema.label_column,
        "class_names": list(schema.class_names),
        "columns": {spec.name: {"role": spec.role, "nullable": spec.nullable} for spec in schema.features},
        "predict": "class names (pyfunc)",
        "predict_proba": "mlflow.sklearn.load_model(uri).predict_proba(frame), columns in the order of .classes_",
        "serialization": serialization,
    }}


def version_description(data_tag: str, n_labels: int, estimator: str, metrics: dict[str, float]) -> str:
    """The registered version's description (MLflow UI, `search_model_versions`)."""
    shown = [f"{name.replace('_', '-')} {metrics[key]:.3f}" for key, name in
             (("accuracy", "accuracy"), ("macro_f1", "macro_F1"), ("log_loss", "log_loss"), ("ece", "ECE")) if key in metrics]
    return f"{estimator} trained on {data_tag} ({n_labels} labels); holdout {', '.join(shown)}"


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\- /]", "_", name)


@tracking.server_faults("training a challenger")
def train_challenger(workspace: Workspace, params: TrainParams, gate: GateParams | None = None) -> TrainResult:
    """Train on the labelled set at the registry's HEAD version; register it as `challenger`; with a
    seed-dependent estimator also its seed twins (`gate.seed_twins`, `ensure_seed_twins`)."""
    gate = gate or GateParams()
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
        if not existing.description:  # a run killed between registering and describing the version
            tags = run.data.tags
            mlflow_client.update_model_version(params.model_name, existing.version, version_description(
                data_tag, int(tags.get("n_labels", 0)), tags.get("estimator", params.estimator), dict(run.data.metrics)))
        if planned_twins(gate, params, schema)[0]:  # twins a crash or a pruned state/ lost are fitted again
            holdout = pd.read_parquet(workspace.holdout_path)
            ensure_seed_twins(workspace, params, gate, schema, data_tag, pd.read_parquet(workspace.labeled_path), holdout,
                              lambda: tracking.load_model(workspace, params.model_name, str(existing.version))
                              .predict_proba(holdout[schema.feature_columns]))
        mlflow_client.set_registered_model_alias(params.model_name, tracking.CHALLENGER, existing.version)
        return TrainResult(existing.run_id, str(existing.version), data_tag, dict(run.data.metrics), created=False)

    labeled = pd.read_parquet(workspace.labeled_path)
    holdout = pd.read_parquet(workspace.holdout_path)
    started = time.perf_counter()
    model = fit(labeled, schema, params)
    fit_seconds = time.perf_counter() - started
    evaluation = evaluate(model, holdout, schema)
    metrics, recall = evaluation.metrics, evaluation.class_recall
    estimator = type(model.estimator_).__name__
    # Before registering: a version never exists without the twins its gate needs.
    twins = ensure_seed_twins(workspace, params, gate, schema, data_tag, labeled, holdout, evaluation.probas)
    serialization, _, trusted = tracking.pipeline_storage(model.pipeline_)

    from labelloop.adapters import tracking_datasets

    with mlflow.start_run(experiment_id=tracking.experiment_id(workspace), run_name=f"train-{data_tag}") as run:
        from labelloop.core.threads import resolve_n_jobs

        mlflow.log_params({**params.model_dump(mode="json"), "n_jobs_resolved": resolve_n_jobs(params.n_jobs)})
        mlflow.log_metrics(metrics)
        mlflow.log_metrics({f"recall.{_metric_key(c)}": r for c, r in recall.items()})
        mlflow.log_metric("n_labels", len(labeled))
        mlflow.log_metric("fit_seconds", fit_seconds)
        mlflow.log_metric("seed_twins", twins)
        tags = {
            "data_tag": data_tag,
            "data_commit": versioning.head_sha(registry),
            "holdout_tag": versioning.HOLDOUT_TAG,
            "holdout_digest": file_digest(workspace.holdout_path),
            "params_hash": phash,
            "n_labels": str(len(labeled)),
            "batches": ",".join(sorted(set(labeled["batch_id"]))),
            "class_recall": json.dumps(recall, sort_keys=True),
            "estimator": estimator,
            "model_serialization": serialization,
        }
        mlflow.set_tags(tags)
        tracking_datasets.log_data_versions(registry, [
            (labeled, data_tag, workspace.labeled_path, tracking_datasets.TRAINING),
            (holdout, versioning.HOLDOUT_TAG, workspace.holdout_path, tracking_datasets.EVALUATION)])
        info = mlflow.sklearn.log_model(
            model.pipeline_, name="model", signature=model_signature(schema),
            input_example=conform(labeled.head(3), schema), metadata=model_metadata(schema, serialization),
            pip_requirements=pinned_requirements(model.estimator_, serialization),
            serialization_format=serialization, skops_trusted_types=trusted or None,
        )
        with contextlib.redirect_stderr(io.StringIO()):  # register_model eprints a banner per call
            version = mlflow.register_model(info.model_uri, params.model_name, tags={"data_tag": data_tag, "params_hash": phash})
        mlflow_client.update_model_version(params.model_name, version.version,
                                           version_description(data_tag, len(labeled), estimator, metrics))
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
            mlflow.log_artifact(str(png), artifact_path=PLOTS_DIR)
        mlflow.log_table(evaluation.calibration, artifact_file=f"{PLOTS_DIR}/{CALIBRATION_TABLE}")
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
        curve = Path(tmp) / LEARNING_CURVE_PNG
        fig.savefig(curve, dpi=100)
        plt.close(fig)
        mlflow.log_artifact(str(curve), artifact_path=PLOTS_DIR)


@tracking.server_faults("looking up the model of this data version")
def needs_retrain(workspace: Workspace, params: TrainParams, data_tag: str) -> bool:
    """True unless a model for this data version and these params has already been gated."""
    version = tracking.find_version(workspace, params.model_name, data_tag, params_hash(params))
    return version is None or "gate.decision" not in version.tags
