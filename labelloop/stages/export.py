"""Export: send each selected batch to the labelling vendor (`export` in params.yaml).

Export plans each batch once (`plan.parquet`, written atomically before the vendor call and reused
on every rerun): the selected new items plus the quality-control extras — gold questions, review
items sent again, easy items — with `annotators_wanted` per item (`labelloop.domain.quality.plan_quality_items`).
Gold labels stay in the plan only.

Annotator context (`export.context`, `export.show_guess`): the plan records, per item, when its guess is
shown (`guess_shown`: before the answer, after it, never; `labelloop.domain.quality.assign_guess_conditions`
splits the gold questions between before and after) and, with `guess+why`, why the model guesses it
(`why`, JSON: `labelloop.explain`, from the registered model version that made the guess). A gold question's
guess comes from a model fitted like the champion on the labelled set without the batch's gold questions:
the champion trained on them and would nearly always be right.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labelloop.adapters.vendors import ExportBatch
from labelloop.batches import (
    BatchMeta,
    BatchStore,
    ReviewQueue,
    drop_from_pool,
    load_pool,
)
from labelloop.columns import CONFIDENCE, ITEM_ID, LABEL, MODEL_VERSION, PREDICTED
from labelloop.config import ExportParams, TrainParams
from labelloop.core.faults import crash_point
from labelloop.core.io import read_parquet, write_parquet
from labelloop.domain.quality import GUESS_NEVER, REASON_LABEL_ERROR, assign_guess_conditions, plan_quality_items
from labelloop.schema import Schema, as_text
from labelloop.workspace import Workspace

if TYPE_CHECKING:
    from labelloop.model import LabelloopClassifier

EXPORT_FIELDS = [PREDICTED, CONFIDENCE, MODEL_VERSION, "utility", "annotators_wanted"]  # besides item_id + allowed columns
CONTEXT_FIELDS = ["guess_shown", "why"]  # sent when the plan has them (annotator context)
ModelLoader = Callable[[str], "LabelloopClassifier | None"]  # a registered version -> its model, None if unavailable


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


def plan_export(workspace: Workspace, params: ExportParams, meta: BatchMeta, store: BatchStore,
                train: TrainParams | None = None, load_model: ModelLoader | None = None) -> pd.DataFrame:
    """The batch's export plan: new items + gold + review re-sends + easy items (`quality.plan_quality_items`).

    Gold questions come from the labelled seed set (curated true labels; never the holdout, never
    crowd labels); review items are the review queue's pending ones, with the row their source batch
    sent (a label the error scan flagged is re-asked although it is in the labelled set); easy items are
    the pool's most confident rows. Then the annotator context (`add_guess_context`). Deterministic per batch id.
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
            # A labelled item is re-sent only when the error scan doubted its label (then also when that second
            # look found no agreement); other review items are waiting for a first accepted label.
            label_errors = queue.ever_queued(REASON_LABEL_ERROR)
            wanted = [i for i in wanted if i not in labeled_ids or i in label_errors]
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
    return add_guess_context(workspace, params, plan, meta, seed, train, load_model)


def add_guess_context(workspace: Workspace, params: ExportParams, plan: pd.DataFrame, meta: BatchMeta, seed: int,
                      train: TrainParams | None, load_model: ModelLoader | None) -> pd.DataFrame:
    """`plan` with `guess_shown` (before / after / never per item) and `why` (JSON or None) per `export.context`
    and `export.show_guess`; gold questions get a guess from a model fitted without them (`gold_guesses`)."""
    out = plan.copy()
    out["guess_shown"] = GUESS_NEVER
    out["why"] = None
    if params.context == "none" or params.show_guess == "never" or out.empty:
        return out
    schema = workspace.schema()
    train = train or workspace.params().train
    is_gold = out["is_gold"].astype(bool).to_numpy()
    heldout = None
    if is_gold.any():
        heldout = gold_guesses(workspace, out[is_gold], schema, train)
        version = meta.champion_version or _most_common(out.loc[~is_gold, MODEL_VERSION] if MODEL_VERSION in out else None)
        probas = heldout.predict_proba(out.loc[is_gold])
        out[PREDICTED] = out[PREDICTED].astype(object) if PREDICTED in out.columns else None
        out[CONFIDENCE] = out[CONFIDENCE].astype(float) if CONFIDENCE in out.columns else np.nan
        out[MODEL_VERSION] = out[MODEL_VERSION].astype(object) if MODEL_VERSION in out.columns else None
        out.loc[is_gold, PREDICTED] = np.asarray(schema.class_names, dtype=object)[probas.argmax(axis=1)]
        out.loc[is_gold, CONFIDENCE] = probas.max(axis=1)
        # The batch's version, as on its real items: a guess must not single out a gold question.
        out.loc[is_gold, MODEL_VERSION] = version
    if PREDICTED not in out.columns:
        return out
    guesses = out[PREDICTED].map(lambda v: None if pd.isna(v) else str(v))
    has_guess = guesses.isin(schema.class_names).to_numpy()
    out["guess_shown"] = assign_guess_conditions(is_gold, has_guess, params.show_guess, params.gold_guess_share, seed)
    if params.context == "guess+why":
        loader = load_model or champion_loader(workspace, train.model_name)
        shown = out["guess_shown"] != GUESS_NEVER
        versions = out[MODEL_VERSION].map(as_text) if MODEL_VERSION in out.columns else pd.Series(None, index=out.index)
        groups: dict[tuple[bool, str | None], list[int]] = {}  # (gold question, model version) -> rows
        for row in np.flatnonzero(shown.to_numpy()):
            groups.setdefault((bool(is_gold[row]), versions.iloc[row]), []).append(int(row))
        why: list[str | None] = [None] * len(out)
        for (gold, version), positions in groups.items():
            model = heldout if gold else loader(version) if version is not None else None
            explanations = explain_rows(model, out.iloc[positions], params.why_features, version)
            for position, explanation in zip(positions, explanations, strict=True):
                why[position] = json.dumps(explanation, sort_keys=True, allow_nan=False)
        out["why"] = why
    return out


