"""Why the model guesses what it guesses, per item: the features pushing toward the guess and away from it.

For annotators (`export.context: guess+why`), not for auditing the model. Three methods, chosen by the
fitted estimator at the end of the pipeline (`labelloop.model`):

- `treeshap` (XGBoost): exact TreeSHAP contributions from the booster (`pred_contribs=True`) on the
  pipeline's own features, in margin (log-odds) units;
- `linear` (any estimator with `coef_`, e.g. logistic regression): coefficient × feature value, the same
  units; for text columns this is the weight of each token the item contains;
- `none` (every other estimator: random forest, HistGradientBoosting, ...): no per-item explanation,
  and the explanation says so.

With more than two classes the contributions are centred across classes (a feature's contribution to
the guessed class minus its mean contribution to all classes), so "toward" means toward this class
rather than toward any class. Each contribution is named after the source column and the item's value
(`state=CA`, `amount=12.5`, `amount missing`, `body: 'refund'`, `body: 'efun' (characters)`); a token
that pushes although the item does not contain it reads `body: no 'refund'`.

Pure over a fitted `LabelloopClassifier` and a frame: no file, no tracking server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from labelloop.model import LabelloopClassifier

METHOD_TREESHAP = "treeshap"
METHOD_LINEAR = "linear"
METHOD_NONE = "none"
# TreeSHAP returns (rows, classes, features + 1) floats: rows are explained in chunks of at most this many values.
MAX_CONTRIB_VALUES = 20_000_000
MIN_WEIGHT = 0.005  # contributions smaller than this (log-odds) are not worth an annotator's attention
CANDIDATES = 50  # per row and direction, the strongest contributions named before equal names are summed


@dataclass(frozen=True)
class FeatureRef:
    """One output column of the pipeline's features, traced back to its source column."""

    column: str
    kind: str  # value | missing | onehot | token | hashed | raw
    detail: str = ""  # the category (onehot), the token or n-gram (token), the raw name
    analyzer: str = ""  # token: word or char


def _pipeline(model: LabelloopClassifier) -> Any:
    if model.pipeline_ is None:
        raise RuntimeError("the model is not fitted")
    return model.pipeline_


def explain_method(model: LabelloopClassifier) -> str:
    """Which method explains this model's items: treeshap, linear or none."""
    estimator = model.estimator_
    if type(estimator).__name__ == "XGBClassifier":
        return METHOD_TREESHAP
    if getattr(estimator, "coef_", None) is not None:
        return METHOD_LINEAR
    return METHOD_NONE


def feature_refs(model: LabelloopClassifier) -> list[FeatureRef]:
    """Every output column of the fitted ColumnTransformer, in order, traced to its source column."""
    features = _pipeline(model).named_steps["features"]
    width = sum(s.stop - s.start for s in features.output_indices_.values())
    refs = [FeatureRef("", "raw", f"feature {i}") for i in range(width)]
    for name, transformer, source in features.transformers_:
        part = features.output_indices_.get(name)
        if part is None or part.stop <= part.start or transformer == "drop":
            continue
        columns = [str(c) for c in source]
        for offset, ref in enumerate(_part_refs(name, transformer, columns, part.stop - part.start)):
            refs[part.start + offset] = ref
    return refs


def _part_refs(name: str, transformer: Any, columns: list[str], width: int) -> list[FeatureRef]:
    if name == "categorical":
        return [FeatureRef(c, "value") for c in columns][:width]
    if name == "onehot":
        return _onehot_refs(transformer, columns, width)
    if name.startswith("text_") and columns:
        return _text_refs(transformer, columns[0], width)
    try:
        names = [str(n) for n in transformer.get_feature_names_out(columns)]
    except (AttributeError, ValueError, TypeError):
        names = [f"{name} {i}" for i in range(width)]
    refs = []
    for sub in names:
        if sub in columns:
            refs.append(FeatureRef(sub, "value"))
        elif sub.startswith("missingindicator_") and sub.removeprefix("missingindicator_") in columns:
            refs.append(FeatureRef(sub.removeprefix("missingindicator_"), "missing"))
        else:
            refs.append(FeatureRef("", "raw", sub))
    return (refs + [FeatureRef("", "raw", f"{name} {i}") for i in range(len(refs), width)])[:width]


