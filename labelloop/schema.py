"""The workspace's table schema: every source column with its role, type and what init saw of it.

`labelloop init` infers the roles (`infer_schema`), prints them (`schema_rows`) and records them in the
registry's `schema.json`; every stage reads that file back (`Schema.from_json`) and validates against it.

Roles:
- `numeric`: a float feature; missing values allowed where `nullable`.
- `categorical`: a string feature with the value set seen at init (`categories`); an unseen value is
  drift, not an error (the model maps it to "missing").
- `text`: free text, vectorised by the model (TF-IDF or hashing).
- `id`: identifies a row (unique per row); carried along, never a feature unless an override asks.
- `label`: the class.
- `ignored`: not stored (all-missing, unsupported type, or dropped by an override); `note` says why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

Role = Literal["id", "numeric", "categorical", "text", "label", "ignored"]
ROLES: tuple[str, ...] = ("id", "numeric", "categorical", "text", "label", "ignored")
FEATURE_ROLES: tuple[str, ...] = ("numeric", "categorical", "text")

# Inference thresholds (why each is what it is is in its comment where used).
MAX_CATEGORIES = 1000  # a categorical column records its value set up to this size (else open-ended)
CATEGORICAL_MAX_UNIQUE_SHARE = 0.5
TEXT_MIN_MEAN_LENGTH = 30
NEAR_CONSTANT_SHARE = 0.99
LEAKAGE_ACCURACY = 0.99
_ID_NAME = re.compile(r"(^|[_.\s-])(id|uuid|guid|key)$|^(id|uuid|guid)([_.\s-]|$)", re.IGNORECASE)


class SchemaError(ValueError):
    """The table cannot be used as given; the message names the column and what is wrong."""


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    role: str
    dtype: str  # float64 for numeric; string for categorical, text and id; the source dtype for ignored
    nullable: bool = False
    categories: list[str] | None = None  # categorical: the values seen at init (None: more than MAX_CATEGORIES)
    min_length: int | None = None  # text: shortest and longest value seen at init, in characters
    max_length: int | None = None
    note: str = ""  # why the role was chosen or the column ignored

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "role": self.role, "dtype": self.dtype, "nullable": self.nullable}
        if self.categories is not None:
            out["categories"] = list(self.categories)
        if self.min_length is not None:
            out["min_length"], out["max_length"] = self.min_length, self.max_length
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class Schema:
    """Roles and types of the workspace's columns; `feature_columns` is the model's input, in source order."""

    columns: list[ColumnSpec] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    label_column: str = "label"

    def __post_init__(self) -> None:
        bad = [c.role for c in self.columns if c.role not in ROLES]
        if bad:
            raise SchemaError(f"unknown column role {bad[0]!r}; allowed: {', '.join(ROLES)}")

    # -- views -----------------------------------------------------------------------------------
    def _names(self, *roles: str) -> list[str]:
        return [c.name for c in self.columns if c.role in roles]

    @property
    def feature_columns(self) -> list[str]:
        return self._names(*FEATURE_ROLES)

    @property
    def numeric_columns(self) -> list[str]:
        return self._names("numeric")

    @property
    def categorical_columns(self) -> list[str]:
        return self._names("categorical")

    @property
    def text_columns(self) -> list[str]:
        return self._names("text")

    @property
    def id_columns(self) -> list[str]:
        return self._names("id")

    @property
    def stored_columns(self) -> list[str]:
        """Source columns kept in the workspace's tables: ids and features."""
        return self._names("id", *FEATURE_ROLES)

    @property
    def features(self) -> list[ColumnSpec]:
        return [c for c in self.columns if c.role in FEATURE_ROLES]

    @property
    def all_numeric(self) -> bool:
        """True when every feature is numeric (the float-matrix fast paths apply)."""
        return all(c.role == "numeric" for c in self.features)

    @property
    def proba_columns(self) -> list[str]:
        return [f"proba_{c}" for c in self.class_names]

    def column(self, name: str) -> ColumnSpec:
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise KeyError(name)

    # -- persistence -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": 2,
            "label_column": self.label_column,
            "class_names": list(self.class_names),
            "columns": [c.to_json() for c in self.columns],
            # Kept for readers of format 1 (and people): the model's input columns in order.
            "feature_columns": self.feature_columns,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schema:
        if "columns" not in data:  # format 1: numeric features only
            columns = [ColumnSpec(name, "numeric", "float64") for name in data.get("feature_columns", [])]
        else:
            columns = [ColumnSpec(**spec) for spec in data["columns"]]
        return cls(columns, [str(c) for c in data.get("class_names", [])], data.get("label_column", "label"))

    @classmethod
    def numeric(cls, feature_columns: Sequence[str], class_names: Sequence[str], label_column: str = "label") -> Schema:
        """A schema of numeric features only (tests, the format-1 file, `simulate` on a float matrix)."""
        return cls([ColumnSpec(str(c), "numeric", "float64") for c in feature_columns], [str(c) for c in class_names],
                   label_column)


