"""Simulated annotators: a documented stand-in for a human vendor, answering from known true labels.

`params.annotators` annotators; annotator `a` errs with probability `error_rates[a]` (or the shared
`error_rate`). A wrong answer is either any other class, uniformly (`noise: uniform`), or drawn from
a fixed per-annotator confusion matrix (`noise: confusion`: for each true class, 70% of the
annotator's mistakes go to one favourite wrong class, the rest spread at random, as real annotators
mix up similar classes). Each item gets `annotators_wanted` distinct annotators.

With `delay_imports: d`, every answer becomes visible on one of the next d+1 fetches (drawn per
answer), so labels come back over several imports; fetches are counted per batch in
`<root>/<batch_id>/fetches.json`.

Answers are a deterministic function of (seed, batch, item, annotator): a re-fetch returns the same
labels. Export state lives in `<root>/<batch_id>/tasks.parquet`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.adapters.vendors.base import (
    ANNOTATION_COLUMNS,
    ExportBatch,
    ExportReceipt,
    FetchedLabels,
    Vendor,
    VendorError,
    VendorStatus,
)
from labelloop.config import SimulatedVendorParams
from labelloop.core.io import read_json, read_parquet, write_json, write_parquet

FAVOURITE_SHARE = 0.7  # `noise: confusion`: share of an annotator's mistakes on a class that go to one class


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def annotator_error_rates(params: SimulatedVendorParams) -> list[float]:
    if params.error_rates is not None:
        return [float(r) for r in params.error_rates]
    return [float(params.error_rate)] * params.annotators


@functools.lru_cache(maxsize=256)
def _confusion_rows(seed: int, annotator: int, label_set: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per true class, the distribution of this annotator's wrong answers over the other classes."""
    rng = np.random.default_rng(_stable_seed(seed, "confusion", annotator, *label_set))
    rows = {}
    k = len(label_set)
    for truth in label_set:
        if k < 2:
            rows[truth] = np.zeros(0)
            continue
        # A favourite mistake takes FAVOURITE_SHARE of the errors; the rest is spread at random.
        weights = (1 - FAVOURITE_SHARE) * rng.dirichlet(np.ones(k - 1))
        weights[int(rng.integers(k - 1))] += FAVOURITE_SHARE
        rows[truth] = weights
    return rows


def simulate_answer(
    params: SimulatedVendorParams, label_set: list[str], batch_id: str, item_id: str, annotator: int, truth: str
) -> str:
    """The label annotator `annotator` gives to an item whose true label is `truth` (deterministic)."""
    rng = np.random.default_rng(_stable_seed(params.seed, batch_id, item_id, annotator))
    rate = annotator_error_rates(params)[annotator]
    if rng.random() >= rate:
        return truth
    wrong = [c for c in label_set if c != truth]
    if not wrong:
        return truth
    if params.noise == "confusion" and truth in label_set:
        weights = _confusion_rows(params.seed, annotator, tuple(label_set))[truth]
        return wrong[int(rng.choice(len(wrong), p=weights))]
    return wrong[int(rng.integers(len(wrong)))]


def _answer_delay(params: SimulatedVendorParams, batch_id: str, item_id: str, annotator: int) -> int:
    if params.delay_imports <= 0:
        return 0
    rng = np.random.default_rng(_stable_seed(params.seed, "delay", batch_id, item_id, annotator))
    return int(rng.integers(params.delay_imports + 1))


