"""Auto-labels in production (`autolabel` in params.yaml; the thresholds: labelloop/domain/autolabel.py).

After select, each cycle:
1. Check items, each with the prediction and confidence of a model that never trained on it: the held-back check
   batches of earlier cycles (their prediction and confidence recorded at selection, `autolabel_predicted` /
   `autolabel_confidence`), the audit items not in the labelled set (labelloop/stages/audit.py; scored by the
   champion, weighted by their `audit_weight`), and with `check_holdout` the fixed holdout (scored by the champion).
2. The thresholds in force are re-measured on the newest checks; below the target the cycle pauses. Otherwise
   thresholds are chosen afresh, importance-weighted to the pool rows that could be auto-labelled.
3. Pool rows (not in a batch, not labelled, not in the holdout, not audit candidates) at or above their predicted
   class's threshold get the champion's label: an *auto batch* (`auto-cNNNN-…`, vendor and status `auto`, price 0),
   which the dataset stage versions with `label_source` = auto. Auto rows are never gold (gold comes from the seed
   rows), never holdout (they come from the pool) and never audit items (drawn by select, before).
4. `holdback_share` × select.batch_size pool rows at or above `min_confidence` are sent to humans anyway: a check
   batch (`check-cNNNN-…`, status selected) the export stage sends with the cycle's batch.

One run per cycle (state/autolabel.json, keyed by the cycle number): a rerun after a crash finds the batches it
wrote; the items of a batch leave the pool only after the batch is written. `withdraw` takes a cycle's auto-labels
out of the labelled set in a new data version (recorded as an exclusion, as a rollback's are).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from labelloop.batches import BatchMeta, BatchStore, drop_from_pool, load_pool, utc_timestamp
from labelloop.columns import CONFIDENCE, ITEM_ID, LABEL, PREDICTED
from labelloop.config import Params
from labelloop.core.faults import crash_point
from labelloop.core.io import read_json, read_json_lines, read_parquet, write_json, write_parquet, write_text
from labelloop.core.retry import DEFAULT_RETRY, RetryPolicy
from labelloop.domain.autolabel import (
    AutolabelDecision,
    choose_thresholds,
    draw_holdback,
    holdback_size,
    pick_auto_rows,
    spent_checks,
)
from labelloop.history import load_history
from labelloop.stages.dataset import AUTO, HUMAN, LABEL_SOURCE
from labelloop.workspace import Workspace

__all__ = ["AUTO", "HUMAN", "LABEL_SOURCE", "AutolabelReport", "run_autolabel", "withdraw"]

AUTO_STRATEGY = "autolabel"
CHECK_STRATEGY = "autolabel-check"
CHECK_PREDICTED, CHECK_CONFIDENCE = "autolabel_predicted", "autolabel_confidence"


@dataclass
class AutolabelReport:
    cycle: int
    enabled: bool = True
    batch_id: str | None = None  # the auto batch
    check_batch_id: str | None = None
    n_auto: int = 0
    n_check: int = 0
    per_class: dict = field(default_factory=dict)
    paused: bool = False
    precision_low: bool = False  # paused because the bound fell below the target at the thresholds in force
    reason: str = ""
    decision: dict = field(default_factory=dict)

    def text(self) -> str:
        if not self.enabled:
            return "autolabel: off"
        if self.paused:
            return f"autolabel: PAUSED ({self.reason})"
        d = self.decision
        return (f"autolabel: {self.n_auto} rows (price 0) at precision {d.get('precision', 0):.3f}, "
                f"{d.get('confidence', 0):.0%} bound {d.get('lower_bound', 0):.3f} ≥ {d.get('min_precision')}; "
                f"{self.n_check} held back to check")

    def metrics(self) -> dict[str, float]:
        d = self.decision
        out = {"autolabel_rows": float(self.n_auto), "autolabel_checked": float(self.n_check),
               "autolabel_paused": float(self.paused), "autolabel_precision_low": float(self.precision_low)}
        for key in ("precision", "lower_bound"):
            if d.get(key) is not None:
                out[f"autolabel_{key}"] = float(d[key])
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def state_path(workspace: Workspace):
    return workspace.state_dir / "autolabel.json"


def report_path(workspace: Workspace):
    return workspace.reports_dir / "autolabel.jsonl"


def next_cycle(workspace: Workspace) -> int:
    """The number the cycle now running will get in the history (as apps.cycle numbers it)."""
    return max([r.cycle for r in load_history(workspace)], default=-1) + 1


def _state(workspace: Workspace) -> dict:
    return read_json(state_path(workspace), default={}) or {}


def reports(workspace: Workspace) -> list[dict]:
    return read_json_lines(report_path(workspace)) if report_path(workspace).exists() else []


def cycle_report(workspace: Workspace, cycle: int) -> AutolabelReport | None:
    found = [r for r in reports(workspace) if r.get("cycle") == cycle]
    return AutolabelReport(**found[-1]) if found else None


def _score(model, schema, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    from labelloop.model import predict_in_batches

    probas = np.asarray(predict_in_batches(model, frame[schema.feature_columns]))
    names = np.asarray(schema.class_names, dtype=object)
    return names[probas.argmax(axis=1)].astype(str), probas.max(axis=1)


def check_items(workspace: Workspace, model, params: Params, store: BatchStore | None = None,
                spent: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Every check item: `predicted`, `confidence`, `correct`, `weight`, `recent` (the newest checks), `source`, its
    ITEM_ID (which decides whether it places or measures the thresholds); holdout items get weight 0 when `spent` (an
    earlier cycle's thresholds reached them: see labelloop.domain.autolabel.spent_checks)."""
    schema = workspace.schema()
    store = store or BatchStore(workspace)
    frames = []
    checks = [m for m in store.list() if m.strategy == CHECK_STRATEGY and m.status in ("imported", "partial")]
    for position, meta in enumerate(checks):
        final = store.final_labels(meta.batch_id)
        if final.empty:
            continue
        items = store.selected_items(meta.batch_id)[[ITEM_ID, CHECK_PREDICTED, CHECK_CONFIDENCE]]
        joined = items.assign(**{ITEM_ID: items[ITEM_ID].astype(str)}).merge(
            final.assign(**{ITEM_ID: final[ITEM_ID].astype(str)})[[ITEM_ID, LABEL]], on=ITEM_ID)
        frames.append(pd.DataFrame({
            "predicted": joined[CHECK_PREDICTED].astype(str), "confidence": joined[CHECK_CONFIDENCE].astype(float),
            "correct": joined[LABEL].astype(str) == joined[CHECK_PREDICTED].astype(str), "weight": 1.0,
            "recent": position == len(checks) - 1, "source": "holdback", ITEM_ID: joined[ITEM_ID].to_numpy()}))
    labeled_ids = set(read_parquet(workspace.labeled_path, columns=[ITEM_ID])[ITEM_ID].astype(str))
    if model is not None and workspace.audit_path.exists():  # H13's audit set, where it exists
        audit = read_parquet(workspace.audit_path)
        audit = audit[~audit[ITEM_ID].astype(str).isin(labeled_ids)]  # the champion never trained on these
        if len(audit) and set(schema.feature_columns) <= set(audit.columns):
            predicted, confidence = _score(model, schema, audit)
            weights = audit["audit_weight"].astype(float).to_numpy() if "audit_weight" in audit else np.ones(len(audit))
            frames.append(pd.DataFrame({
                "predicted": predicted, "confidence": confidence,
                "correct": audit[LABEL].astype(str).to_numpy() == predicted, "weight": weights / weights.mean(),
                "recent": True, "source": "audit", ITEM_ID: audit[ITEM_ID].astype(str).to_numpy()}))
    if model is not None and params.autolabel.check_holdout:
        holdout = read_parquet(workspace.holdout_path)
        predicted, confidence = _score(model, schema, holdout)
        frames.append(pd.DataFrame({
            "predicted": predicted, "confidence": confidence,
            "correct": holdout[LABEL].astype(str).to_numpy() == predicted,
            "weight": (~holdout[ITEM_ID].astype(str).isin(spent)).astype(float).to_numpy(), "recent": True,
            "source": "holdout", ITEM_ID: holdout[ITEM_ID].astype(str).to_numpy()}))
    columns = ["predicted", "confidence", "correct", "weight", "recent", "source", ITEM_ID]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _eligible_pool(workspace: Workspace, store: BatchStore, audit_items: int) -> pd.DataFrame:
    pool = load_pool(workspace)
    if pool.empty:
        return pool
    taken = store.queued_ids() | set(read_parquet(workspace.labeled_path, columns=[ITEM_ID])[ITEM_ID].astype(str)) \
        | set(read_parquet(workspace.holdout_path, columns=[ITEM_ID])[ITEM_ID].astype(str))
    # Candidates of capture windows select has yet to draw audit items from stay for that uniform draw:
    # auto-labelling them would bias the audit sample (a window once drawn from is never drawn from again).
    if audit_items > 0:
        from labelloop.stages.audit import open_windows
        from labelloop.stages.capture import audit_candidates_path

        for window in open_windows(workspace, batch_id=""):
            path = audit_candidates_path(workspace, window)
            if path.exists():
                taken |= set(read_parquet(path, columns=[ITEM_ID])[ITEM_ID].astype(str))
    return pool[~pool[ITEM_ID].astype(str).isin(taken)].reset_index(drop=True)


