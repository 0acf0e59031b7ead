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
from labelloop.columns import CONFIDENCE, ITEM_ID, MODEL_VERSION, PREDICTED
from labelloop.config import ExportParams
from labelloop.core.faults import crash_point
from labelloop.core.io import read_parquet, write_parquet
from labelloop.domain.quality import plan_quality_items
from labelloop.schema import Schema
from labelloop.workspace import Workspace

EXPORT_FIELDS = [PREDICTED, CONFIDENCE, MODEL_VERSION, "utility", "annotators_wanted"]  # besides item_id + allowed columns


def with_model_version(items: pd.DataFrame, champion_version: str | None) -> pd.DataFrame:
    """`items` with `model_version` = the registered version that made each row's guess.

    Select rescores the pool with the champion when there is one (the batch records its version), so
    that version made the guess; without a champion the guess is the production model's, whose version
    the prediction log recorded for the row.
    """
    out = items.copy()
    if champion_version is not None:
        out[MODEL_VERSION] = str(champion_version)
    elif MODEL_VERSION not in out.columns:
        out[MODEL_VERSION] = None
    return out


def columns_to_send(schema: Schema, allowed: list[str] | None) -> list[str]:
    """The columns that leave for the vendor, in the schema's order: the id columns (they help a person
    find the record) and the features, or only those `export.columns` names."""
    if allowed is None:
        return list(schema.stored_columns)
    unknown = sorted(set(allowed) - set(schema.stored_columns))
    if unknown:
        raise ValueError(f"export.columns names unknown columns {unknown}; allowed: id and feature columns "
                         f"{schema.stored_columns}")
    return [c for c in schema.stored_columns if c in set(allowed)]


def plan_export(workspace: Workspace, params: ExportParams, meta: BatchMeta, store: BatchStore) -> pd.DataFrame:
    """The batch's export plan: new items + gold + review re-sends + easy items (`quality.plan_quality_items`).

    Gold questions come from the labelled seed set (curated true labels; never the holdout, never
    crowd labels); review items are the review queue's pending ones, with the row their source batch
    sent; easy items are the pool's most confident rows. Deterministic per batch id.
    """
    items = with_model_version(store.selected_items(meta.batch_id), meta.champion_version)
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
                    source_items = store.items(source)  # its plan: model_version already the guess's
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
    Only item ids, the id and feature columns `export.columns` allows (all by default, in the schema's
    order, with their raw values), the model's guess with its model version, the acquisition score and
    `annotators_wanted` leave: gold labels and the gold / review / easy marks stay here. The batch
    carries the schema, so a vendor knows which column is text.
    """
    schema = workspace.schema()
    columns = columns_to_send(schema, params.columns)
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
        payload = export_payload(plan, columns, schema)
        sent = [c for c in columns if c in payload.columns]
        receipt = vendor.export_batch(ExportBatch(meta.batch_id, payload, schema.class_names, sent, schema))
        crash_point("export.after_vendor")
        flags = plan[["is_gold", "is_review", "is_easy"]].astype(bool)
        quality = {"n_new": int((~flags.any(axis=1)).sum()), "n_gold": int(flags["is_gold"].sum()),
                   "n_review": int(flags["is_review"].sum()), "n_easy": int(flags["is_easy"].sum()),
                   "n_overlap": int(((plan["annotators_wanted"] > 1) & ~flags["is_gold"] & ~flags["is_review"]).sum())}
        store.mark(meta.batch_id, status="exported", vendor=receipt.vendor, vendor_ref=receipt.vendor_ref,
                   quality=quality, labels_ordered=int(plan["annotators_wanted"].sum()))
        exported.append(meta.batch_id)
    return exported


def export_payload(plan: pd.DataFrame, columns: list[str], schema: Schema) -> pd.DataFrame:
    """What leaves for the vendor from a plan: item ids, `columns` and EXPORT_FIELDS.

    A feature column the plan lacks is an error (every row of the pool, the seed set and earlier batches
    holds the features). An id column is sent when the batch's own rows carry it: the prediction log
    need not hold ids, and ids on gold questions (drawn from the seed set, which has them) alone would
    tell them apart. A plan written before model versions were recorded gets a null `model_version`.
    """
    missing = [c for c in columns if c not in plan.columns and c not in schema.id_columns]
    if missing:
        raise ValueError(f"the export plan lacks feature columns {missing}")
    not_gold = ~plan["is_gold"].astype(bool) if "is_gold" in plan.columns else pd.Series(True, index=plan.index)
    sent = [c for c in columns if c in plan.columns and (c not in schema.id_columns or plan.loc[not_gold, c].notna().any())]
    fields = [c for c in EXPORT_FIELDS if c in plan.columns or c == MODEL_VERSION]
    return plan.reindex(columns=[ITEM_ID, *sent, *fields])
