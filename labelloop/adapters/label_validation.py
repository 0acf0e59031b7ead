"""Validation of imported labels: a Great Expectations suite per import, failures to a quarantine.

Two suites run on every import:

* on the vendor's answers (one row per item x annotator): item ids belong to this batch, labels are in
  the label set, no nulls in `item_id` / `annotator_id` / `label`, and one answer per (item, annotator);
  annotator ids are normalised first (`normalize_annotator_id`), so one person is one annotator in
  votes, gold tracking and agreement whichever vendor delivered the answer;
* on the aggregated final labels: the same membership and null checks, and exactly one final label
  per item.

Rows that fail go to a quarantine frame with the failed expectation and a readable reason; nothing is
dropped silently. Great Expectations is imported lazily (4–6 s) and only when a suite runs.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelloop.core.io import write_text

QUARANTINE_COLUMNS = ["expectation", "reason"]


@dataclass(frozen=True)
class Check:
    """One GX expectation (class name + kwargs) and the reason written for rows that fail it."""

    expectation: str
    kwargs: dict[str, Any]
    reason: str

    def key(self) -> str:
        return json.dumps([self.expectation, self.kwargs], sort_keys=True, default=str)


_STATE: dict[str, Any] = {}
_MAX_DEFINITIONS = 64


def _batch_definition():
    """The process's one GX context and whole-dataframe batch definition (shared with labelloop.adapters.validation)."""
    from labelloop.adapters.validation import _context

    _STATE.setdefault("definitions", {})
    return _context()


def _definition(name: str, checks: Sequence[Check]):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context, batch_definition = _batch_definition()
    digest = hashlib.sha256("|".join(c.key() for c in checks).encode()).hexdigest()[:16]
    key = f"{name}-{digest}"
    definitions: dict[str, Any] = _STATE["definitions"]
    if key not in definitions:
        if len(definitions) >= _MAX_DEFINITIONS:  # one suite per batch id set: keep the cache bounded
            old = next(iter(definitions))
            definitions.pop(old)
            context.validation_definitions.delete(old)
            context.suites.delete(old)
        suite = context.suites.add(gx.ExpectationSuite(name=key, expectations=[getattr(gxe, c.expectation)(**c.kwargs, meta={"check": i}) for i, c in enumerate(checks)]))
        definitions[key] = context.validation_definitions.add(gx.ValidationDefinition(name=key, data=batch_definition, suite=suite))
    return definitions[key]


def run_checks(frame: pd.DataFrame, checks: Sequence[Check], name: str) -> pd.DataFrame:
    """Run the checks as one GX suite; one row per (row position, failed check): row, expectation, reason."""
    empty = pd.DataFrame({"row": pd.Series(dtype="int64"), "expectation": pd.Series(dtype=object), "reason": pd.Series(dtype=object)})
    if frame.empty or not checks:
        return empty
    data = frame.reset_index(drop=True).copy()
    data["_row"] = np.arange(len(data), dtype="int64")
    result = _definition(name, checks).run(
        batch_parameters={"dataframe": data},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["_row"]},
    )
    failures: list[tuple[int, str, str]] = []
    for outcome in result.results:
        if outcome.success:
            continue
        # GX does not keep the suite's order in its results: find the check by the index in `meta`.
        check = checks[int(outcome.expectation_config.meta["check"])]
        indices = outcome.result.get("unexpected_index_list")
        if indices is None:
            raise RuntimeError(f"{check.expectation} failed without row indices; it cannot be used for row quarantine")
        for entry in indices:
            row = entry["_row"] if isinstance(entry, dict) else entry
            failures.append((int(row), check.expectation, check.reason))
    if not failures:
        return empty
    return pd.DataFrame(failures, columns=["row", "expectation", "reason"]).astype({"row": "int64"})


def _as_str_or_null(series: pd.Series) -> pd.Series:
    def convert(value: Any) -> Any:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return None
        text = str(value).strip()
        return text if text else None

    return pd.Series([convert(v) for v in series], index=series.index, dtype=object)


def normalize_annotator_id(value: Any) -> str | None:
    """One spelling per annotator: Unicode NFKC, invisible format characters removed, whitespace trimmed.

    `alice`, `alice\u200b`, ` alice ` and the full-width `ａｌｉｃｅ` are one annotator. Format characters
    (Unicode category Cf: zero-width space/joiners U+200B..U+200D, word joiner U+2060, BOM U+FEFF, soft
    hyphen, bidi controls) render as nothing, so two ids that differ only by them look identical.
    Returns None for a missing id or one with nothing left.
    """
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    text = unicodedata.normalize("NFKC", str(value))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip()
    return text or None


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
        Check("ExpectColumnValuesToNotBeNull", {"column": "item_id"}, "item_id is missing"),
        Check("ExpectColumnValuesToNotBeNull", {"column": "annotator_id"}, "annotator_id is missing"),
        Check("ExpectColumnValuesToNotBeNull", {"column": "label"}, "label is missing"),
        Check("ExpectColumnValuesToBeInSet", {"column": "item_id", "value_set": items}, "item_id is not in this batch"),
        Check("ExpectColumnValuesToBeInSet", {"column": "label", "value_set": labels}, "label is not in the label set"),
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
    missing = [c for c in ("item_id", "annotator_id", "label") if c not in annotations.columns]
    if missing:
        raise ValueError(f"annotations lack required columns {missing}; got {list(annotations.columns)}")
    frame = annotations.reset_index(drop=True).copy()
    given_annotators = _as_str_or_null(frame["annotator_id"])
    for column in ("item_id", "label"):
        frame[column] = _as_str_or_null(frame[column])
    frame["annotator_id"] = pd.Series([normalize_annotator_id(v) for v in given_annotators], index=frame.index, dtype=object)
    extra: list[tuple[int, str, str]] = []
    clean = np.ones(len(frame), dtype=bool)
    # An id made only of invisible characters names nobody: say so (escaped), rather than "missing".
    invisible = (given_annotators.notna() & frame["annotator_id"].isna()).to_numpy()
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
    candidates = frame.loc[[i for i in range(len(frame)) if i not in failed_rows], ["item_id", "annotator_id"]]
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
        Check("ExpectColumnValuesToNotBeNull", {"column": "item_id"}, "item_id is missing"),
        Check("ExpectColumnValuesToNotBeNull", {"column": "label"}, "final label is missing"),
        Check("ExpectColumnValuesToBeInSet", {"column": "item_id", "value_set": items}, "item_id is not in this batch"),
        Check("ExpectColumnValuesToBeInSet", {"column": "label", "value_set": [str(c) for c in label_set]}, "final label is not in the label set"),
        Check("ExpectColumnValuesToBeUnique", {"column": "item_id"}, "more than one final label for this item"),
    ]


def validate_final_labels(
    final: pd.DataFrame, batch_item_ids: Iterable[str], label_set: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split aggregated labels into (accepted, quarantined): one final label per item, from the set."""
    missing = [c for c in ("item_id", "label") if c not in final.columns]
    if missing:
        raise ValueError(f"final labels lack required columns {missing}; got {list(final.columns)}")
    frame = final.reset_index(drop=True).copy()
    frame["item_id"] = _as_str_or_null(frame["item_id"])
    frame["label"] = _as_str_or_null(frame["label"])
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
