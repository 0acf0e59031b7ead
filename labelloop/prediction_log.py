"""The prediction-log contract: what a producer must write, what it may write, and the shapes capture
normalises before validating (README, "The prediction-log contract").

Normalisation is vectorised and never raises on a value: a value it cannot read becomes null and the
row is quarantined with the reason (by `labelloop.adapters.validation.validate_prediction_log`).

- ids (`prediction_id`, `item_id`) and `model_version`, `predicted`: text. Integers (a database
  autoincrement) print without a decimal point (also when nulls made the column float), UUIDs in
  their canonical form (also 16-byte binary UUIDs), other bytes as UTF-8; empty text is null.
- `ts`: one type, `datetime64[us, UTC]`. ISO 8601 text (any offset), a timestamp (naive = UTC, any
  zone converted) or an epoch number whose unit is inferred per value from its magnitude (see
  `epoch_unit`); a numeric string counts as an epoch number.
- `item_id`: when the column is absent, each prediction is its own item (`item_id = prediction_id`).
- features (`labelloop.schema`): numeric columns float64 (NaN where missing); categorical, text and
  id columns text. A producer writes them with `log_features` (the schema's id columns are optional
  in the log); capture reads any spelling back with `labelloop.schema.conform` and quarantines values
  that do not fit the schema (`labelloop.adapters.validation.validate_prediction_log`).
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pandas as pd

from labelloop.columns import (
    CONFIDENCE,
    ITEM_ID,
    MODEL_VERSION,
    PREDICTED,
    PREDICTION_ID,
    PROBA_PREFIX,
    TS,
)
from labelloop.schema import Schema, as_text, unparseable

# A part without one of these (or without a proba_<class> per class, or a feature column) is
# quarantined whole: no row of it can be trusted.
REQUIRED_COLUMNS = (PREDICTION_ID, TS, MODEL_VERSION, PREDICTED, CONFIDENCE)
OPTIONAL_COLUMNS = (ITEM_ID,)
TEXT_COLUMNS = (PREDICTION_ID, ITEM_ID, MODEL_VERSION, PREDICTED)
TS_DTYPE = "datetime64[us, UTC]"

# Epoch magnitude limits, exclusive: below 1e11 seconds, below 1e14 milliseconds, below 1e17
# microseconds, else nanoseconds. Every instant from 1973-03-03 to the year 5138 reads right in any
# of the four units (1e11 s is year 5138; 1e11 ms, 1e14 us and 1e17 ns are 1973-03-03).
EPOCH_LIMITS = ((1e11, "s", 1_000_000), (1e14, "ms", 1_000), (1e17, "us", 1))
CONFIDENCE_TOLERANCE = 1e-3
_MAX_MICROS = 253_402_300_800 * 1_000_000  # year 10000: later instants are not timestamps a log holds


def epoch_unit(value: float) -> str:
    """The unit an epoch number is read in (documentation and tests; the conversion is vectorised)."""
    magnitude = abs(value)
    for limit, unit, _ in EPOCH_LIMITS:
        if magnitude < limit:
            return unit
    return "ns"


def _kinds(values: pd.Series) -> pd.Series:
    return values.map(type, na_action="ignore")


def _integral_text(numbers: np.ndarray) -> pd.Series:
    """Float ids as text: integral values without '.0' (an int column with nulls reads as float)."""
    out = pd.Series(np.nan, index=range(len(numbers)), dtype="object")
    finite = np.isfinite(numbers)
    integral = finite & (np.floor(numbers) == numbers) & (np.abs(numbers) < 2.0**63)
    out[integral] = numbers[integral].astype(np.int64).astype(str)
    out[finite & ~integral] = numbers[finite & ~integral].astype(str)
    return out


def _bytes_text(value: bytes) -> str:
    if len(value) == 16:
        try:
            value.decode("ascii")
        except UnicodeDecodeError:  # 16 raw bytes: a binary UUID
            return str(uuid.UUID(bytes=value))
    return value.decode("utf-8", errors="backslashreplace")


def normalise_text(values: pd.Series) -> pd.Series:
    """Ids and names as text (`str` dtype, null where missing, empty or unreadable)."""
    values = values.reset_index(drop=True)
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    if pd.api.types.is_bool_dtype(values.dtype):
        out = values.astype(object).where(values.notna(), None).astype(str)
    elif pd.api.types.is_integer_dtype(values.dtype):
        out = values.astype(str)
    elif pd.api.types.is_float_dtype(values.dtype):
        out = _integral_text(values.to_numpy(dtype="float64", na_value=np.nan))
    elif pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_datetime64_any_dtype(values.dtype):
        out = values.astype(str)
    else:
        kinds = _kinds(values)
        out = values.astype(object).copy()
        floats = kinds.isin([float, np.float64, np.float32]).to_numpy()
        if floats.any():
            out[floats] = _integral_text(values[floats].to_numpy(dtype="float64")).to_numpy()
        binary = kinds.isin([bytes, bytearray]).to_numpy()
        if binary.any():
            out[binary] = values[binary].map(lambda b: _bytes_text(bytes(b))).to_numpy()
        rest = ~floats & ~binary & values.notna().to_numpy()
        out[rest] = values[rest].astype(str).to_numpy()  # str, int, UUID (canonical), numpy scalars
    out = pd.Series(out, dtype="str")
    return out.where(out.str.strip().str.len() > 0)


def _epoch_to_ts(numbers: pd.Series) -> pd.Series:
    """Epoch numbers (float64, NaN = missing) to UTC timestamps, unit inferred per value by magnitude."""
    values = numbers.to_numpy(dtype="float64", na_value=np.nan)
    magnitude = np.abs(values)
    micros = np.full(len(values), np.nan)
    rest = np.isfinite(values)
    for limit, _, factor in EPOCH_LIMITS:
        here = rest & (magnitude < limit)
        micros[here] = values[here] * factor
        rest &= ~here
    micros[rest] = values[rest] / 1000.0  # nanoseconds
    in_range = np.isfinite(micros) & (np.abs(micros) < _MAX_MICROS)
    whole = np.where(in_range, np.round(micros), 0).astype(np.int64)
    out = pd.Series(pd.to_datetime(whole, unit="us", utc=True)).astype(TS_DTYPE)
    return out.where(in_range)


def _int_epoch_to_ts(values: pd.Series) -> pd.Series:
    """Integer epochs converted exactly (a float would round nanoseconds)."""
    ints = values.to_numpy(dtype="float64", na_value=np.nan)
    present = np.isfinite(ints)
    exact = values.fillna(0).to_numpy(dtype=np.int64) if values.isna().any() else values.to_numpy(dtype=np.int64)
    magnitude = np.abs(ints)
    micros = np.zeros(len(exact), dtype=np.int64)
    rest = present.copy()
    for limit, _, factor in EPOCH_LIMITS:
        here = rest & (magnitude < limit)
        micros[here] = exact[here] * factor
        rest &= ~here
    micros[rest] = exact[rest] // 1000
    in_range = present & (np.abs(micros) < _MAX_MICROS)
    out = pd.Series(pd.to_datetime(np.where(in_range, micros, 0), unit="us", utc=True)).astype(TS_DTYPE)
    return out.where(in_range)


def normalise_timestamps(values: pd.Series) -> pd.Series:
    """Any accepted `ts` shape to `datetime64[us, UTC]`; NaT where missing or unreadable."""
    values = values.reset_index(drop=True)
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").astype(TS_DTYPE)
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.dt.tz_localize("UTC").astype(TS_DTYPE)
    if pd.api.types.is_bool_dtype(values.dtype):
        return pd.Series(pd.NaT, index=values.index, dtype=TS_DTYPE)
    if pd.api.types.is_integer_dtype(values.dtype):
        return _int_epoch_to_ts(values)
    if pd.api.types.is_float_dtype(values.dtype):
        return _epoch_to_ts(values)
    kinds = _kinds(values)
    booleans = kinds.isin([bool, np.bool_]).to_numpy()
    text = values.astype(object).where(~booleans)
    numbers = pd.to_numeric(text, errors="coerce")
    out = pd.Series(pd.NaT, index=values.index, dtype=TS_DTYPE)
    numeric = numbers.notna().to_numpy()
    if numeric.any():
        out[numeric] = _epoch_to_ts(numbers[numeric].reset_index(drop=True)).array
    others = ~numeric & text.notna().to_numpy()
    if others.any():
        parsed = pd.to_datetime(text[others], utc=True, errors="coerce", format="ISO8601")
        # `.array`, not `.to_numpy()`: an all-NaT result as a numpy array is naive datetime64, which a
        # zoned column refuses (TypeError; hypothesis found it with a +09:00 timestamp beside NaT).
        out[others] = pd.Series(parsed).astype(TS_DTYPE).array
    return out


def normalise_prediction_log(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """The frame with the contract's columns in their one type (item_id added when absent), and
    (row position, reason) for values present but unreadable. Positions are of `frame` as given."""
    out = frame.reset_index(drop=True).copy()
    reasons: list[tuple[int, str]] = []
    for column in TEXT_COLUMNS:
        if column in out.columns:
            out[column] = normalise_text(out[column])
    if ITEM_ID not in out.columns and PREDICTION_ID in out.columns:
        out[ITEM_ID] = out[PREDICTION_ID]
    if TS in out.columns:
        raw = out[TS]
        out[TS] = normalise_timestamps(raw)
        unreadable = np.flatnonzero(out[TS].isna().to_numpy() & raw.notna().to_numpy())
        reasons.extend(
            (int(i), (f"ts {snippet(raw.iloc[i])} is not a timestamp (ISO 8601 text, an epoch number in s/ms/us/ns, "
                      "or a timestamp)"))
            for i in unreadable
        )
    return out, reasons


def snippet(value: object) -> str:
    """A value for a reason: its repr (numpy scalars as the Python value), at most 40 characters."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def log_feature_columns(columns: list[str], schema: Schema) -> list[str]:
    """The schema's columns a log frame carries, in schema order: every feature and the id columns it has."""
    present = set(columns)
    return [c for c in schema.stored_columns if c in present or c in schema.feature_columns]