def explain_rows(model: LabelloopClassifier | None, rows: pd.DataFrame, top: int, version: str | None) -> list[dict[str, Any]]:
    """Why `model` guesses each row's PREDICTED; without the model, an explanation that says so."""
    if model is None:
        note = f"the model that made this guess (version {version}) could not be loaded"
        return [{"label": str(g), "method": "none", "toward": [], "away": [], "note": note} for g in rows[PREDICTED]]
    from labelloop.explain import explain

    return explain(model, rows, labels=rows[PREDICTED].tolist(), top=top)


def gold_guesses(workspace: Workspace, gold: pd.DataFrame, schema: Schema, train: TrainParams) -> LabelloopClassifier:
    """A model fitted like the champion (`train`) on the labelled set without `gold`'s items: its guesses on the
    gold questions are as often wrong as a model's guesses on items it never saw."""
    from labelloop.model import LabelloopClassifier

    labeled = read_parquet(workspace.labeled_path)
    rest = labeled[~labeled[ITEM_ID].astype(str).isin(set(gold[ITEM_ID].astype(str)))]
    return LabelloopClassifier.from_params(train, schema).fit(rest, rest[LABEL].astype(str).to_numpy())


def champion_loader(workspace: Workspace, model_name: str) -> ModelLoader:
    """Registered versions of `model_name` from the tracking server (cached); None for a version that is not there
    or cannot be loaded any more (a production model outside the registry, an older labelloop's model)."""

    def load(version: str) -> LabelloopClassifier | None:
        from mlflow.exceptions import MlflowException

        from labelloop.adapters import tracking

        try:
            return tracking.load_model(workspace, model_name, version)
        except (MlflowException, tracking.IncompatibleModel):
            return None

    return load


def _most_common(values: pd.Series | None) -> str | None:
    if values is None:
        return None
    present = values.dropna().astype(str)
    return str(present.value_counts().sort_index(kind="stable").idxmax()) if len(present) else None


def export_batches(workspace: Workspace, params: ExportParams, vendor, train: TrainParams | None = None,
                   load_model: ModelLoader | None = None) -> list[str]:
    """The export stage: export every selected-but-not-exported batch; idempotent per batch id.

    The plan is written once per batch before the vendor call and reused on a rerun, so a rerun
    sends the same items (no second set of gold questions, no duplicate tasks at the vendor).
    Only item ids, the id and feature columns `export.columns` allows (all by default, in the schema's
    order, with their raw values), the model's guess with its model version, the acquisition score and
    `annotators_wanted` leave: gold labels and the gold / review / easy marks stay here. The batch
    carries the schema, so a vendor knows which column is text. With annotator context, `guess_shown` and
    `why` leave too. `train` (default: the workspace's) names the model and fits the gold questions' guesses;
    `load_model` (default: the tracking server) gives the registered version that made a guess.
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
            plan = plan_export(workspace, params, meta, store, train, load_model)
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
    context = [c for c in CONTEXT_FIELDS if c in plan.columns]
    payload = plan.reindex(columns=[ITEM_ID, *sent, *fields, *context])
    if "guess_shown" in payload.columns:  # a guess nobody may see does not leave
        hidden = payload["guess_shown"] == GUESS_NEVER
        for column in (PREDICTED, CONFIDENCE, MODEL_VERSION, "why"):
            if column in payload.columns and hidden.any():
                payload[column] = payload[column].astype(object).where(~hidden, None)
    return payload
