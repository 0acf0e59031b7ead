"""Fit and evaluate: the one code path behind both the Prefect train task and `dvc repro`.

The DVC stages (`labelloop pipeline validate|train|evaluate`) work on a registry directory alone
(data/, schema.json, params.yaml), so they run in a plain checkout of any data version and inside
`dvc exp run`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.config import TrainParams, load_params
from labelloop.core.io import read_parquet, write_json
from labelloop.domain.metrics import holdout_metrics
from labelloop.model import LabelloopClassifier
from labelloop.workspace import Schema

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
    return Schema(**json.loads((registry / "schema.json").read_text()))


def fit(labeled: pd.DataFrame, schema: Schema, params: TrainParams) -> LabelloopClassifier:
    return LabelloopClassifier.from_params(params, schema.class_names).fit(labeled[schema.feature_columns], labeled["label"])


def evaluate(model: LabelloopClassifier, holdout: pd.DataFrame, schema: Schema, bins: int = 10) -> Evaluation:
    probas = model.predict_proba(holdout[schema.feature_columns])
    metrics, recall = holdout_metrics(probas, holdout["label"].to_numpy(), schema.class_names)
    predicted = np.asarray(schema.class_names, dtype=object)[probas.argmax(axis=1)]
    confusion = pd.DataFrame({"actual": holdout["label"].astype(str).to_numpy(), "predicted": predicted.astype(str)})
    confidence = probas.max(axis=1)
    correct = predicted == confusion["actual"].to_numpy()
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)
    rows = [{"bin": b, "confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean()),
             "count": int((which == b).sum())} for b in range(bins) if (which == b).any()]
    return Evaluation(metrics, recall, probas, confusion, pd.DataFrame(rows))


def labeled_set_rules(schema: Schema) -> list:
    from labelloop.adapters.validation import Rule

    rules = [
        Rule("ExpectColumnValuesToNotBeNull", {"column": "item_id"}),
        Rule("ExpectColumnValuesToBeUnique", {"column": "item_id"}),
        Rule("ExpectColumnValuesToNotBeNull", {"column": "label"}),
        Rule("ExpectColumnValuesToBeInSet", {"column": "label", "value_set": list(schema.class_names)}),
    ]
    rules += [Rule("ExpectColumnValuesToNotBeNull", {"column": c}) for c in schema.feature_columns]
    return rules


def validate_labeled(labeled: pd.DataFrame, holdout: pd.DataFrame, schema: Schema) -> dict:
    """Expectations on the labelled set, plus: no labelled item is in the holdout."""
    from labelloop.adapters.validation import validate_rows

    missing = [c for c in ("item_id", "label", *schema.feature_columns) if c not in labeled.columns]
    if missing:
        raise DataValidationError(f"labelled set is missing columns {missing[:10]}")
    failures = validate_rows(labeled.reset_index(drop=True), labeled_set_rules(schema), name="labeled_set")
    leaked = sorted(set(labeled["item_id"]) & set(holdout["item_id"]))
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
    report = validate_labeled(read_parquet(registry / "data/labeled.parquet"), read_parquet(registry / "data/holdout.parquet"), schema)
    write_json(registry / "reports/validation.json", report)
    if not report["success"]:
        raise DataValidationError(f"labelled set failed validation: {report['failures'] or ''} "
                                  f"{'holdout overlap ' + str(report['holdout_overlap']) if report['holdout_overlap'] else ''}".strip())
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
