"""Export: send each selected batch to the labelling vendor (`export` in params.yaml).

Export plans each batch once (`plan.parquet`, written atomically before the vendor call and reused
on every rerun): the selected new items plus the quality-control extras — gold questions, review
items sent again, easy items — with `annotators_wanted` per item (`labelloop.domain.quality.plan_quality_items`).
Gold labels stay in the plan only.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from labelloop.adapters.vendors import ExportBatch
from labelloop.batches import (
    BatchMeta,
    BatchStore,
    ReviewQueue,
    drop_from_pool,
    load_pool,
)
from labelloop.columns import CONFIDENCE, ITEM_ID, PREDICTED
from labelloop.config import ExportParams
from labelloop.core.faults import crash_point
from labelloop.core.io import read_parquet, write_parquet
from labelloop.domain.quality import plan_quality_items
from labelloop.workspace import Workspace

EXPORT_FIELDS = [PREDICTED, CONFIDENCE, "utility", "annotators_wanted"]  # besides item_id + allowed features


def plan_export(workspace: Workspace, params: ExportParams, meta: BatchMeta, store: BatchStore) -> pd.DataFrame:
    """The batch's export plan: new items + gold + review re-sends + easy items (`quality.plan_quality_items`).

    Gold questions come from the labelled seed set (curated true labels; never the holdout, never
    crowd labels); review items are the review queue's pending ones, with the row their source batch
    sent; easy items are the pool's most confident rows. Deterministic per batch id.
    """
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
        queue = ReviewQueue(workspace.review_queue_path)
        wanted = queue.pending(max_sends=params.max_review_sends)
        if wanted:
            labeled_ids = set(read_parquet(workspace.labeled_path, columns=[ITEM_ID])[ITEM_ID].astype(str))
            wanted = [i for i in wanted if i not in labeled_ids]
            sources = queue.frame().drop_duplicates(ITEM_ID, keep="last").set_index(ITEM_ID)["source_batch"]
            rows = []
            for source in sorted({sources[i] for i in wanted}):
                if source != meta.batch_id and store.exists(source):
                    source_items = store.items(source)
                    is_gold = source_items.get("is_gold", pd.Series(False, index=source_items.index)).astype(bool)
                    rows.append(source_items[source_items[ITEM_ID].astype(str).isin(wanted) & ~is_gold])
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
    """The export stage: export every selected-but-not-exported batch; idempotent per batch id.

    The plan is written once per batch before the vendor call and reused on a rerun, so a rerun
    sends the same items (no second set of gold questions, no duplicate tasks at the vendor).
    Only item ids, allow-listed features, the model's guess, the acquisition score and
    `annotators_wanted` leave: gold labels and the gold / review / easy marks stay here.
    """
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
            ReviewQueue(workspace.review_queue_path).mark_sent(resent, meta.batch_id)
        easy = plan.loc[plan["is_easy"].astype(bool), ITEM_ID].astype(str)
        if len(easy):
            drop_from_pool(workspace, load_pool(workspace), easy)
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