def run_autolabel(workspace: Workspace, params: Params, cycle: int | None = None, model=None,
                  champion_version: str | None = None) -> AutolabelReport:
    """The cycle's auto-labels and check batch (see the module docstring); `model` defaults to the champion."""
    cycle = next_cycle(workspace) if cycle is None else cycle
    p = params.autolabel
    if not p.enabled:
        return AutolabelReport(cycle, enabled=False)
    done = cycle_report(workspace, cycle)
    if done is not None:  # a rerun of this cycle's stage: what it did, nothing twice
        return done
    if model is None:
        from labelloop.adapters import tracking

        champion = tracking.champion_model(workspace, params.train.model_name)
        if champion is None:
            return _record(workspace, AutolabelReport(cycle, paused=True, reason="no champion yet"))
        champion_version, model = champion
    schema = workspace.schema()
    store = BatchStore(workspace)
    state = _state(workspace)
    written = [m for m in store.list() if m.strategy in (AUTO_STRATEGY, CHECK_STRATEGY) and m.params.get("cycle") == cycle]
    if written:  # a crash after the batches were written, before the report: finish that run, choose nothing anew
        return _finish(workspace, store, state, _report_of(cycle, written))
    checks = check_items(workspace, model, params, store, frozenset(state.get("spent_holdout", [])))
    pool = _eligible_pool(workspace, store, params.select.audit_items)
    predicted, confidence = _score(model, schema, pool) if len(pool) else (np.empty(0, dtype=str), np.empty(0))
    decision = choose_thresholds(
        schema.class_names, checks["predicted"], checks["confidence"], checks["correct"],
        checks["weight"].astype(float), min_precision=p.min_precision, confidence_level=p.confidence,
        min_confidence=p.min_confidence, min_checked_per_class=p.min_checked_per_class, min_checked=p.min_checked,
        in_force=state.get("in_force") or None, recent=checks["recent"].astype(bool).to_numpy(),
        target_predicted=predicted, target_confidence=confidence, choose_share=p.choose_share,
        keys=checks[ITEM_ID].astype(str).tolist())
    key = hashlib.sha256(f"{cycle}|{champion_version}|{','.join(sorted(pool[ITEM_ID].astype(str)))}|"
                         f"{p.model_dump_json()}".encode()).hexdigest()[:6] if len(pool) else "empty"
    report = AutolabelReport(cycle, paused=decision.paused, reason=decision.reason, decision=_decision_dict(decision),
                             precision_low=decision.paused and bool(decision.remeasured)
                             and "fell below" in decision.reason)
    auto_index = pick_auto_rows(predicted, confidence, decision.thresholds, p.max_rows) if len(pool) else np.empty(0, int)
    if decision.thresholds and not len(auto_index):
        report.reason += (f"; no pool row reaches the thresholds (capture pools only rows below "
                          f"capture.confidence_threshold={params.capture.confidence_threshold}: raise it to 1 to "
                          "offer the confident rows)")
    free = np.ones(len(pool), dtype=bool)
    free[auto_index] = False
    held, _ = draw_holdback(confidence, holdback_size(params.select.batch_size, p.holdback_share), p.min_confidence,
                            seed=[cycle, params.select.seed], eligible=free)
    if len(auto_index):
        rows = pool.iloc[auto_index].assign(**{PREDICTED: predicted[auto_index], CONFIDENCE: confidence[auto_index]})
        report.batch_id = f"auto-c{cycle:04d}-{key}"
        _write_batch(workspace, store, report.batch_id, key, rows, AUTO_STRATEGY, AUTO, champion_version, params, decision)
        report.n_auto = len(rows)
        report.per_class = {str(k): int(v) for k, v in rows[PREDICTED].value_counts().sort_index().items()}
    if len(held):
        rows = pool.iloc[held].assign(**{CHECK_PREDICTED: predicted[held], CHECK_CONFIDENCE: confidence[held]})
        report.check_batch_id = f"check-c{cycle:04d}-{key}"
        _write_batch(workspace, store, report.check_batch_id, key, rows, CHECK_STRATEGY, "selected", champion_version,
                     params, decision)
        report.n_check = len(rows)
    if len(auto_index):  # the holdout loses what the pool lost (spent_checks)
        holdout = checks[checks["source"] == "holdout"]
        spent = spent_checks(np.zeros(len(holdout), dtype=bool), holdout["predicted"], holdout["confidence"],
                             decision.thresholds)
        state = {**state, "spent_holdout": sorted(set(state.get("spent_holdout", []))
                                                  | set(holdout[ITEM_ID][spent].astype(str)))}
    crash_point("autolabel.after_batches")
    return _finish(workspace, store, state, report)


