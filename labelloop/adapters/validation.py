"""Great Expectations: one wrapper that runs a suite of expectations over a DataFrame and says which
rows failed which expectation, and the loop's suites on top of it, as data:

* the prediction log (capture, `validate_prediction_log`): the contract in labelloop.prediction_log,
  plus the workspace schema's feature rules (`feature_checks`, below);
* the labelled set (the `validate` DVC stage, `labeled_set_checks`);
* the vendor's answers (import, `validate_annotations`): item ids belong to this batch, labels are in
  the label set, no nulls in `item_id` / `annotator_id` / `label`, and one answer per (item, annotator);
  annotator ids are normalised first (`labelloop.domain.quality.normalize_annotator_id`), so one person
  is one annotator in votes, gold tracking and agreement whichever vendor delivered the answer;
* the aggregated final labels (import, `validate_final_labels`): the same membership and null checks,
  and exactly one final label per item.

Feature rules generated from the schema (`labelloop.schema`), per column role:

* every feature: not null unless the schema says `nullable` (the reason names the column);
* numeric: a present value must be a finite number (text that does not parse, or ±inf, is
  quarantined with the value in the reason; NaN is "missing", allowed where nullable);
* categorical: text; a value outside the set seen at init is *drift*, not an error: the row is kept
  and counted per column (`LogValidation.unseen_categories`, reported by capture);
* text: text, at most `text_length_limit(spec)` characters: `TEXT_LENGTH_FACTOR` times the longest
  value seen at init, and never less than `TEXT_MIN_LENGTH_LIMIT` (a schema without lengths:
  `TEXT_DEFAULT_LENGTH_LIMIT`). Longer text is quarantined as absurd: it is no review or ticket
  the model was built for, and it would dominate TF-IDF and the annotators' screen;
* id columns: optional in the log; when present, read as text and carried along.

Rows that fail go to a quarantine frame with the failed expectation and a readable reason; nothing is
dropped silently. A `Check` marked `drift` counts its failures instead of quarantining them. Great
Expectations is imported lazily (4–6 s), only when a suite runs; the context is ephemeral and built
once per process, and each distinct suite is built once and reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelloop.columns import (
    ANNOTATOR_ID,
    CONFIDENCE,
    ITEM_ID,
    LABEL,
    PREDICTED,
    PREDICTION_ID,
    TS,
)
from labelloop.core.io import write_text
from labelloop.domain.quality import normalize_annotator_id
from labelloop.prediction_log import (
    CONFIDENCE_TOLERANCE,
    REQUIRED_COLUMNS,
    normalise_prediction_log,
    normalise_text,
    snippet,
    unknown_proba_columns,
)
from labelloop.schema import ColumnSpec, Schema, as_text, unparseable

QUARANTINE_COLUMNS = ["expectation", "reason"]

# Text length bound (characters): TEXT_LENGTH_FACTOR × the longest value seen at init, at least
# TEXT_MIN_LENGTH_LIMIT; TEXT_DEFAULT_LENGTH_LIMIT when the schema recorded no lengths.
TEXT_LENGTH_FACTOR = 10
TEXT_MIN_LENGTH_LIMIT = 1_000
TEXT_DEFAULT_LENGTH_LIMIT = 100_000
# Python types a numeric value may arrive as, per row (GX checks the dtype of a numeric column as a whole).
NUMBER_TYPES = ["float", "int", "float64", "float32", "float16", "int64", "int32", "int16", "int8",
                "uint64", "uint32", "uint16", "uint8"]
TEXT_TYPES = ["str"]


@dataclass(frozen=True)
class Check:
    """One GX expectation (class name + kwargs) and the reason written for rows that fail it
    (by default the expectation and its arguments, e.g. `ExpectColumnValuesToNotBeNull(x)`)."""

    expectation: str
    kwargs: dict[str, Any]
    reason: str | None = None
    drift: bool = False  # a failing row is counted as drift (e.g. an unseen category), not quarantined

    @property
    def why(self) -> str:
        if self.reason is not None:
            return self.reason
        column = self.kwargs.get("column", "")
        extra = {k: v for k, v in self.kwargs.items() if k != "column"}
        detail = ", ".join(f"{k}={v}" for k, v in extra.items() if not isinstance(v, list) or len(v) < 8)
        return f"{self.expectation}({column}{', ' + detail if detail else ''})"

    def key(self) -> str:
        return json.dumps([self.expectation, self.kwargs], sort_keys=True, default=str)


# ----------------------------------------------------------------------------------- the GX wrapper
@functools.lru_cache(maxsize=1)
def _context():
    """The process's one ephemeral GX context and whole-dataframe batch definition."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # That module pins its logger to INFO when it loads (just above) and announces a temp docs
    # directory for every ephemeral context: not news for a pipeline log.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    datasource = context.data_sources.add_pandas("labelloop")
    asset = datasource.add_dataframe_asset("frames")
    batch_definition = asset.add_batch_definition_whole_dataframe("whole")
    return context, batch_definition


