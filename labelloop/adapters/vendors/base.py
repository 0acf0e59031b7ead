"""The vendor contract every annotation backend implements.

Export is idempotent per `batch_id` (exporting twice creates nothing new); `fetch_labels` returns
every completed annotation so far together with the raw payload exactly as received, which the
import stage archives unchanged before it validates anything.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from labelloop.core.retry import TransientError

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


@dataclass(frozen=True)
class ExportBatch:
    batch_id: str
    # One row per item: `item_id`, the allow-listed feature columns, `predicted`, `confidence`,
    # `utility` (acquisition score), `is_gold`, `annotators_wanted` (1, or 2–3 for overlap items).
    items: pd.DataFrame
    label_set: list[str]
    feature_columns: list[str]

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
        return ids


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