def _finish(workspace: Workspace, store: BatchStore, state: dict, report: AutolabelReport) -> AutolabelReport:
    """The batches' items leave the pool, the thresholds go in force, the report is recorded (each step a rerun
    repeats harmlessly)."""
    taken = [store.selected_items(b)[ITEM_ID] for b in (report.batch_id, report.check_batch_id) if b]
    if taken:
        drop_from_pool(workspace, load_pool(workspace), pd.concat(taken, ignore_index=True).astype(str))
    # Paused: the next cycle chooses afresh; else the thresholds are in force and re-measured next cycle.
    write_json(state_path(workspace), {**state, "in_force": report.decision.get("thresholds", {}), "cycle": report.cycle})
    return _record(workspace, report)


def _report_of(cycle: int, written: list[BatchMeta]) -> AutolabelReport:
    """The report of a run whose batches are written (their meta keeps the decision)."""
    decision = written[0].params.get("decision", {})
    paused, reason = bool(decision.get("paused")), decision.get("reason", "")
    report = AutolabelReport(cycle, paused=paused, reason=reason, decision=decision,
                             precision_low=paused and bool(decision.get("remeasured")) and "fell below" in reason)
    for meta in written:
        if meta.strategy == AUTO_STRATEGY:
            report.batch_id, report.n_auto = meta.batch_id, meta.n_items
            report.per_class = dict(meta.params.get("per_class", {}))
        else:
            report.check_batch_id, report.n_check = meta.batch_id, meta.n_items
    return report