_DEFINITIONS: dict[str, Any] = {}
_MAX_DEFINITIONS = 64


def _definition(name: str, checks: Sequence[Check]):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context, batch_definition = _context()
    digest = hashlib.sha256("|".join(c.key() for c in checks).encode()).hexdigest()[:16]
    key = f"{name}-{digest}"
    if key not in _DEFINITIONS:
        if len(_DEFINITIONS) >= _MAX_DEFINITIONS:  # one suite per batch id set: keep the cache bounded
            old = next(iter(_DEFINITIONS))
            _DEFINITIONS.pop(old)
            context.validation_definitions.delete(old)
            context.suites.delete(old)
        expectations = [getattr(gxe, c.expectation)(**c.kwargs, meta={"check": i}) for i, c in enumerate(checks)]
        suite = context.suites.add(gx.ExpectationSuite(name=key, expectations=expectations))
        _DEFINITIONS[key] = context.validation_definitions.add(
            gx.ValidationDefinition(name=key, data=batch_definition, suite=suite)
        )
    return _DEFINITIONS[key]


def _row_level(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every column GX would judge as a whole (type expectations on a string, boolean or
    nullable-extension dtype) as object, so that each expectation says which rows fail."""
    data = frame.reset_index(drop=True).copy()
    for column in data.columns:
        dtype = data[column].dtype
        extension = isinstance(dtype, pd.api.extensions.ExtensionDtype) and not isinstance(dtype, pd.DatetimeTZDtype)
        if extension or pd.api.types.is_bool_dtype(dtype):
            values = data[column].astype(object)
            data[column] = values.where(values.notna(), None)
    return data


def run_checks(frame: pd.DataFrame, checks: Sequence[Check], name: str) -> pd.DataFrame:
    """Run the checks as one GX suite; one row per (row position, failed check): row, expectation, reason,
    and `check`, the failed check's position in `checks`."""
    empty = pd.DataFrame(
        {"row": pd.Series(dtype="int64"), "expectation": pd.Series(dtype=object), "reason": pd.Series(dtype=object),
         "check": pd.Series(dtype="int64")}
    )
    if frame.empty or not checks:
        return empty
    data = _row_level(frame)
    data["_row"] = np.arange(len(data), dtype="int64")
    result = _definition(name, checks).run(
        batch_parameters={"dataframe": data},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["_row"]},
    )
    failures: list[tuple[int, str, str, int]] = []
    for outcome in result.results:
        if outcome.success:
            continue
        # GX does not keep the suite's order in its results: find the check by the index in `meta`.
        position = int(outcome.expectation_config.meta["check"])
        check = checks[position]
        indices = outcome.result.get("unexpected_index_list")
        if indices is None:
            raise RuntimeError(f"{check.expectation} failed without row indices; it cannot be used for row quarantine")
        for entry in indices:
            row = entry["_row"] if isinstance(entry, dict) else entry
            failures.append((int(row), check.expectation, check.why, position))
    if not failures:
        return empty
    return pd.DataFrame(failures, columns=["row", "expectation", "reason", "check"]).astype({"row": "int64", "check": "int64"})