def log_features(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """A producer's feature rows in the log's types: float64 numeric columns (NaN where missing) and
    categorical, text and id columns as text (str or None), the schema's columns in its order (ids only
    when `frame` has them; other columns dropped).

    Nullability is not enforced here (capture quarantines a null where the schema forbids it), but a
    value that cannot be logged is refused: ValueError naming the column and values for a missing
    feature column or a numeric value that is present but not a finite number. Producers validate
    their input before logging (serving answers 422), so this is a producer bug, not a row to quarantine.
    """
    missing = [c for c in schema.feature_columns if c not in frame.columns]
    if missing:
        raise ValueError(f"feature rows lack the schema's columns {missing[:10]}")
    columns = log_feature_columns(list(frame.columns), schema)
    frame = frame.reset_index(drop=True)
    numeric = [c for c in columns if schema.column(c).role == "numeric"]
    subset = frame[numeric]
    if all(pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in subset.dtypes):
        values = subset.to_numpy(dtype="float64", na_value=np.nan)  # one vectorised pass: the common case
        infinite = np.isinf(values)
        bad = {numeric[j]: pd.Series(infinite[:, j]) for j in np.flatnonzero(infinite.any(axis=0))}
    else:
        bad = unparseable(frame, schema)
        values = np.column_stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
                                  for c in numeric]) if numeric else np.empty((len(frame), 0))
    if bad:
        column, mask = next(iter(bad.items()))
        examples = [snippet(v) for v in frame.loc[mask.to_numpy(), column].head(3)]
        raise ValueError(f"numeric column {column!r} holds values that are not finite numbers: {', '.join(examples)} "
                         f"({int(mask.sum())} rows); validate before logging")
    if len(numeric) == len(columns):
        return pd.DataFrame(values, columns=columns)
    out: dict[str, Any] = {name: values[:, j] for j, name in enumerate(numeric)}
    for name in columns:
        if name not in out:
            out[name] = _encodable(pd.Series([as_text(v) for v in frame[name].to_numpy(dtype=object)], dtype=object))
    return pd.DataFrame(out, columns=columns)