def _decision_dict(decision: AutolabelDecision) -> dict:
    data = decision.to_dict()
    data["classes"] = [c for c in data["classes"] if c["n_checked"]]
    return data


def _write_batch(workspace: Workspace, store: BatchStore, batch_id: str, key: str, rows: pd.DataFrame, strategy: str,
                 status: str, champion_version: str | None, params: Params, decision: AutolabelDecision) -> None:
    if store.exists(batch_id):
        return
    rows = rows.reset_index(drop=True).assign(
        rank=np.arange(1, len(rows) + 1), is_gold=False, annotators_wanted=0 if status == AUTO else 1, is_audit=False)
    write_parquet(workspace.batch_dir(batch_id) / "batch.parquet", rows)
    if status == AUTO:  # its final labels are the champion's: written before the meta marks the batch done
        write_parquet(workspace.final_labels_dir / f"{batch_id}.parquet", pd.DataFrame({
            ITEM_ID: rows[ITEM_ID].astype(str), LABEL: rows[PREDICTED].astype(str), "annotators": AUTO,
            "agreement": 1.0, "n_votes": 0}))
    store.put(BatchMeta(
        batch_id=batch_id, key=key, status=status, strategy=strategy, selector="thresholds", seed=params.select.seed,
        params={"autolabel": params.autolabel.model_dump(mode="json"), "thresholds": decision.thresholds,
                "cycle": int(batch_id.split("-c")[1][:4]), "decision": _decision_dict(decision),
                "per_class": {str(k): int(v) for k, v in rows[PREDICTED].value_counts().sort_index().items()}
                if status == AUTO else {}},
        n_items=len(rows), created_at=utc_timestamp(), champion_version=champion_version,
        vendor=AUTO if status == AUTO else None, n_labelled=len(rows) if status == AUTO else 0, cost=0.0,
        metrics={"precision": decision.precision, "lower_bound": decision.lower_bound} if status == AUTO else {},
    ))