def _onehot_refs(transformer: Any, columns: list[str], width: int) -> list[FeatureRef]:
    encoder = transformer.named_steps["encode"] if hasattr(transformer, "named_steps") else transformer
    refs: list[FeatureRef] = []
    infrequent = getattr(encoder, "infrequent_categories_", None) or [None] * len(columns)
    for column, categories, rare in zip(columns, encoder.categories_, infrequent, strict=False):
        rare_set = {str(c) for c in rare} if rare is not None else set()
        refs += [FeatureRef(column, "onehot", str(c)) for c in categories if str(c) not in rare_set]
        if rare_set:
            refs.append(FeatureRef(column, "onehot", "(rare value)"))
    if len(refs) != width:  # an encoder configured otherwise (drop=...): name the columns generically
        return [FeatureRef(columns[0] if len(columns) == 1 else "", "raw", f"one-hot {i}") for i in range(width)]
    return refs


def _text_refs(transformer: Any, column: str, width: int) -> list[FeatureRef]:
    union = transformer.named_steps["vectorize"] if hasattr(transformer, "named_steps") else transformer
    refs: list[FeatureRef] = []
    for analyzer, part in getattr(union, "transformer_list", []):
        vocabulary = getattr(part, "vocabulary_", None)
        if vocabulary is not None:
            tokens = sorted(vocabulary, key=vocabulary.__getitem__)
            refs += [FeatureRef(column, "token", token, analyzer) for token in tokens]
        else:
            hashing = part.named_steps["hash"] if hasattr(part, "named_steps") else part
            refs += [FeatureRef(column, "hashed", f"{analyzer} {i}") for i in range(int(getattr(hashing, "n_features", 0)))]
    if len(refs) != width:
        return [FeatureRef(column, "raw", f"text feature {i}") for i in range(width)]
    return refs


def _number(value: Any) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    number = float(value)
    return f"{number:.4g}" if math.isfinite(number) else str(number)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def describe(ref: FeatureRef, raw: dict[str, Any], x: float) -> str:
    """`ref` for a person, with the item's value: `state=CA`, `amount missing`, `body: 'refund'`, ..."""
    value = raw.get(ref.column)
    if ref.kind == "value":
        if _missing(value):
            return f"{ref.column} missing"
        return f"{ref.column}={_number(value) if isinstance(value, (int, float, np.number)) else value}"
    if ref.kind == "missing":  # the indicator may be scaled: the item's own value says whether it is missing
        return f"{ref.column} missing" if _missing(value) else f"{ref.column} present"
    if ref.kind == "onehot":
        return f"{ref.column}={value if not _missing(value) else '(missing)'}" if x else f"{ref.column} not {ref.detail}"
    if ref.kind == "token":
        shown = f"'{ref.detail}'" + (" (characters)" if ref.analyzer == "char" else "")
        return f"{ref.column}: {shown}" if x else f"{ref.column}: no {shown}"
    if ref.kind == "hashed":
        return f"{ref.column}: hashed n-gram {ref.detail}"
    return ref.detail or ref.column


def contributions(model: LabelloopClassifier, frame: pd.DataFrame) -> tuple[str, np.ndarray | None, Any]:
    """(method, per-class contributions (rows, present classes, features) or None, the feature matrix).

    Classes are the pipeline's present classes (`model.pipeline_.classes_`); multi-class contributions
    are centred across classes."""
    method = explain_method(model)
    if method == METHOD_NONE or len(frame) == 0:
        return method, None, None
    matrix = model.transform(frame)
    estimator = model.estimator_
    n_classes = len(_pipeline(model).classes_)
    values = (_treeshap if method == METHOD_TREESHAP else _linear)(estimator, matrix, n_classes)
    if n_classes > 2:
        values = values - values.mean(axis=1, keepdims=True)
    return method, values, matrix


