"""Great Expectations suites over DataFrames, returning which rows failed which expectation.

Great Expectations is imported lazily (4–6 s), only when a validation actually runs; the context is
ephemeral and reused within a process.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from labelloop.prediction_log import (
    CONFIDENCE_TOLERANCE,
    ITEM_ID,
    PROBA_PREFIX,
    REQUIRED_COLUMNS,
    normalise_prediction_log,
    unknown_proba_columns,
)


@dataclass(frozen=True)
class Rule:
    """One column expectation: GX class name and its keyword arguments."""

    expectation: str
    kwargs: dict[str, Any]

    @property
    def reason(self) -> str:
        column = self.kwargs.get("column", "")
        extra = {k: v for k, v in self.kwargs.items() if k != "column"}
        detail = ", ".join(f"{k}={v}" for k, v in extra.items() if not isinstance(v, list) or len(v) < 8)
        return f"{self.expectation}({column}{', ' + detail if detail else ''})"


@functools.lru_cache(maxsize=1)
def _context():
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


def _suite_key(name: str, rules: tuple[Rule, ...]) -> str:
    text = repr([(r.expectation, sorted(r.kwargs.items())) for r in rules])
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


_DEFINITIONS: dict[str, Any] = {}


def _validation_definition(name: str, rules: tuple[Rule, ...]):
    key = _suite_key(name, rules)
    if key not in _DEFINITIONS:
        _DEFINITIONS[key] = _build_definition(key, rules)
    return _DEFINITIONS[key]


def _build_definition(key: str, rules: tuple[Rule, ...]):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context, batch_definition = _context()
    suite = gx.ExpectationSuite(name=key)
    for rule in rules:
        suite.add_expectation(getattr(gxe, rule.expectation)(**rule.kwargs))
    suite = context.suites.add(suite)
    return context.validation_definitions.add(gx.ValidationDefinition(name=key, data=batch_definition, suite=suite))


def validate_rows(frame: pd.DataFrame, rules: list[Rule], name: str = "suite") -> pd.DataFrame:
    """Run the suite; one row per (row position, failed expectation): columns `row`, `reason`."""
    if frame.empty or not rules:
        return pd.DataFrame({"row": pd.Series(dtype="int64"), "reason": pd.Series(dtype="str")})
    definition = _validation_definition(name, tuple(rules))
    indexed = frame.reset_index(drop=True)
    result = definition.run(
        batch_parameters={"dataframe": indexed},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": None},
    )
    failures: list[tuple[int, str]] = []
    for outcome in result.results:
        if outcome.success:
            continue
        rule = _rule_of(outcome.expectation_config, rules)
        indices = outcome.result.get("unexpected_index_list")
        if indices is None:
            # Table-level expectation (no per-row indices): every row carries the reason.
            failures.extend((i, rule.reason) for i in range(len(indexed)))
            continue
        for entry in indices:
            position = entry if isinstance(entry, (int, np.integer)) else next(iter(entry.values())) if isinstance(entry, dict) else entry
            failures.append((int(position), rule.reason))
    return pd.DataFrame(failures, columns=["row", "reason"]).astype({"row": "int64", "reason": "str"})


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _rule_of(config, rules: list[Rule]) -> Rule:
    """The rule a GX result belongs to (GX does not keep the suite's order in its results)."""
    for rule in rules:
        if _snake(rule.expectation) != config.type:
            continue
        if all(config.kwargs.get(key) == value for key, value in rule.kwargs.items()):
            return rule
    raise LookupError(f"GX returned a result for an expectation not in the suite: {config.type} {config.kwargs}")


def prediction_log_rules(feature_columns: list[str], proba_columns: list[str], class_names: list[str] | None = None) -> list[Rule]:
    if class_names is None:
        class_names = [c.removeprefix(PROBA_PREFIX) for c in proba_columns]
    rules = [
        Rule("ExpectColumnValuesToNotBeNull", {"column": "prediction_id"}),
        Rule("ExpectColumnValuesToNotBeNull", {"column": ITEM_ID}),
        Rule("ExpectColumnValuesToNotBeNull", {"column": "ts"}),
        Rule("ExpectColumnValuesToNotBeNull", {"column": "predicted"}),
        Rule("ExpectColumnValuesToBeInSet", {"column": "predicted", "value_set": list(class_names)}),
        Rule("ExpectColumnValuesToBeBetween", {"column": "confidence", "min_value": 0.0, "max_value": 1.0}),
        Rule("ExpectColumnValuesToNotBeNull", {"column": "confidence"}),
    ]
    for column in proba_columns:
        rules.append(Rule("ExpectColumnValuesToNotBeNull", {"column": column}))
        rules.append(Rule("ExpectColumnValuesToBeBetween", {"column": column, "min_value": 0.0, "max_value": 1.0}))
    for column in feature_columns:
        rules.append(Rule("ExpectColumnValuesToNotBeNull", {"column": column}))
    return rules


REQUIRED_LOG_COLUMNS = REQUIRED_COLUMNS


def validate_prediction_log(frame: pd.DataFrame, feature_columns: list[str], proba_columns: list[str],
                            class_names: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a prediction-log frame into (valid rows, normalised; quarantined rows as given, with a `reason`).

    The contract is in labelloop.prediction_log (README, "The prediction-log contract"). A missing
    column, or a proba_<x> column for a class outside the label set, is a whole-file error (raised):
    no row of such a file can be trusted. `class_names` default to the proba columns' classes.
    """
    missing = [c for c in (*REQUIRED_LOG_COLUMNS, *proba_columns, *feature_columns) if c not in frame.columns]
    if missing:
        raise ValueError(f"prediction log is missing columns {missing[:10]}")
    if class_names is None:
        class_names = [c.removeprefix(PROBA_PREFIX) for c in proba_columns]
    unknown = unknown_proba_columns(list(frame.columns), proba_columns, feature_columns)
    if unknown:
        raise ValueError(f"prediction log has probability columns {unknown[:10]} for classes outside the label set "
                         f"{list(class_names)}: its model predicts another label set, so its probabilities cannot rank items")
    frame = frame.reset_index(drop=True)
    # One type per contract column (ids as text, ts as UTC timestamps, item_id from prediction_id).
    normalised, extra = normalise_prediction_log(frame)
    # Coerce what should be numeric; unparseable values become NaN and fail the not-null rules.
    numeric = [*proba_columns, *feature_columns, "confidence"]
    coerced = normalised
    for column in numeric:
        coerced[column] = pd.to_numeric(coerced[column], errors="coerce").astype("float64")
        coerced.loc[~np.isfinite(coerced[column].to_numpy(dtype="float64", na_value=np.nan)), column] = np.nan
    failures = validate_rows(coerced, prediction_log_rules(feature_columns, proba_columns, class_names), name="prediction_log")
    # Cross-column and cross-row rules GX has no single expectation for.
    probas = coerced[proba_columns].to_numpy(dtype="float64", na_value=np.nan)
    sums = coerced[proba_columns].sum(axis=1, min_count=len(proba_columns)).to_numpy()
    bad_sum = ~np.isclose(np.nan_to_num(sums, nan=math.inf), 1.0, atol=1e-3)
    extra.extend((int(i), "probabilities do not sum to 1") for i in np.flatnonzero(bad_sum))
    extra.extend(_inconsistent_confidence(coerced, probas, list(class_names)))
    duplicated = coerced["prediction_id"].duplicated(keep="first").to_numpy()
    extra.extend((int(i), "duplicate prediction_id in this read") for i in np.flatnonzero(duplicated))
    if ITEM_ID in frame.columns:  # given, not derived (a derived one repeats prediction_id's check)
        repeated = (coerced[ITEM_ID].duplicated(keep="first") & coerced[ITEM_ID].notna()).to_numpy()
        extra.extend((int(i), "duplicate item_id in this read (its first prediction is kept)") for i in np.flatnonzero(repeated))
    if extra:
        failures = pd.concat([failures, pd.DataFrame(extra, columns=["row", "reason"])], ignore_index=True)
    reasons = failures.groupby("row")["reason"].agg(lambda r: "; ".join(sorted(set(r))))
    bad = np.zeros(len(coerced), dtype=bool)
    bad[reasons.index.to_numpy()] = True
    quarantined = frame.loc[bad].copy()
    quarantined["reason"] = reasons.reindex(np.flatnonzero(bad)).to_numpy()
    return coerced.loc[~bad].reset_index(drop=True), quarantined.reset_index(drop=True)


def _inconsistent_confidence(frame: pd.DataFrame, probas: np.ndarray, class_names: list[str]) -> list[tuple[int, str]]:
    """Rows whose confidence is neither the top probability nor the predicted class's probability.

    Rows with a missing confidence or probability already fail a GX rule and are not reported twice.
    """
    confidence = frame["confidence"].to_numpy(dtype="float64", na_value=np.nan)
    complete = np.isfinite(confidence) & np.isfinite(probas).all(axis=1) if probas.shape[1] else np.zeros(len(frame), bool)
    if not complete.any():
        return []
    top = np.where(complete, np.nan_to_num(probas, nan=-np.inf).max(axis=1), np.nan)
    codes = pd.Categorical(frame["predicted"], categories=class_names).codes
    of_predicted = np.full(len(frame), np.nan)
    known = complete & (codes >= 0)
    of_predicted[known] = probas[np.flatnonzero(known), codes[known]]
    matches = np.isclose(confidence, top, atol=CONFIDENCE_TOLERANCE, rtol=0) | np.isclose(
        confidence, of_predicted, atol=CONFIDENCE_TOLERANCE, rtol=0)
    wrong = np.flatnonzero(complete & ~matches)
    return [(int(i), f"confidence {confidence[i]:.4g} is neither the top probability ({top[i]:.4g}) nor the predicted "
                     f"class's probability (tolerance {CONFIDENCE_TOLERANCE})") for i in wrong]