def _encodable(values: pd.Series) -> pd.Series:
    """Text with lone surrogates (which UTF-8, so parquet, cannot store) has them replaced."""
    present = [v for v in values if v is not None]
    try:
        "".join(present).encode("utf-8")
        return values
    except UnicodeEncodeError:
        return values.map(lambda v: v if v is None else v.encode("utf-8", "replace").decode("utf-8"))


def unknown_proba_columns(columns: list[str], proba_columns: list[str], feature_columns: list[str]) -> list[str]:
    """`proba_<x>` columns for classes outside the label set (feature columns excepted)."""
    known = set(proba_columns) | set(feature_columns)
    return [c for c in columns if isinstance(c, str) and c.startswith(PROBA_PREFIX) and c not in known]


def storable(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with the contract's columns in their one type and any other column that mixes Python
    types (e.g. an extra column logged as int by one producer and as text by another) as text, so
    that parquet can store it; a row never jams the pool write."""
    out = frame.copy()
    for column in TEXT_COLUMNS:  # columns already text (a pool this module wrote) are left as they are
        if column in out.columns and not isinstance(out[column].dtype, pd.StringDtype):
            out[column] = normalise_text(out[column]).set_axis(out.index)
    if TS in out.columns and str(out[TS].dtype) != TS_DTYPE:
        out[TS] = normalise_timestamps(out[TS]).set_axis(out.index)
    for column in out.columns:
        if column in TEXT_COLUMNS or column == TS or out[column].dtype != object:
            continue
        if _kinds(out[column]).dropna().nunique() > 1:
            values = out[column]
            out[column] = values.astype(str).where(values.notna())
    return out
