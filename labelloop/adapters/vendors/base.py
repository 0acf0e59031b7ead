"""The vendor contract every annotation backend implements.

Export is idempotent per `batch_id` (exporting twice creates nothing new); `fetch_labels` returns
every completed annotation so far together with the raw payload exactly as received, which the
import stage archives unchanged before it validates anything.
"""

from __future__ import annotations

import abc
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from labelloop.core.retry import TransientError
from labelloop.schema import Schema, as_text

# Columns of `FetchedLabels.annotations`: one row per (item, annotator) answer.
ANNOTATION_COLUMNS = ["item_id", "annotator_id", "label", "annotation_id"]


def json_value(value: Any) -> Any:
    """A pandas/numpy cell as plain JSON: numpy scalars unwrapped, NaN/inf/NA/NaT as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


class VendorError(RuntimeError):
    """The vendor is unreachable or answered something unusable; durable state is unchanged."""


class VendorUnavailable(VendorError, TransientError):
    """The vendor did not answer usefully this time (unreachable, 5xx, timeout): retried, bounded."""


class VendorRefused(VendorError):
    """One batch's payload was refused without being used (a link, a FIFO, oversized, wrong encoding):
    nothing of that batch is imported, the import of the other batches goes on, and a rerun after the
    vendor fixes the payload imports it."""


# When the annotator may see a row's guess (the plan's `guess_shown`; labelloop.domain.quality GUESS_*).
SHOW_BEFORE, SHOW_AFTER, SHOW_NEVER = "before", "after", "never"


@dataclass(frozen=True)
class Guess:
    """The model's guess on one item, as a vendor may show it."""

    label: str
    score: float | None
    model_version: str | None
    shown: str  # SHOW_BEFORE (with the item), SHOW_AFTER (only once it is answered) or SHOW_NEVER
    why: dict[str, Any] | None = None  # labelloop.explain's explanation (export.context guess+why)


@dataclass(frozen=True)
class ExportBatch:
    batch_id: str
    # One row per item: `item_id`, the columns that may leave (`feature_columns`), `predicted`,
    # `confidence`, `model_version` (the registered version that made the guess), `utility`
    # (acquisition score), `annotators_wanted` (1, or 2–3 for overlap items).
    items: pd.DataFrame
    label_set: list[str]
    # The item's columns that may leave, in the order annotators see them (the export stage passes the
    # schema's order: id columns and features, restricted by `export.columns`).
    feature_columns: list[str]
    # Each column's role (id, numeric, categorical, text); None: every column is numeric (callers that
    # predate schemas with roles).
    schema: Schema | None = None

    def role(self, column: str) -> str:
        """`column`'s role in the schema: id, numeric, categorical or text."""
        if self.schema is None:
            return "numeric"
        try:
            return self.schema.column(column).role
        except KeyError:
            raise VendorError(f"batch {self.batch_id} sends column {column!r}, which the schema does not name") from None

    @property
    def text_columns(self) -> list[str]:
        """The columns shown as text (each its own text block), in `feature_columns` order."""
        return [c for c in self.feature_columns if self.role(c) == "text"]

    @property
    def table_columns(self) -> list[str]:
        """The columns shown as one table (ids, numbers, categories), in `feature_columns` order."""
        return [c for c in self.feature_columns if self.role(c) != "text"]

    def checked_ids(self) -> pd.Series:
        """The item ids as strings, after checking what every vendor relies on."""
        if "item_id" not in self.items.columns:
            raise VendorError("export batch has no item_id column")
        ids = self.items["item_id"].astype(str)
        if ids.duplicated().any():
            raise VendorError(f"batch {self.batch_id} lists item ids more than once: {ids[ids.duplicated()].tolist()[:5]}")
        missing = [c for c in self.feature_columns if c not in self.items.columns]
        if missing:
            raise VendorError(f"export batch lacks feature columns {missing}")
        for column in self.feature_columns:
            self.role(column)
        return ids

    def values(self, position: int) -> dict[str, Any]:
        """Row `position`'s raw values as JSON, in `feature_columns` order: the text itself, category names,
        numbers, null for a missing value (NaN, None, NA)."""
        row = self.items.iloc[position]
        return {c: json_value(row[c]) for c in self.feature_columns}

    def priorities(self) -> list[int]:
        """Each item's labelling priority: 1 = the highest utility; ties (and no utility) keep batch order."""
        if "utility" not in self.items.columns:
            return list(range(1, len(self.items) + 1))
        utility = pd.to_numeric(self.items["utility"], errors="coerce").to_numpy(dtype=np.float64)
        order = np.lexsort((np.arange(len(utility)), np.where(np.isnan(utility), np.inf, -utility)))
        ranks = np.empty(len(utility), dtype=np.int64)
        ranks[order] = np.arange(1, len(utility) + 1)
        return ranks.tolist()

    def guess(self, position: int) -> Guess | None:
        """Row `position`'s guess and when it may be shown; None when the row has none in the label set (a batch
        without a `guess_shown` column shows every guess with the item, as before annotator context existed)."""
        if "predicted" not in self.items.columns:
            return None
        label = as_text(self.items["predicted"].iloc[position])
        if label is None or label not in self.label_set:
            return None
        shown = as_text(self.items["guess_shown"].iloc[position]) if "guess_shown" in self.items.columns else SHOW_BEFORE
        if shown not in (SHOW_BEFORE, SHOW_AFTER):
            return None
        score = json_value(self.items["confidence"].iloc[position]) if "confidence" in self.items.columns else None
        why = None
        if "why" in self.items.columns:
            raw = self.items["why"].iloc[position]
            if isinstance(raw, str) and raw:
                try:
                    why = json.loads(raw)
                except json.JSONDecodeError as error:
                    raise VendorError(f"batch {self.batch_id}: the explanation of row {position} is not JSON: {error}") from error
            elif isinstance(raw, dict):
                why = raw
        return Guess(label, float(score) if score is not None else None, self.model_version(position), shown, why)

    def model_version(self, position: int) -> str | None:
        """The registered model version that made row `position`'s guess (None when not recorded)."""
        if "model_version" not in self.items.columns:
            return None
        value = as_text(self.items["model_version"].iloc[position])
        return value if value is not None and value.strip() else None


@dataclass(frozen=True)
class ExportReceipt:
    batch_id: str
    vendor: str
    n_items: int
    created: bool  # False when the batch had already been exported (idempotent rerun)
    vendor_ref: str = ""  # the vendor's own id for the batch (project id, drop folder, ...)


@dataclass(frozen=True)
class FetchedLabels:
    batch_id: str
    annotations: pd.DataFrame  # ANNOTATION_COLUMNS (+ vendor extras)
    raw_payload: bytes  # exactly as received, archived before validation
    payload_name: str  # file name for the archive, e.g. "labels.jsonl"


@dataclass(frozen=True)
class VendorStatus:
    batch_id: str
    n_items: int
    n_completed: int
    extra: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.n_items > 0 and self.n_completed >= self.n_items


class Vendor(abc.ABC):
    name: str = "abstract"

    @abc.abstractmethod
    def export_batch(self, batch: ExportBatch) -> ExportReceipt: ...

    @abc.abstractmethod
    def fetch_labels(self, batch_id: str) -> FetchedLabels: ...

    @abc.abstractmethod
    def status(self, batch_id: str) -> VendorStatus: ...