# ----------------------------------------------------------------------------- features, per role
def text_length_limit(spec: ColumnSpec) -> int:
    """The longest text (characters) a text column accepts (see the module docstring)."""
    if spec.max_length is None:
        return TEXT_DEFAULT_LENGTH_LIMIT
    return max(TEXT_LENGTH_FACTOR * int(spec.max_length), TEXT_MIN_LENGTH_LIMIT)


def feature_checks(schema: Schema, *, value_sets: bool = True, length_limits: bool = True) -> list[Check]:
    """The schema's feature rules as GX checks, on a frame whose numeric features are floats (unparseable
    values already NaN, see `numeric_problems`). Categorical value sets are drift checks."""
    checks: list[Check] = []
    for spec in schema.features:
        name = spec.name
        if not spec.nullable:
            checks.append(Check("ExpectColumnValuesToNotBeNull", {"column": name},
                                f"ExpectColumnValuesToNotBeNull({name}): {name} is missing and the schema does not allow nulls"))
        if spec.role == "numeric":
            continue
        checks.append(Check("ExpectColumnValuesToBeInTypeList", {"column": name, "type_list": TEXT_TYPES},
                            f"ExpectColumnValuesToBeInTypeList({name}): {spec.role} values must be text"))
        if spec.role == "categorical" and value_sets and spec.categories is not None:
            checks.append(Check("ExpectColumnValuesToBeInSet", {"column": name, "value_set": list(spec.categories)},
                                f"{name}: a category not seen at init", drift=True))
        if spec.role == "text" and length_limits:
            limit = text_length_limit(spec)
            checks.append(Check("ExpectColumnValueLengthsToBeBetween", {"column": name, "max_value": limit},
                                f"ExpectColumnValueLengthsToBeBetween({name}): text longer than {limit:,} characters"))
    return checks


def numeric_problems(frame: pd.DataFrame, schema: Schema) -> dict[str, list[tuple[int, str]]]:
    """Per numeric feature, (row position, reason) for values present but not a finite number ("oops", inf)."""
    problems: dict[str, list[tuple[int, str]]] = {}
    for column, mask in unparseable(frame, schema).items():
        problems[column] = [(int(i), f"{column}: {snippet(frame[column].iloc[i])} is not a finite number")
                            for i in np.flatnonzero(mask.to_numpy())]
    return problems


_SCALARS = (str, bytes, int, float, bool, np.number, np.bool_)


def _schema_frame(frame: pd.DataFrame, schema: Schema, columns: Sequence[str]) -> pd.DataFrame:
    """`columns` of `frame` in the schema's types, as GX checks them: numeric features float64
    (unparseable and ±inf → NaN, reported by `numeric_problems`); categorical and text features as text
    (None for missing; a number is read as its text, as ids are), while a value that is no scalar at all
    (a list, a mapping) is kept as it is, to fail the type rule; id columns as text."""
    out = frame.copy()
    for name in columns:
        role = schema.column(name).role
        if role == "numeric":
            values = pd.to_numeric(out[name], errors="coerce").astype("float64")
            out[name] = values.where(np.isfinite(values.to_numpy(dtype="float64", na_value=np.nan)))
        elif role == "id":
            out[name] = normalise_text(out[name]).set_axis(out.index)
        else:
            raw = out[name].to_numpy(dtype=object)
            out[name] = pd.Series([as_text(v) if v is None or isinstance(v, _SCALARS) or v is pd.NA or v is pd.NaT else v
                                   for v in raw], index=out.index, dtype=object)
    return out


