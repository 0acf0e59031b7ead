"""Batches: select from the candidate pool, export to the vendor, track each batch's status.

A batch's id is derived from what it was selected from (pool content + selection params), so a
rerun of select after a crash finds the batch it already wrote instead of making a second one.
Status moves selected → exported → partial → imported; `versioned_in` records the data tag.

Export plans each batch once (`plan.parquet`, written atomically before the vendor call and reused
on every rerun): the selected new items plus the quality-control extras — gold questions, review
items sent again, easy items — with `annotators_wanted` per item. Gold labels stay in the plan only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from labelloop.core.faults import crash_point
from labelloop.config import ExportParams, SelectParams
from labelloop.core.io import read_json, read_parquet, write_json, write_parquet
from labelloop.workspace import Workspace

ITEM_ID = "item_id"
STATUSES = ("selected", "exported", "partial", "imported")


@dataclass
class BatchMeta:
    batch_id: str
    key: str
    status: str
    strategy: str
    selector: str
    seed: int
    params: dict
    n_items: int
    created_at: str
    champion_version: str | None = None
    vendor: str | None = None
    vendor_ref: str | None = None
    n_labelled: int = 0
    n_quarantined: int = 0
    cost: float = 0.0
    versioned_in: str | None = None
    seconds: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # e.g. ece_before / ece_after when calibrated
    selector_used: str | None = None  # a preset strategy (hybrid) brings its own selector
    quality: dict = field(default_factory=dict)  # export plan counts: new, gold, review, easy, overlap items
    labels_ordered: int = 0  # answers asked of the vendor (sum of annotators_wanted)
    labels_bought: int = 0  # answers received and paid (cost = labels_bought x export.price_per_label)
    history: list = field(default_factory=list)


class BatchStore:
    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def _meta_path(self, batch_id: str):
        return self.workspace.batch_dir(batch_id) / "meta.json"

    def exists(self, batch_id: str) -> bool:
        return self._meta_path(batch_id).exists()

    def get(self, batch_id: str) -> BatchMeta:
        data = read_json(self._meta_path(batch_id))
        if data is None:
            raise KeyError(f"no batch {batch_id!r} in {self.workspace.batches_dir}")
        return BatchMeta(**data)

    def list(self) -> list[BatchMeta]:
        if not self.workspace.batches_dir.exists():
            return []
        metas = [self.get(p.name) for p in sorted(self.workspace.batches_dir.iterdir()) if (p / "meta.json").exists()]
        return sorted(metas, key=lambda m: m.batch_id)

    def put(self, meta: BatchMeta) -> None:
        write_json(self._meta_path(meta.batch_id), asdict(meta))

    def mark(self, batch_id: str, **changes: object) -> BatchMeta:
        meta = self.get(batch_id)
        for key, value in changes.items():
            setattr(meta, key, value)
        meta.history.append({"at": _now(), **{k: v for k, v in changes.items() if k in ("status", "versioned_in")}})
        self.put(meta)
        return meta

    def plan_path(self, batch_id: str):
        return self.workspace.batch_dir(batch_id) / "plan.parquet"

    def items(self, batch_id: str) -> pd.DataFrame:
        """Every item the batch sends: the export plan once written, else the selected items."""
        plan = self.plan_path(batch_id)
        return read_parquet(plan if plan.exists() else self.workspace.batch_dir(batch_id) / "batch.parquet")

    def selected_items(self, batch_id: str) -> pd.DataFrame:
        """The new items select picked (the batch's item budget), without QC extras."""
        return read_parquet(self.workspace.batch_dir(batch_id) / "batch.parquet")

    def final_labels(self, batch_id: str) -> pd.DataFrame:
        path = self.workspace.final_labels_dir / f"{batch_id}.parquet"
        if not path.exists():
            return pd.DataFrame(columns=[ITEM_ID, "label"])
        return read_parquet(path)

    def queued_ids(self) -> set[str]:
        """Items in batches whose labels are not yet final."""
        ids: set[str] = set()
        for meta in self.list():
            ids.update(self.items(meta.batch_id)[ITEM_ID].astype(str))
        return ids


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _selection_key(pool_ids: pd.Series, params: SelectParams, champion_version: str | None) -> str:
    digest = hashlib.sha256()
    digest.update("\n".join(sorted(pool_ids.astype(str))).encode())
    digest.update(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(str(champion_version).encode())
    return digest.hexdigest()[:12]


def load_pool(workspace: Workspace) -> pd.DataFrame:
    if not workspace.pool_path.exists():
        return pd.DataFrame(columns=[ITEM_ID])
    return read_parquet(workspace.pool_path)


def selection_context(workspace: Workspace, params: SelectParams, train_params, predict_proba=None):
    """What the engine needs beyond the pool: the labelled set (committees, coreset centres),
    the label set, `train` settings, and a calibration split (the fixed holdout, scored by the
    champion; it only reorders candidates, the gate still evaluates on untouched predictions)."""
    from labelloop.domain.acquisition.pool import SelectionContext

    schema = workspace.schema()
    labeled = read_parquet(workspace.labeled_path)
    validation_probas = validation_labels = None
    if params.calibration is not None and predict_proba is not None:
        holdout = read_parquet(workspace.holdout_path)
        validation_probas = np.asarray(predict_proba(holdout[schema.feature_columns]))
        validation_labels = holdout["label"].astype(str).to_numpy()
    return SelectionContext(
        labelled_features=labeled[schema.feature_columns].to_numpy(dtype=np.float64),
        labelled_labels=labeled["label"].astype(str).to_numpy(),
        class_names=schema.class_names,
        train_params=train_params,
        committee_size=params.committee_size,
        committee_seed=params.seed,
        calibration=params.calibration,
        validation_probas=validation_probas,
        validation_labels=validation_labels,
        group_column=params.group_column,
    )


def select_batch(
    workspace: Workspace,
    params: SelectParams,
    *,
    rescore=None,
    champion_version: str | None = None,
    context=None,
) -> BatchMeta | None:
    """Score the pool, write the batch, then drop its items from the pool. None if the pool is empty.

    `rescore(frame) -> probas` lets the caller refresh stale pool probabilities with the current champion.
    """
    from labelloop.domain.acquisition.pool import select_from_frame

    schema = workspace.schema()
    pool = load_pool(workspace)
    store = BatchStore(workspace)
    if pool.empty:
        return None
    pool = _quarantine_unofferable_rows(workspace, pool)
    if pool.empty:
        return None
    key = _selection_key(pool[ITEM_ID], params, champion_version)
    for meta in store.list():
        if meta.key == key:
            _drop_from_pool(workspace, pool, store.items(meta.batch_id)[ITEM_ID])
            return meta
    # An item already in a batch is never offered again, even if a crash left it in the pool file.
    batched = store.queued_ids()
    if pool[ITEM_ID].astype(str).isin(batched).any():
        _drop_from_pool(workspace, pool, pd.Series(sorted(batched)))
        pool = load_pool(workspace)
        if pool.empty:
            return None
    scored = pool.copy()
    if rescore is not None:
        probas = np.asarray(rescore(scored[schema.feature_columns]))
        scored[schema.proba_columns] = probas
        scored["predicted"] = np.asarray(schema.class_names, dtype=object)[probas.argmax(axis=1)]
        scored["confidence"] = probas.max(axis=1)
    selection = select_from_frame(
        scored,
        strategy=params.strategy,
        selector=params.selector,
        batch_size=params.batch_size,
        seed=params.seed,
        feature_columns=schema.feature_columns,
        id_column=ITEM_ID,
        context=context,
    )
    if not selection.item_ids:
        return None
    ordinal = len(store.list()) + 1
    batch_id = f"batch-{ordinal:04d}-{key[:6]}"
    rows = selection.rows.copy()
    rows["utility"] = selection.utilities
    rows["rank"] = np.arange(1, len(rows) + 1)
    rows["is_gold"] = False
    rows["annotators_wanted"] = 1
    write_parquet(workspace.batch_dir(batch_id) / "batch.parquet", rows)
    meta = BatchMeta(
        batch_id=batch_id, key=key, status="selected", strategy=params.strategy, selector=params.selector,
        seed=params.seed, params=params.model_dump(mode="json"), n_items=len(rows), created_at=_now(),
        champion_version=champion_version, seconds=selection.seconds, metrics=dict(selection.metrics),
        selector_used=selection.selector,
    )
    store.put(meta)
    crash_point("select.after_batch")
    _drop_from_pool(workspace, pool, rows[ITEM_ID])
    return meta


def _quarantine_unofferable_rows(workspace: Workspace, pool: pd.DataFrame) -> pd.DataFrame:
    """The pool without rows select cannot offer (no item id, an item id a second time); those go to
    quarantine with the reason and the pool file is rewritten without them. Capture never pools such
    rows; a pool left by an older version or edited by hand may hold them, and they must not stop select."""
    from labelloop.prediction_log import normalise_text

    ids = normalise_text(pool[ITEM_ID])
    missing = ids.isna().to_numpy()
    repeated = (ids.duplicated(keep="first") & ids.notna()).to_numpy()
    unofferable = missing | repeated
    if not unofferable.any():
        return pool
    reasons = np.where(missing, "no item_id: select cannot offer it", "duplicate item_id in the pool (its first row is kept)")
    rejected = pool.loc[unofferable].assign(reason=reasons[unofferable]).astype(str)
    digest = hashlib.sha256(rejected.to_csv(index=False).encode()).hexdigest()[:12]
    write_parquet(workspace.quarantine_dir / f"pool-{digest}.parquet", rejected)  # before the pool: a rerun redoes both
    kept = pool.loc[~unofferable].reset_index(drop=True)
    kept[ITEM_ID] = ids[~unofferable].to_numpy()
    write_parquet(workspace.pool_path, kept)
    return kept


def _drop_from_pool(workspace: Workspace, pool: pd.DataFrame, item_ids: pd.Series) -> None:
    remaining = pool[~pool[ITEM_ID].isin(set(item_ids.astype(str)))]
    if len(remaining) != len(pool):
        write_parquet(workspace.pool_path, remaining.reset_index(drop=True))


EXPORT_FIELDS = ["predicted", "confidence", "utility", "annotators_wanted"]  # besides item_id + allowed features


def plan_export(workspace: Workspace, params: ExportParams, meta: BatchMeta, store: BatchStore) -> pd.DataFrame:
    """The batch's export plan: new items + gold + review re-sends + easy items (`quality.plan_quality_items`).

    Gold questions come from the labelled seed set (curated true labels; never the holdout, never
    crowd labels); review items are the review queue's pending ones, with the row their source batch
    sent; easy items are the pool's most confident rows. Deterministic per batch id.
    """
    from labelloop.domain.quality import ReviewQueue, plan_quality_items

    items = store.selected_items(meta.batch_id)
    if len(items) > params.max_batch_size:
        raise ValueError(f"batch {meta.batch_id} has {len(items)} items, above export.max_batch_size={params.max_batch_size}")
    gold_pool = review = easy_pool = None
    if params.gold_share > 0:
        labeled = read_parquet(workspace.labeled_path)
        if "batch_id" in labeled.columns:
            labeled = labeled[labeled["batch_id"].astype(str) == "seed"]
        holdout = set(read_parquet(workspace.holdout_path, columns=[ITEM_ID])[ITEM_ID].astype(str))
        gold_pool = labeled[~labeled[ITEM_ID].astype(str).isin(holdout)]
    if params.review_resend:
        queue = ReviewQueue(workspace.root / "quality" / "review_queue.json")
        wanted = queue.pending(max_sends=params.max_review_sends)
        if wanted:
            labeled_ids = set(read_parquet(workspace.labeled_path, columns=[ITEM_ID])[ITEM_ID].astype(str))
            wanted = [i for i in wanted if i not in labeled_ids]
            sources = queue.frame().drop_duplicates("item_id", keep="last").set_index("item_id")["source_batch"]
            rows = []
            for source in sorted({sources[i] for i in wanted}):
                if source != meta.batch_id and store.exists(source):
                    source_items = store.items(source)
                    rows.append(source_items[source_items[ITEM_ID].astype(str).isin(wanted)
                                             & ~source_items.get("is_gold", pd.Series(False, index=source_items.index)).astype(bool)])
            review = pd.concat(rows, ignore_index=True) if rows else None
    if params.easy_share > 0:
        easy_pool = load_pool(workspace)
        if len(easy_pool):
            easy_pool = easy_pool[~easy_pool[ITEM_ID].astype(str).isin(store.queued_ids())]
    seed = int(hashlib.sha256(meta.batch_id.encode()).hexdigest()[:8], 16)
    plan = plan_quality_items(
        items, gold_pool=gold_pool, gold_share=params.gold_share, overlap_share=params.overlap_share,
        overlap_annotators=params.overlap_annotators, max_batch_size=params.max_batch_size,
        easy_pool=easy_pool, easy_share=params.easy_share, review_items=review, seed=seed,
    )
    return plan


def export_batches(workspace: Workspace, params: ExportParams, vendor) -> list[str]:
    """Export every selected-but-not-exported batch; idempotent per batch id.

    The plan is written once per batch before the vendor call and reused on a rerun, so a rerun
    sends the same items (no second set of gold questions, no duplicate tasks at the vendor).
    Only item ids, allow-listed features, the model's guess, the acquisition score and
    `annotators_wanted` leave: gold labels and the gold / review / easy marks stay here.
    """
    from labelloop.domain.quality import ReviewQueue
    from labelloop.adapters.vendors import ExportBatch

    schema = workspace.schema()
    columns = params.columns if params.columns is not None else schema.feature_columns
    unknown = sorted(set(columns) - set(schema.feature_columns))
    if unknown:
        raise ValueError(f"export.columns names unknown feature columns {unknown}; allowed: {schema.feature_columns}")
    store = BatchStore(workspace)
    exported = []
    for meta in store.list():
        if meta.status != "selected":
            continue
        plan_path = store.plan_path(meta.batch_id)
        if plan_path.exists():
            plan = read_parquet(plan_path)
        else:
            plan = plan_export(workspace, params, meta, store)
            write_parquet(plan_path, plan)
        # Both steps below repeat harmlessly on a rerun: they are keyed by the plan's item ids.
        resent = plan.loc[plan["is_review"].astype(bool), ITEM_ID].astype(str)
        if len(resent):
            ReviewQueue(workspace.root / "quality" / "review_queue.json").mark_sent(resent, meta.batch_id)
        easy = plan.loc[plan["is_easy"].astype(bool), ITEM_ID].astype(str)
        if len(easy):
            _drop_from_pool(workspace, load_pool(workspace), easy)
        payload = plan[[ITEM_ID, *columns, *EXPORT_FIELDS]].copy()
        receipt = vendor.export_batch(ExportBatch(meta.batch_id, payload, schema.class_names, list(columns)))
        crash_point("export.after_vendor")
        flags = plan[["is_gold", "is_review", "is_easy"]].astype(bool)
        quality = {"n_new": int((~flags.any(axis=1)).sum()), "n_gold": int(flags["is_gold"].sum()),
                   "n_review": int(flags["is_review"].sum()), "n_easy": int(flags["is_easy"].sum()),
                   "n_overlap": int(((plan["annotators_wanted"] > 1) & ~flags["is_gold"] & ~flags["is_review"]).sum())}
        store.mark(meta.batch_id, status="exported", vendor=receipt.vendor, vendor_ref=receipt.vendor_ref,
                   quality=quality, labels_ordered=int(plan["annotators_wanted"].sum()))
        exported.append(meta.batch_id)
    return exported