def _treeshap(estimator: Any, matrix: Any, n_classes: int) -> np.ndarray:
    import xgboost

    booster = estimator.get_booster()
    n_rows, n_features = matrix.shape
    per_row = max(n_classes, 1) * (n_features + 1)
    step = max(1, MAX_CONTRIB_VALUES // per_row)
    out = np.empty((n_rows, n_classes, n_features), dtype=np.float32)
    for start in range(0, n_rows, step):
        chunk = matrix[start:start + step]
        dmatrix = xgboost.DMatrix(chunk, feature_types=getattr(estimator, "feature_types", None),
                                  enable_categorical=bool(getattr(estimator, "enable_categorical", False)), missing=np.nan)
        raw = np.asarray(booster.predict(dmatrix, pred_contribs=True))
        if raw.ndim == 2:  # binary: the margin of class 1; class 0 is its opposite
            body = raw[:, :-1]
            out[start:start + len(body), 0] = -body
            out[start:start + len(body), 1] = body
        else:
            out[start:start + raw.shape[0]] = raw[:, :, :-1]
    return out


def _linear(estimator: Any, matrix: Any, n_classes: int) -> np.ndarray:
    import scipy.sparse as sp

    coef = np.asarray(estimator.coef_, dtype=np.float64)
    if coef.shape[0] == 1 and n_classes == 2:
        coef = np.vstack([-coef[0], coef[0]])
    if sp.issparse(matrix):
        rows = matrix.tocsr()
        return np.stack([np.asarray(rows.multiply(coef[k]).todense()) for k in range(coef.shape[0])], axis=1)
    dense = np.asarray(matrix, dtype=np.float64)
    return dense[:, None, :] * coef[None, :, :]


def explain(model: LabelloopClassifier, frame: pd.DataFrame, labels: list[Any] | np.ndarray | pd.Series | None = None,
            top: int = 3) -> list[dict[str, Any]]:
    """Per row of `frame`: why the model thinks `labels[i]` (default: its own prediction).

    Each explanation is `{"label", "method", "toward": [{"feature", "weight"}, ...], "away": [...]}` with up to
    `top` features each way, strongest first (`weight` in log-odds, rounded), plus a `note` when there is no
    explanation (the estimator has none, or the label is a class the model never saw).
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    guesses = list(model.predict(frame)) if labels is None else [None if _missing(v) else str(v) for v in labels]
    if len(guesses) != len(frame):
        raise ValueError(f"explain got {len(guesses)} labels for {len(frame)} rows")
    method, values, matrix = contributions(model, frame)
    if values is None:
        name = type(model.estimator_).__name__
        note = (f"no per-item explanation for {name} (TreeSHAP for XGBoost, coefficients x values for linear models)"
                if method == METHOD_NONE else "")
        return [_empty(g, method, note) for g in guesses]
    refs = feature_refs(model)
    present = [str(c) for c in _pipeline(model).classes_]
    raw_rows = frame.reset_index(drop=True)
    out = []
    for i, guess in enumerate(guesses):
        if guess is None or guess not in present:
            out.append(_empty(guess, method, "no guess" if guess is None else f"the model never saw class {guess!r}"))
            continue
        row_values = values[i, present.index(guess)]
        raw = {c: raw_rows.at[i, c] for c in raw_rows.columns}
        named = _named_contributions(row_values, refs, raw, _row(matrix, i))
        toward = [(f, w) for f, w in named if w >= MIN_WEIGHT][:top]
        away = [(f, w) for f, w in reversed(named) if w <= -MIN_WEIGHT][:top]
        out.append({"label": guess, "method": method,
                    "toward": [{"feature": f, "weight": round(w, 4)} for f, w in toward],
                    "away": [{"feature": f, "weight": round(w, 4)} for f, w in away]})
    return out


def _row(matrix: Any, i: int) -> np.ndarray:
    """Row `i` of a dense or sparse feature matrix as a flat array."""
    row = matrix[i]
    return np.asarray(row.todense() if hasattr(row, "todense") else row, dtype=np.float64).ravel()


def _named_contributions(row_values: np.ndarray, refs: list[FeatureRef], raw: dict[str, Any],
                         x: np.ndarray) -> list[tuple[str, float]]:
    """The row's contributions named for a person, those with one name summed (a column's value and its
    missing indicator both read `amount missing`), strongest toward first. Only the CANDIDATES strongest
    each way are named: a text model has tens of thousands of features, nearly all zero for one item."""
    nonzero = np.flatnonzero(row_values)
    if len(nonzero) > 2 * CANDIDATES:
        ordered = nonzero[np.argsort(row_values[nonzero], kind="stable")]
        nonzero = np.concatenate([ordered[:CANDIDATES], ordered[-CANDIDATES:]])
    totals: dict[str, float] = {}
    for j in nonzero:
        name = describe(refs[j], raw, float(x[j]))
        totals[name] = totals.get(name, 0.0) + float(row_values[j])
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))


def _empty(label: str | None, method: str, note: str) -> dict[str, Any]:
    out: dict[str, Any] = {"label": label, "method": method, "toward": [], "away": []}
    if note:
        out["note"] = note
    return out


def why_text(explanation: dict[str, Any] | None) -> str:
    """One explanation as one line for a person (Label Studio's block, a report)."""
    if not explanation:
        return ""
    if not explanation.get("toward") and not explanation.get("away"):
        return explanation.get("note", "no explanation")

    def part(entries: list[dict[str, Any]]) -> str:
        return ", ".join(f"{e['feature']} ({e['weight']:+.2f})" for e in entries) or "nothing notable"

    return f"toward: {part(explanation.get('toward', []))}; away: {part(explanation.get('away', []))}"