# ------------------------------------------------------------------------------- the prediction log
def prediction_log_checks(schema: Schema) -> list[Check]:
    checks = [
        Check("ExpectColumnValuesToNotBeNull", {"column": PREDICTION_ID}),
        Check("ExpectColumnValuesToNotBeNull", {"column": ITEM_ID}),
        Check("ExpectColumnValuesToNotBeNull", {"column": TS}),
        Check("ExpectColumnValuesToNotBeNull", {"column": PREDICTED}),
        Check("ExpectColumnValuesToBeInSet", {"column": PREDICTED, "value_set": list(schema.class_names)}),
        Check("ExpectColumnValuesToBeBetween", {"column": CONFIDENCE, "min_value": 0.0, "max_value": 1.0}),
        Check("ExpectColumnValuesToNotBeNull", {"column": CONFIDENCE}),
    ]
    for column in schema.proba_columns:
        checks.append(Check("ExpectColumnValuesToNotBeNull", {"column": column}))
        checks.append(Check("ExpectColumnValuesToBeBetween", {"column": column, "min_value": 0.0, "max_value": 1.0}))
    return checks + feature_checks(schema)


@dataclass(frozen=True)
class LogValidation:
    """A prediction-log frame split: `valid` rows normalised (the contract's columns in their one type,
    features in the schema's types), `quarantined` rows as given with a `reason`, and per categorical
    column the number of valid rows whose category was not seen at init (drift, kept)."""

    valid: pd.DataFrame
    quarantined: pd.DataFrame
    unseen_categories: dict[str, int]


def validate_prediction_log(frame: pd.DataFrame, schema: Schema) -> LogValidation:
    """Validate a prediction-log frame against the contract (labelloop.prediction_log; README, "The
    prediction-log contract") and the workspace schema's feature rules (module docstring).

    A missing column (the schema's id columns are optional), or a proba_<x> column for a class outside
    the label set, is a whole-file error (raised): no row of such a file can be trusted. A value that
    does not fit its column (text in a numeric feature, a null where the schema forbids it, absurdly
    long text) quarantines its row with the reason; the other rows go on.
    """
    features = schema.feature_columns
    proba_columns = schema.proba_columns
    missing = [c for c in (*REQUIRED_COLUMNS, *proba_columns, *features) if c not in frame.columns]
    if missing:
        raise ValueError(f"prediction log is missing columns {missing[:10]}")
    unknown = unknown_proba_columns(list(frame.columns), proba_columns, schema.stored_columns)
    if unknown:
        raise ValueError(f"prediction log has probability columns {unknown[:10]} for classes outside the label set "
                         f"{list(schema.class_names)}: its model predicts another label set, so its probabilities "
                         "cannot rank items")
    frame = frame.reset_index(drop=True)
    # One type per contract column (ids as text, ts as UTC timestamps, item_id from prediction_id).
    normalised, extra = normalise_prediction_log(frame)
    unreadable = numeric_problems(normalised, schema)
    for problems in unreadable.values():
        extra.extend(problems)
    stored = [c for c in schema.stored_columns if c in normalised.columns]
    coerced = _schema_frame(normalised, schema, stored)
    # Coerce what should be numeric; unparseable values become NaN and fail the not-null rules.
    for column in (*proba_columns, CONFIDENCE):
        coerced[column] = pd.to_numeric(coerced[column], errors="coerce").astype("float64")
        coerced.loc[~np.isfinite(coerced[column].to_numpy(dtype="float64", na_value=np.nan)), column] = np.nan
    checks = prediction_log_checks(schema)
    failures = run_checks(coerced, checks, "prediction_log")
    drift = failures["check"].map(lambda i: checks[i].drift).to_numpy(dtype=bool) if len(failures) else np.zeros(0, bool)
    drifted, failures = failures[drift], failures[~drift]
    # A value that is there but unreadable is reported as such, not also as "missing".
    said = {(row, column) for column, problems in unreadable.items() for row, _ in problems}
    if said and len(failures):
        repeated = [checks[i].expectation == "ExpectColumnValuesToNotBeNull" and (row, checks[i].kwargs["column"]) in said
                    for row, i in zip(failures["row"], failures["check"], strict=True)]
        failures = failures[~np.asarray(repeated, dtype=bool)]
    # Cross-column and cross-row rules GX has no single expectation for.
    probas = coerced[proba_columns].to_numpy(dtype="float64", na_value=np.nan)
    sums = coerced[proba_columns].sum(axis=1, min_count=len(proba_columns)).to_numpy()
    bad_sum = ~np.isclose(np.nan_to_num(sums, nan=math.inf), 1.0, atol=1e-3)
    extra.extend((int(i), "probabilities do not sum to 1") for i in np.flatnonzero(bad_sum))
    extra.extend(_inconsistent_confidence(coerced, probas, list(schema.class_names)))
    duplicated = coerced[PREDICTION_ID].duplicated(keep="first").to_numpy()
    extra.extend((int(i), "duplicate prediction_id in this read") for i in np.flatnonzero(duplicated))
    if ITEM_ID in frame.columns:  # given, not derived (a derived one repeats prediction_id's check)
        repeated = (coerced[ITEM_ID].duplicated(keep="first") & coerced[ITEM_ID].notna()).to_numpy()
        extra.extend((int(i), "duplicate item_id in this read (its first prediction is kept)") for i in np.flatnonzero(repeated))
    if extra:
        failures = pd.concat([failures[["row", "reason"]], pd.DataFrame(extra, columns=["row", "reason"])], ignore_index=True)
    reasons = failures.groupby("row")["reason"].agg(lambda r: "; ".join(sorted(set(r))))
    bad = np.zeros(len(coerced), dtype=bool)
    bad[reasons.index.to_numpy()] = True
    quarantined = frame.loc[bad].copy()
    quarantined["reason"] = reasons.reindex(np.flatnonzero(bad)).to_numpy()
    # Drift among the rows kept: per column, how many carry a category not seen at init.
    kept_drift = drifted[~bad[drifted["row"].to_numpy()]] if len(drifted) else drifted
    unseen: dict[str, int] = {}
    for position, count in kept_drift.groupby("check")["row"].nunique().items():
        column = str(checks[int(position)].kwargs["column"])
        unseen[column] = unseen.get(column, 0) + int(count)
    valid = coerced.loc[~bad].reset_index(drop=True)
    return LogValidation(valid, quarantined.reset_index(drop=True), dict(sorted(unseen.items())))


