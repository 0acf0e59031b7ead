"""Select: score the candidate pool and write the next batch (`select` in params.yaml).

A batch's id is derived from what it was selected from (pool content + selection params + champion),
so a rerun of select after a crash finds the batch it already wrote instead of making a second one.
The batch is written before its items leave the pool; an item already in a batch is never offered
again, even if a crash left it in the pool file.

Each batch also carries `select.audit_fraction` × batch_size audit items, drawn before the strategy runs,
uniformly from the capture windows' audit candidates (all traffic), flagged `is_audit` with their `audit_weight`
(labelloop/stages/audit.py); the strategy's rows have `is_audit` false.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd

from labelloop.batches import (
    BatchMeta,
    BatchStore,
    drop_from_pool,
    load_pool,
    utc_timestamp,
)
from labelloop.columns import CONFIDENCE, ITEM_ID, LABEL, PREDICTED
from labelloop.config import AUTO_STRATEGY, SelectParams, TrainParams
from labelloop.core.faults import crash_point
from labelloop.core.io import read_parquet, write_parquet
from labelloop.prediction_log import normalise_text
from labelloop.stages.audit import draw_audit_items, mark_strategy_rows
from labelloop.stages.bandit import choose_arm
from labelloop.workspace import Workspace


def select_next_batch(workspace: Workspace, params: SelectParams, train: TrainParams) -> BatchMeta | None:
    """The select stage: score the pool with the current champion (if any) and write the next batch."""
    from labelloop.adapters import tracking  # MLflow and the model: imported only when the stage runs
    from labelloop.model import predict_in_batches

    champion = tracking.champion_model(workspace, train.model_name)
    version, loaded = champion if champion else (None, None)
    model = _classifier(loaded, workspace) if loaded is not None else None
    rescore = (lambda frame: predict_in_batches(model, frame)) if model is not None else None
    context = selection_context(workspace, params, train, rescore, model=model)
    return select_batch(workspace, params, rescore=rescore, champion_version=version, context=context)


def _classifier(loaded, workspace: Workspace):
    """The champion as a LabelloopClassifier (a bare scikit-learn pipeline, as MLflow stores it, is wrapped)."""
    from labelloop.model import LabelloopClassifier

    if isinstance(loaded, LabelloopClassifier):
        return loaded
    return LabelloopClassifier.from_pipeline(loaded, workspace.schema())


def _selection_key(pool_ids: pd.Series, params: SelectParams, champion_version: str | None) -> str:
    digest = hashlib.sha256()
    digest.update("\n".join(sorted(pool_ids.astype(str))).encode())
    digest.update(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(str(champion_version).encode())
    return digest.hexdigest()[:12]


def segment_boost(workspace: Workspace, params: SelectParams) -> dict[str, float]:
    """The hybrid's quota weights: the last cycle's drifted or under-performing `group_column` segments get
    `monitor.segment_boost` (labelloop/stages/monitor.py); {} without a group column."""
    if params.group_column is None:
        return {}
    from labelloop.stages.monitor import quota_boost_for

    return quota_boost_for(workspace, params.group_column, workspace.params().monitor.segment_boost)


def selection_context(workspace: Workspace, params: SelectParams, train_params, predict_proba=None, model=None):
    """What the engine needs beyond the pool: the schema, the labelled set (committees, coreset centres),
    the label set, `train` settings, the selection space and a calibration split (the fixed holdout, scored
    by the champion; it only reorders candidates, the gate still evaluates on untouched predictions).

    The selection space (density, cluster, coreset, hybrid) is the champion's own feature space, text
    reduced by TruncatedSVD to `train.text.selection_components` dimensions; for an all-numeric schema the
    raw columns (see labelloop/domain/acquisition/space.py); with no champion yet, the schema's features
    fitted on the pool.
    """
    from labelloop.domain.acquisition.pool import SelectionContext
    from labelloop.domain.acquisition.space import ModelSpace

    schema = workspace.schema()
    labeled = read_parquet(workspace.labeled_path)
    validation_probas = validation_labels = None
    if params.calibration is not None and predict_proba is not None:
        holdout = read_parquet(workspace.holdout_path)
        validation_probas = np.asarray(predict_proba(holdout[schema.feature_columns]))
        validation_labels = holdout[LABEL].astype(str).to_numpy()
    feature_map = None
    text = getattr(train_params, "text", None)
    components = text.selection_components if text is not None else 64
    if not schema.all_numeric:
        if model is not None:
            feature_map = ModelSpace.of_model(model, components)
        else:
            feature_map = ModelSpace.of_schema(schema, text, components)
    return SelectionContext(
        labelled_rows=labeled[schema.feature_columns],
        labelled_labels=labeled[LABEL].astype(str).to_numpy(),
        class_names=schema.class_names,
        train_params=train_params,
        schema=schema,
        feature_map=feature_map,
        committee_size=params.committee_size,
        committee_seed=params.seed,
        calibration=params.calibration,
        validation_probas=validation_probas,
        validation_labels=validation_labels,
        group_column=params.group_column,
        hybrid=params.hybrid,
        group_boost=segment_boost(workspace, params),
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
    from labelloop.domain.acquisition.pool import Selection, SelectionContext, select_from_frame

    schema = workspace.schema()
    if context is None:  # the schema still says which pool columns are features, and their roles
        context = SelectionContext(class_names=schema.class_names, schema=schema, group_column=params.group_column,
                                   hybrid=params.hybrid)
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
            drop_from_pool(workspace, pool, store.items(meta.batch_id)[ITEM_ID])
            return meta
    # An item already in a batch is never offered again, even if a crash left it in the pool file.
    batched = store.queued_ids()
    if pool[ITEM_ID].astype(str).isin(batched).any():
        drop_from_pool(workspace, pool, pd.Series(sorted(batched)))
        pool = load_pool(workspace)
        if pool.empty:
            return None
    strategy: str = params.strategy
    bandit: dict[str, Any] = {}
    if params.strategy == AUTO_STRATEGY:  # the bandit draws this batch's strategy (labelloop/stages/bandit.py)
        strategy, bandit = choose_arm(workspace, params, key)
    ordinal = len(store.list()) + 1
    batch_id = f"batch-{ordinal:04d}-{key[:6]}"
    # Audit items first, uniformly from all captured traffic and never by the strategy (labelloop/stages/audit.py).
    audit = draw_audit_items(workspace, params.audit_items, batch_id, key, _unavailable_ids(workspace, store))
    offered = pool[~pool[ITEM_ID].astype(str).isin(set(audit[ITEM_ID].astype(str)))] if len(audit) else pool
    scored = offered.copy()
    if rescore is not None:
        for frame in (scored, audit):
            if len(frame):
                probas = np.asarray(rescore(frame[schema.feature_columns]))
                frame[schema.proba_columns] = probas
                frame[PREDICTED] = np.asarray(schema.class_names, dtype=object)[probas.argmax(axis=1)]
                frame[CONFIDENCE] = probas.max(axis=1)
    if scored.empty:  # the pool held only audit items
        selection = Selection([], np.empty(0), strategy, params.selector, params.seed, 0, scored)
    else:
        selection = select_from_frame(
            scored,
            strategy=strategy,
            selector=params.selector,
            batch_size=params.batch_size,
            seed=params.seed,
            feature_columns=schema.feature_columns,
            id_column=ITEM_ID,
            context=context,
        )
    if not selection.item_ids and audit.empty:
        return None
    rows = mark_strategy_rows(selection.rows.copy())
    rows["utility"] = selection.utilities
    if len(audit):  # after the strategy's rows, utility 0: nobody chose them for it
        rows = pd.concat([rows, audit.assign(utility=0.0)], ignore_index=True)
    rows["rank"] = np.arange(1, len(rows) + 1)
    rows["is_gold"] = False
    rows["annotators_wanted"] = 1
    write_parquet(workspace.batch_dir(batch_id) / "batch.parquet", rows)
    meta = BatchMeta(
        batch_id=batch_id, key=key, status="selected", strategy=params.strategy, selector=params.selector,
        seed=params.seed, params=params.model_dump(mode="json"), n_items=len(rows), created_at=utc_timestamp(),
        champion_version=champion_version, seconds=selection.seconds,
        metrics={**selection.metrics, "audit_items": len(audit)},
        selector_used=selection.selector, bandit=bandit,
    )
    store.put(meta)
    crash_point("select.after_batch")
    drop_from_pool(workspace, pool, rows[ITEM_ID])
    return meta


def _unavailable_ids(workspace: Workspace, store: BatchStore) -> set[str]:
    """Items an audit draw must not pick: already queued, labelled or in the holdout."""
    labeled = read_parquet(workspace.labeled_path, columns=[ITEM_ID])[ITEM_ID].astype(str)
    holdout = read_parquet(workspace.holdout_path, columns=[ITEM_ID])[ITEM_ID].astype(str)
    return store.queued_ids() | set(labeled) | set(holdout)


def _quarantine_unofferable_rows(workspace: Workspace, pool: pd.DataFrame) -> pd.DataFrame:
    """The pool without rows select cannot offer (no item id, an item id a second time); those go to
    quarantine with the reason and the pool file is rewritten without them. Capture never pools such
    rows; a pool left by an older version or edited by hand may hold them, and they must not stop select."""
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