class SimulatedVendor(Vendor):
    name = "simulated"

    def __init__(self, root: Path, oracle_path: Path, params: SimulatedVendorParams) -> None:
        self.root = Path(root)
        self.oracle_path = Path(oracle_path)
        self.params = params
        self._oracle: pd.Series | None = None

    def _tasks_path(self, batch_id: str) -> Path:
        return self.root / batch_id / "tasks.parquet"

    def _fetches_path(self, batch_id: str) -> Path:
        return self.root / batch_id / "fetches.json"

    def oracle(self) -> pd.Series:
        if self._oracle is None:
            if not self.oracle_path.exists():
                raise VendorError(f"simulated vendor has no oracle at {self.oracle_path}; "
                                  "create the workspace with `labelloop init`")
            frame = read_parquet(self.oracle_path)
            self._oracle = frame.assign(item_id=frame["item_id"].astype(str)).set_index("item_id")["label"].astype(str)
        return self._oracle

    def export_batch(self, batch: ExportBatch) -> ExportReceipt:
        path = self._tasks_path(batch.batch_id)
        if path.exists():
            return ExportReceipt(batch.batch_id, self.name, len(read_parquet(path)), created=False, vendor_ref=str(path.parent))
        tasks = batch.items[["item_id"]].copy()
        tasks["item_id"] = tasks["item_id"].astype(str)
        if tasks["item_id"].duplicated().any():
            repeated = tasks.loc[tasks["item_id"].duplicated(), "item_id"].tolist()[:5]
            raise VendorError(f"batch {batch.batch_id} lists item ids more than once: {repeated}")
        annotators_wanted = batch.items.get("annotators_wanted", pd.Series(1, index=batch.items.index))
        tasks["annotators_wanted"] = annotators_wanted.astype(int).to_numpy()
        tasks["label_set"] = json.dumps(batch.label_set)
        write_parquet(path, tasks)
        return ExportReceipt(batch.batch_id, self.name, len(tasks), created=True, vendor_ref=str(path.parent))

    def _answers(self, batch_id: str, tasks: pd.DataFrame, visible_until: int) -> tuple[list[dict], int]:
        oracle = self.oracle()
        label_set = json.loads(tasks["label_set"].iloc[0]) if len(tasks) else []
        rows: list[dict] = []
        n_complete = 0
        for item_id, wanted in zip(tasks["item_id"].astype(str), tasks["annotators_wanted"], strict=True):
            if item_id not in oracle.index:
                continue  # the simulated crowd cannot answer items it has no truth for
            truth = oracle[item_id]
            annotators = _pick_annotators(self.params, batch_id, item_id, max(int(wanted), 1))
            complete = True
            for annotator in annotators:
                if _answer_delay(self.params, batch_id, item_id, annotator) > visible_until:
                    complete = False
                    continue
                rows.append({"item_id": item_id, "annotator_id": f"sim-{annotator}",
                             "label": simulate_answer(self.params, label_set, batch_id, item_id, annotator, truth),
                             "annotation_id": f"{batch_id}:{item_id}:{annotator}"})
            n_complete += int(complete)
        return rows, n_complete

    def fetch_labels(self, batch_id: str) -> FetchedLabels:
        path = self._tasks_path(batch_id)
        if not path.exists():
            raise VendorError(f"batch {batch_id} was never exported to the simulated vendor")
        tasks = read_parquet(path)
        fetch_number = 0
        if self.params.delay_imports > 0:
            fetch_number = int((read_json(self._fetches_path(batch_id), default={}) or {}).get("fetches", 0))
            write_json(self._fetches_path(batch_id), {"fetches": fetch_number + 1})
        rows, _ = self._answers(batch_id, tasks, fetch_number)
        annotations = pd.DataFrame(rows, columns=ANNOTATION_COLUMNS)
        payload = annotations.to_json(orient="records", lines=True).encode()
        return FetchedLabels(batch_id, annotations, payload, "labels.jsonl")

    def status(self, batch_id: str) -> VendorStatus:
        path = self._tasks_path(batch_id)
        if not path.exists():
            return VendorStatus(batch_id, 0, 0)
        tasks = read_parquet(path)
        fetches = int((read_json(self._fetches_path(batch_id), default={}) or {}).get("fetches", 0))
        # What the next fetch would return (fetch numbers start at 0).
        _, n_complete = self._answers(batch_id, tasks, fetches if self.params.delay_imports > 0 else 0)
        return VendorStatus(batch_id, len(tasks), n_complete, extra={"fetches": fetches})


def _pick_annotators(params: SimulatedVendorParams, batch_id: str, item_id: str, wanted: int) -> list[int]:
    rng = np.random.default_rng(_stable_seed(params.seed, "assign", batch_id, item_id))
    count = min(wanted, params.annotators)
    return sorted(rng.choice(params.annotators, size=count, replace=False).tolist())