def _inconsistent_confidence(frame: pd.DataFrame, probas: np.ndarray, class_names: list[str]) -> list[tuple[int, str]]:
    """Rows whose confidence is neither the top probability nor the predicted class's probability.

    Rows with a missing confidence or probability already fail a GX rule and are not reported twice.
    """
    confidence = frame[CONFIDENCE].to_numpy(dtype="float64", na_value=np.nan)
    complete = np.isfinite(confidence) & np.isfinite(probas).all(axis=1) if probas.shape[1] else np.zeros(len(frame), bool)
    if not complete.any():
        return []
    top = np.where(complete, np.nan_to_num(probas, nan=-np.inf).max(axis=1), np.nan)
    codes = pd.Categorical(frame[PREDICTED], categories=class_names).codes
    of_predicted = np.full(len(frame), np.nan)
    known = complete & (codes >= 0)
    of_predicted[known] = probas[np.flatnonzero(known), codes[known]]
    matches = np.isclose(confidence, top, atol=CONFIDENCE_TOLERANCE, rtol=0) | np.isclose(
        confidence, of_predicted, atol=CONFIDENCE_TOLERANCE, rtol=0)
    wrong = np.flatnonzero(complete & ~matches)
    return [(int(i), (f"confidence {confidence[i]:.4g} is neither the top probability ({top[i]:.4g}) nor the predicted "
                      f"class's probability (tolerance {CONFIDENCE_TOLERANCE})")) for i in wrong]


