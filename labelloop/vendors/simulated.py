"""Simulated annotators: a documented stand-in for a human vendor, answering from known true labels.

Each annotator answers an item's true label, or with probability `error_rate` a uniformly drawn
wrong class. Answers are a deterministic function of (seed, batch, item, annotator), so a re-fetch
returns the same labels. Export state lives in `<root>/<batch_id>/tasks.parquet`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.config import SimulatedVendorParams
from labelloop.io import read_parquet, write_parquet
from labelloop.vendors.base import ANNOTATION_COLUMNS, ExportBatch, ExportReceipt, FetchedLabels, Vendor, VendorError, VendorStatus


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class SimulatedVendor(Vendor):
    name = "simulated"

    def __init__(self, root: Path, oracle_path: Path, params: SimulatedVendorParams) -> None:
        self.root = Path(root)
        self.oracle_path = Path(oracle_path)
        self.params = params
        self._oracle: pd.Series | None = None

    def _tasks_path(self, batch_id: str) -> Path:
        return self.root / batch_id / "tasks.parquet"

    def oracle(self) -> pd.Series:
        if self._oracle is None:
            if not self.oracle_path.exists():
                raise VendorError(f"simulated vendor has no oracle at {self.oracle_path}; create the workspace with `labelloop init`")
            frame = read_parquet(self.oracle_path)
            self._oracle = frame.set_index("item_id")["label"].astype(str)
        return self._oracle

    def export_batch(self, batch: ExportBatch) -> ExportReceipt:
        path = self._tasks_path(batch.batch_id)
        if path.exists():
            return ExportReceipt(batch.batch_id, self.name, len(read_parquet(path)), created=False, vendor_ref=str(path.parent))
        tasks = batch.items[["item_id"]].copy()
        tasks["annotators_wanted"] = batch.items.get("annotators_wanted", pd.Series(1, index=batch.items.index)).astype(int)
        tasks["label_set"] = json.dumps(batch.label_set)
        write_parquet(path, tasks)
        return ExportReceipt(batch.batch_id, self.name, len(tasks), created=True, vendor_ref=str(path.parent))

    def fetch_labels(self, batch_id: str) -> FetchedLabels:
        path = self._tasks_path(batch_id)
        if not path.exists():
            raise VendorError(f"batch {batch_id} was never exported to the simulated vendor")
        tasks = read_parquet(path)
        oracle = self.oracle()
        label_set = json.loads(tasks["label_set"].iloc[0]) if len(tasks) else []
        rows = []
        for item_id, wanted in zip(tasks["item_id"].astype(str), tasks["annotators_wanted"], strict=True):
            if item_id not in oracle.index:
                continue  # the simulated crowd cannot answer items it has no truth for
            truth = oracle[item_id]
            annotators = _pick_annotators(self.params, batch_id, item_id, max(int(wanted), 1))
            for annotator in annotators:
                rng = np.random.default_rng(_stable_seed(self.params.seed, batch_id, item_id, annotator))
                label = truth
                if rng.random() < self.params.error_rate:
                    wrong = [c for c in label_set if c != truth]
                    if wrong:
                        label = wrong[int(rng.integers(len(wrong)))]
                rows.append({"item_id": item_id, "annotator_id": f"sim-{annotator}", "label": label,
                             "annotation_id": f"{batch_id}:{item_id}:{annotator}"})
        annotations = pd.DataFrame(rows, columns=ANNOTATION_COLUMNS)
        payload = annotations.to_json(orient="records", lines=True).encode()
        return FetchedLabels(batch_id, annotations, payload, "labels.jsonl")

    def status(self, batch_id: str) -> VendorStatus:
        path = self._tasks_path(batch_id)
        n = len(read_parquet(path)) if path.exists() else 0
        return VendorStatus(batch_id, n, n)


def _pick_annotators(params: SimulatedVendorParams, batch_id: str, item_id: str, wanted: int) -> list[int]:
    rng = np.random.default_rng(_stable_seed(params.seed, "assign", batch_id, item_id))
    count = min(wanted, params.annotators)
    return sorted(rng.choice(params.annotators, size=count, replace=False).tolist())