def _record(workspace: Workspace, report: AutolabelReport) -> AutolabelReport:
    import json

    lines = [r for r in reports(workspace) if r.get("cycle") != report.cycle] + [report.to_dict()]
    write_text(report_path(workspace), "".join(json.dumps(r, default=float) + "\n" for r in lines))
    return report


def auto_batches(workspace: Workspace, store: BatchStore | None = None) -> list[BatchMeta]:
    store = store or BatchStore(workspace)
    return [m for m in store.list() if m.strategy == AUTO_STRATEGY and m.vendor == AUTO]


def status_line(workspace: Workspace) -> str:
    """For `labelloop status`: the last cycle's auto-labelling, and the auto-labels in the labelled set."""
    found = reports(workspace)
    if not found:
        return "autolabel: no run yet"
    last = AutolabelReport(**found[-1])
    total = sum(m.n_items for m in auto_batches(workspace))
    return f"cycle {last.cycle}: {last.text()}; {total} auto-labels made so far"


# -- withdrawing -------------------------------------------------------------------------------------------------
def withdraw(workspace: Workspace, cycle: int | None = None, batch_id: str | None = None,
             retry: RetryPolicy = DEFAULT_RETRY):
    """Take a cycle's (or one auto batch's) auto-labels out of the labelled set: a new data version without them,
    recorded as an exclusion (so no later dataset run adds them back; `labelloop dataset readmit` would). Human labels
    are untouched. Idempotent: a rerun finds them gone and makes no version."""
    from labelloop.adapters import versioning
    from labelloop.stages import dataset

    if (cycle is None) == (batch_id is None):
        raise ValueError("name exactly one of a cycle (--cycle N) or an auto batch (--batch ID)")
    store = BatchStore(workspace)
    batches = [m for m in auto_batches(workspace, store)
               if (batch_id is not None and m.batch_id == batch_id) or (cycle is not None and m.params.get("cycle") == cycle)]
    if not batches:
        known = ", ".join(f"{m.batch_id} (cycle {m.params.get('cycle')})" for m in auto_batches(workspace, store))
        what = f"batch {batch_id!r}" if batch_id is not None else f"cycle {cycle}"
        raise ValueError(f"no auto-labels for {what}; auto batches: {known or '(none)'}")
    repo = workspace.registry_dir
    versioning.require_production_line(repo)
    labeled = dataset.load_labeled(workspace)
    entries = dataset.exclusions(workspace)
    excluded = {e["batch_id"] for e in entries}
    wanted = {m.batch_id: sorted(store.selected_items(m.batch_id)[ITEM_ID].astype(str)) for m in batches}
    in_set = labeled["batch_id"].astype(str).isin(set(wanted))
    if not in_set.any() and set(wanted) <= excluded:
        versioning.ensure_pushed(repo, retry)
        tag = versioning.version_of(repo, workspace.labeled_path)
        return dataset.DatasetVersion(tag or "", False, len(labeled), 0, [])
    new_tag = versioning.next_data_tag(repo)
    now = utc_timestamp()
    pending = {(e["batch_id"], e["excluded_in"]) for e in entries}
    for name, ids in wanted.items():
        if name not in excluded and (name, new_tag) not in pending:
            entries.append({"batch_id": name, "item_ids": ids, "n_items": len(ids), "excluded_in": new_tag,
                            "rolled_back_to": None, "at": now, "reason": "auto-labels withdrawn"})
    dataset.write_exclusions(workspace, entries)
    kept = labeled[~in_set].reset_index(drop=True)
    write_parquet(workspace.labeled_path, kept)
    this = [e for e in entries if e["excluded_in"] == new_tag]
    dataset.write_card(workspace, kept, excluded=this)
    message = (f"Withdraw auto-labels of {', '.join(f'{b} ({len(i)} items)' for b, i in sorted(wanted.items()))}"
               f" ({len(kept)} rows)")
    tag, created = versioning.commit_version(repo, [workspace.labeled_path], message, tag=new_tag, retry=retry)
    return dataset.DatasetVersion(tag, created, len(kept), 0, [], [], dataset.exclusion_summaries(this))