def labeled_set_checks(schema: Schema) -> list[Check]:
    """The labelled set the model trains on: one row per item, a label from the label set, and the
    schema's feature rules: nulls only where a feature is nullable, categorical and text values text
    (numbers where numeric). Unseen categories and text length are not checked here: labelled rows
    came through capture, and a category that drifted in is exactly what the model should learn."""
    checks = [
        Check("ExpectColumnValuesToNotBeNull", {"column": ITEM_ID}),
        Check("ExpectColumnValuesToBeUnique", {"column": ITEM_ID}),
        Check("ExpectColumnValuesToNotBeNull", {"column": LABEL}),
        Check("ExpectColumnValuesToBeInSet", {"column": LABEL, "value_set": list(schema.class_names)}),
    ]
    numeric_types = [Check("ExpectColumnValuesToBeInTypeList", {"column": c, "type_list": NUMBER_TYPES},
                           f"ExpectColumnValuesToBeInTypeList({c}): numeric values must be numbers")
                     for c in schema.numeric_columns]
    return checks + feature_checks(schema, value_sets=False, length_limits=False) + numeric_types


# ------------------------------------------------------------------------- answers and final labels
def _as_str_or_null(series: pd.Series) -> pd.Series:
    def convert(value: Any) -> Any:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return None
        text = str(value).strip()
        return text if text else None

    return pd.Series([convert(v) for v in series], index=series.index, dtype=object)