# -- canonical values ----------------------------------------------------------------------------

def as_text(value: object) -> str | None:
    """One cell as the string a categorical or text column holds (None for missing; 3.0 → "3")."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def conform(frame: pd.DataFrame, schema: Schema, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """`frame`'s feature columns (or `columns`) in canonical types: float64 for numeric, str/None otherwise.

    A numeric value that does not parse becomes NaN here; validation (which compares nulls before and
    after) is what reports it, so call `unparseable` first where a bad value must be refused.
    """
    names = list(columns) if columns is not None else schema.feature_columns
    out = {}
    for name in names:
        spec = schema.column(name)
        values = frame[name]
        if spec.role == "numeric":
            out[name] = pd.to_numeric(values, errors="coerce").astype("float64")
        else:
            out[name] = pd.Series([as_text(v) for v in values.to_numpy(dtype=object)], index=frame.index, dtype=object)
    return pd.DataFrame(out, index=frame.index, columns=names)


def unparseable(frame: pd.DataFrame, schema: Schema) -> dict[str, pd.Series]:
    """Per numeric feature column, a mask of rows whose value is present but not a finite number."""
    found = {}
    for name in schema.numeric_columns:
        if name not in frame.columns:
            continue
        raw = frame[name]
        parsed = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & (parsed.isna() | ~np.isfinite(parsed.astype("float64").fillna(0.0)))
        if bad.any():
            found[name] = bad
    return found


def invalid_rows(frame: pd.DataFrame, schema: Schema) -> pd.Series:
    """Rows a feature rule refuses: a numeric value that is not a finite number, or a missing value in a
    column that is not nullable (what capture quarantines; categorical and text values are never refused
    for their content here)."""
    bad = pd.Series(False, index=frame.index)
    for mask in unparseable(frame, schema).values():
        bad |= mask
    for spec in schema.features:
        if spec.name in frame.columns and not spec.nullable:
            bad |= frame[spec.name].isna()
    return bad


# -- inference -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SchemaOverrides:
    """Roles forced by the user (`labelloop init --id-col ...` or params.yaml's `schema` section)."""

    id_columns: tuple[str, ...] = ()
    numeric_columns: tuple[str, ...] = ()
    categorical_columns: tuple[str, ...] = ()
    text_columns: tuple[str, ...] = ()
    drop_columns: tuple[str, ...] = ()

    def forced_roles(self) -> dict[str, str]:
        roles: dict[str, str] = {}
        for role, names in (("id", self.id_columns), ("numeric", self.numeric_columns),
                            ("categorical", self.categorical_columns), ("text", self.text_columns),
                            ("ignored", self.drop_columns)):
            for name in names:
                if name in roles and roles[name] != role:
                    raise SchemaError(f"column {name!r} is given two roles: {roles[name]} and {role}")
                roles[name] = role
        return roles


@dataclass
class InferredSchema:
    schema: Schema
    warnings: list[str]


def infer_schema(source: pd.DataFrame, label_column: str, overrides: SchemaOverrides | None = None) -> InferredSchema:
    """Each column's role and type, inferred from the values and overridden by `overrides`.

    Raises SchemaError for an unusable table (no label column, a missing label, a column mixing types);
    returns warnings for what the user should look at (ids, leakage, near-constant and dropped columns).
    """
    overrides = overrides or SchemaOverrides()
    if label_column not in source.columns:
        raise SchemaError(f"label column {label_column!r} not in the table; columns: {list(map(str, source.columns))[:20]}")
    duplicated = sorted({str(c) for c in source.columns if list(source.columns).count(c) > 1})
    if duplicated:
        raise SchemaError(f"column names appear more than once: {duplicated[:10]}")
    forced = overrides.forced_roles()
    unknown = sorted(set(forced) - set(map(str, source.columns)))
    if unknown:
        raise SchemaError(f"schema overrides name columns not in the table: {unknown}; columns: "
                          f"{list(map(str, source.columns))[:20]}")
    if label_column in forced:
        raise SchemaError(f"the label column {label_column!r} cannot also be given the role {forced[label_column]}")
    labels = source[label_column]
    if labels.isna().any():
        raise SchemaError(f"{int(labels.isna().sum())} of {len(source)} rows have no label in {label_column!r}; "
                          "label or remove them before init")
    label_text = pd.Series([as_text(v) for v in labels.to_numpy(dtype=object)], index=source.index)
    class_names = sorted(set(label_text))
    if len(class_names) < 2:
        raise SchemaError(f"the label column {label_column!r} has {len(class_names)} class(es); a classifier needs 2 or more")

    warnings: list[str] = []
    columns: list[ColumnSpec] = []
    for raw_name in source.columns:
        name = str(raw_name)
        if name == label_column:
            continue
        spec = _infer_column(name, source[raw_name], forced.get(name), warnings)
        columns.append(spec)
    if not any(c.role in FEATURE_ROLES for c in columns):
        raise SchemaError("no feature columns remain (every column is an id, ignored or the label); "
                          "name one with --numeric-col, --categorical-col or --text-col")
    schema = Schema(columns, class_names, label_column)
    warnings.extend(_leakage_warnings(source, schema, label_text))
    return InferredSchema(schema, warnings)


def _infer_column(name: str, values: pd.Series, forced: str | None, warnings: list[str]) -> ColumnSpec:
    n = len(values)
    present = values.dropna()
    nullable = bool(len(present) < n)
    if len(present) == 0:
        if forced not in (None, "ignored"):
            raise SchemaError(f"column {name!r} is entirely missing; it cannot be {forced}")
        warnings.append(f"column {name!r}: every value is missing; dropped")
        return ColumnSpec(name, "ignored", str(values.dtype), True, note="all values missing")
    if forced == "ignored":
        return ColumnSpec(name, "ignored", str(values.dtype), nullable, note="dropped by override")
    if (pd.api.types.is_datetime64_any_dtype(values) or pd.api.types.is_timedelta64_dtype(values)) and forced is None:
        warnings.append(f"column {name!r}: {values.dtype} is not a supported feature type; ignored "
                        "(derive numeric columns from it, or force a role)")
        return ColumnSpec(name, "ignored", str(values.dtype), nullable, note=f"{values.dtype} not supported")
    kind = _value_kind(name, values, present, forced)
    unique = present.nunique()
    unique_per_row = unique == n and n >= 20
    text = present.map(as_text) if kind == "string" or forced in ("categorical", "text", "id") else None

    if forced is not None:
        role = forced
        note = "override"
    elif kind == "number":
        integer_valued = pd.api.types.is_integer_dtype(values) or bool(
            np.all(np.mod(pd.to_numeric(present, errors="coerce").to_numpy(dtype=np.float64), 1) == 0))
        if unique_per_row and integer_valued and not nullable:
            role, note = "id", "integers unique per row"
        elif _ID_NAME.search(name) and unique >= 0.95 * n and integer_valued:
            role, note = "id", "named like an id, nearly unique"
        else:
            role, note = "numeric", ""
    else:
        text = present.map(as_text)
        mean_length = float(text.str.len().mean())
        spaces = float(text.str.count(" ").mean())
        if mean_length >= TEXT_MIN_MEAN_LENGTH or spaces >= 3:
            role, note = "text", f"mean length {mean_length:.0f} characters"
        elif unique_per_row or (_ID_NAME.search(name) and unique >= 0.95 * n):
            role, note = "id", "strings unique per row"
        elif unique <= max(2, CATEGORICAL_MAX_UNIQUE_SHARE * n):
            role, note = "categorical", f"{unique} values"
        else:
            role, note = "text", f"{unique} distinct short strings"
    if role == "id" and forced is None:
        warnings.append(f"column {name!r} looks like an id ({note}): kept with the rows, not used as a feature "
                        f"(--numeric-col/--categorical-col {name} uses it)")

    top_share = float(values.value_counts(dropna=False).iloc[0]) / n
    if role in FEATURE_ROLES and top_share >= NEAR_CONSTANT_SHARE:
        warnings.append(f"column {name!r} is near-constant ({top_share:.1%} of rows hold one value)")

    if role == "numeric":
        return ColumnSpec(name, "numeric", "float64", nullable, note=note)
    if text is None:
        text = present.map(as_text)
    if role == "categorical":
        values_seen = sorted(set(text))
        return ColumnSpec(name, "categorical", "string", nullable,
                          categories=values_seen if len(values_seen) <= MAX_CATEGORIES else None, note=note)
    if role == "text":
        lengths = text.str.len()
        return ColumnSpec(name, "text", "string", nullable, min_length=int(lengths.min()), max_length=int(lengths.max()),
                          note=note)
    return ColumnSpec(name, "id", "string", nullable, note=note)


def _value_kind(name: str, values: pd.Series, present: pd.Series, forced: str | None) -> str:
    """"number" or "string"; a column mixing numbers and other values is refused, naming a few of each."""
    if pd.api.types.is_bool_dtype(values):
        return "number"
    if pd.api.types.is_numeric_dtype(values):
        return "number"
    if forced in ("categorical", "text", "id"):
        return "string"  # the user said what it is: every value is read as text
    inferred = pd.api.types.infer_dtype(present, skipna=True)
    if inferred in ("string", "categorical", "unicode", "bytes"):
        as_numbers = pd.to_numeric(present.astype(str), errors="coerce")
        share = float(as_numbers.notna().mean())
        if forced == "numeric" or share >= 0.9:
            if share == 1.0:
                return "number"
            offending = present[as_numbers.isna()].astype(str).unique()[:5].tolist()
            raise SchemaError(f"column {name!r} mixes numbers ({share:.0%} of its values) with other values, e.g. "
                              f"{offending}; clean them, or force its role with --categorical-col/--text-col {name}")
        return "string"
    if inferred in ("integer", "floating", "mixed-integer-float", "decimal", "boolean"):
        return "number"
    if inferred in ("mixed", "mixed-integer"):
        by_type: dict[str, list[str]] = {}
        for value in present.to_numpy(dtype=object):
            by_type.setdefault(type(value).__name__, []).append(repr(value))
        examples = "; ".join(f"{kind} e.g. {', '.join(list(dict.fromkeys(vals))[:3])}" for kind, vals in by_type.items())
        raise SchemaError(f"column {name!r} mixes value types ({examples}); make it one type, or force its role with "
                          f"--categorical-col/--text-col {name}")
    raise SchemaError(f"column {name!r} holds values of type {inferred!r}, which labelloop cannot use as a feature; "
                      f"drop it with --drop-col {name}")


def _leakage_warnings(source: pd.DataFrame, schema: Schema, labels: pd.Series, max_rows: int = 20_000) -> list[str]:
    """Columns that alone predict the label almost perfectly on held-out rows (likely leakage)."""
    from sklearn.tree import DecisionTreeClassifier

    sample = source.sample(n=min(len(source), max_rows), random_state=0) if len(source) > max_rows else source
    y = labels.loc[sample.index].to_numpy()
    rng = np.random.RandomState(0)
    test = rng.rand(len(sample)) < 1 / 3
    if test.sum() < 10 or (~test).sum() < 10:
        return []
    majority = float(pd.Series(y[test]).value_counts(normalize=True).iloc[0])
    warnings = []
    for spec in schema.columns:
        if spec.role not in ("numeric", "categorical", "id"):
            continue
        raw = sample[spec.name]
        if spec.role == "numeric" or pd.api.types.is_numeric_dtype(raw):
            x = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        else:
            x = pd.Series(raw.map(as_text)).astype("category").cat.codes.to_numpy(dtype=np.float64)
        finite = x[np.isfinite(x)]
        if len(finite) == 0:
            continue
        # Missing (and infinite) values as one bin below every value: missingness can leak too.
        x = np.where(np.isfinite(x), x, finite.min() - 1.0).reshape(-1, 1)
        tree = DecisionTreeClassifier(max_leaf_nodes=max(4, 4 * len(schema.class_names)), random_state=0)
        accuracy = float((tree.fit(x[~test], y[~test]).predict(x[test]) == y[test]).mean())
        if accuracy >= LEAKAGE_ACCURACY and accuracy > majority + 0.01:
            used = "excluded from the features as an id" if spec.role == "id" else "check it is known at prediction time"
            warnings.append(f"column {spec.name!r} alone predicts the label with accuracy {accuracy:.3f} on held-out rows "
                            f"(majority class {majority:.3f}): likely leakage; {used}")
    return warnings


def schema_rows(schema: Schema) -> list[dict[str, str]]:
    """The schema as table rows (column, role, type, nullable, detail) for `labelloop init` to print."""
    rows = []
    for spec in [*schema.columns, ColumnSpec(schema.label_column, "label", "string")]:
        if spec.role == "label":
            detail = f"{len(schema.class_names)} classes: {', '.join(schema.class_names[:6])}" + (
                "…" if len(schema.class_names) > 6 else "")
        elif spec.role == "categorical":
            detail = f"{len(spec.categories)} values" if spec.categories is not None else f"> {MAX_CATEGORIES} values"
        elif spec.role == "text":
            detail = f"{spec.min_length}–{spec.max_length} characters"
        else:
            detail = spec.note
        rows.append({"column": spec.name, "role": spec.role, "type": spec.dtype, "nullable": "yes" if spec.nullable else "",
                     "detail": detail})
    return rows


def with_roles(schema: Schema, roles: dict[str, str]) -> Schema:
    """A copy with some columns' roles changed (tests, and re-reading a schema under new overrides)."""
    return Schema([replace(c, role=roles.get(c.name, c.role)) for c in schema.columns], schema.class_names, schema.label_column)