def _split(frame: pd.DataFrame, failures: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    if failures.empty:
        quarantined = frame.iloc[0:0].copy()
        for column in QUARANTINE_COLUMNS:
            quarantined[column] = pd.Series(dtype=object)
        return frame.reset_index(drop=True), quarantined
    grouped = failures.sort_values(["row", "expectation"]).groupby("row").agg(
        expectation=("expectation", lambda s: "; ".join(dict.fromkeys(s))),
        reason=("reason", lambda s: "; ".join(dict.fromkeys(s))),
    )
    bad = np.zeros(len(frame), dtype=bool)
    bad[grouped.index.to_numpy()] = True
    quarantined = frame.loc[bad].copy()
    quarantined["expectation"] = grouped["expectation"].to_numpy()
    quarantined["reason"] = grouped["reason"].to_numpy()
    return frame.loc[~bad].reset_index(drop=True), quarantined.reset_index(drop=True)


def annotation_checks(batch_item_ids: Iterable[str], label_set: Sequence[str]) -> list[Check]:
    items = sorted({str(i) for i in batch_item_ids})
    labels = [str(c) for c in label_set]
    return [
        Check("ExpectColumnValuesToNotBeNull", {"column": ITEM_ID}, "item_id is missing"),
        Check("ExpectColumnValuesToNotBeNull", {"column": ANNOTATOR_ID}, "annotator_id is missing"),
        Check("ExpectColumnValuesToNotBeNull", {"column": LABEL}, "label is missing"),
        Check("ExpectColumnValuesToBeInSet", {"column": ITEM_ID, "value_set": items}, "item_id is not in this batch"),
        Check("ExpectColumnValuesToBeInSet", {"column": LABEL, "value_set": labels}, "label is not in the label set"),
    ]


def validate_annotations(
    annotations: pd.DataFrame, batch_item_ids: Iterable[str], label_set: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split vendor answers into (accepted, quarantined); quarantined rows carry `expectation`, `reason`.

    Rows a vendor adapter could not parse carry a non-null `parse_error` and are quarantined as
    `malformed`. Of several answers by one annotator on one item the last one delivered is kept and
    the earlier ones are quarantined as duplicates. Missing required columns raise ValueError: no row
    of such a payload can be trusted.
    """
    missing = [c for c in (ITEM_ID, ANNOTATOR_ID, LABEL) if c not in annotations.columns]
    if missing:
        raise ValueError(f"annotations lack required columns {missing}; got {list(annotations.columns)}")
    frame = annotations.reset_index(drop=True).copy()
    given_annotators = _as_str_or_null(frame[ANNOTATOR_ID])
    for column in (ITEM_ID, LABEL):
        frame[column] = _as_str_or_null(frame[column])
    frame[ANNOTATOR_ID] = pd.Series([normalize_annotator_id(v) for v in given_annotators], index=frame.index, dtype=object)
    extra: list[tuple[int, str, str]] = []
    clean = np.ones(len(frame), dtype=bool)
    # An id made only of invisible characters names nobody: say so (escaped), rather than "missing".
    invisible = (given_annotators.notna() & frame[ANNOTATOR_ID].isna()).to_numpy()
    extra.extend((int(i), "annotator_id_normalized_empty",
                  f"annotator_id {given_annotators.iat[i][:40]!r} is empty once normalised (only invisible or space characters)")
                 for i in np.flatnonzero(invisible))
    clean &= ~invisible
    if "parse_error" in frame.columns:
        malformed = frame["parse_error"].notna().to_numpy()
        extra.extend((int(i), "malformed", f"malformed record: {frame.at[i, 'parse_error']}") for i in np.flatnonzero(malformed))
        clean &= ~malformed
    failures = run_checks(frame, annotation_checks(batch_item_ids, label_set), "annotations")
    failures = failures[clean[failures["row"].to_numpy()]] if len(failures) else failures
    # Duplicates among rows that pass every other check: keep the last answer per (item, annotator).
    failed_rows = set(failures["row"].tolist()) | {r for r, _, _ in extra}
    candidates = frame.loc[[i for i in range(len(frame)) if i not in failed_rows], [ITEM_ID, ANNOTATOR_ID]]
    duplicated = candidates[candidates.duplicated(keep="last")].index
    extra.extend(
        (int(i), "ExpectCompoundColumnsToBeUnique", "duplicate answer by this annotator for this item (the last one is kept)")
        for i in duplicated
    )
    if extra:
        failures = pd.concat([failures, pd.DataFrame(extra, columns=["row", "expectation", "reason"])], ignore_index=True)
    return _split(frame, failures)


def final_label_checks(batch_item_ids: Iterable[str], label_set: Sequence[str]) -> list[Check]:
    items = sorted({str(i) for i in batch_item_ids})
    return [
        Check("ExpectColumnValuesToNotBeNull", {"column": ITEM_ID}, "item_id is missing"),
        Check("ExpectColumnValuesToNotBeNull", {"column": LABEL}, "final label is missing"),
        Check("ExpectColumnValuesToBeInSet", {"column": ITEM_ID, "value_set": items}, "item_id is not in this batch"),
        Check("ExpectColumnValuesToBeInSet", {"column": LABEL, "value_set": [str(c) for c in label_set]},
              "final label is not in the label set"),
        Check("ExpectColumnValuesToBeUnique", {"column": ITEM_ID}, "more than one final label for this item"),
    ]


def validate_final_labels(
    final: pd.DataFrame, batch_item_ids: Iterable[str], label_set: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split aggregated labels into (accepted, quarantined): one final label per item, from the set."""
    missing = [c for c in (ITEM_ID, LABEL) if c not in final.columns]
    if missing:
        raise ValueError(f"final labels lack required columns {missing}; got {list(final.columns)}")
    frame = final.reset_index(drop=True).copy()
    frame[ITEM_ID] = _as_str_or_null(frame[ITEM_ID])
    frame[LABEL] = _as_str_or_null(frame[LABEL])
    return _split(frame, run_checks(frame, final_label_checks(batch_item_ids, label_set), "final_labels"))


def write_quarantine(path: str | Path, quarantined: pd.DataFrame, **context: Any) -> Path:
    """Write quarantined rows as JSON lines (atomic; rewriting the same batch replaces the file).

    Every line has the row's own fields plus `expectation`, `reason` and the given context (e.g.
    `batch_id`). Values are kept as received (strings, numbers, null).
    """
    path = Path(path)
    lines = []
    for record in quarantined.to_dict(orient="records"):
        clean = {k: (None if (isinstance(v, float) and np.isnan(v)) else v) for k, v in record.items()}
        clean.update(context)
        lines.append(json.dumps(clean, sort_keys=True, default=str))
    write_text(path, "".join(line + "\n" for line in lines))
    return path
