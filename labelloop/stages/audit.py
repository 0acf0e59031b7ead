"""The audit sample: audit items drawn uniformly at random from all captured traffic, their labels kept in an
append-only audit set, and each cycle's unbiased estimate of the champion's (and challenger's) quality on live
traffic (labelloop/domain/audit.py).

1. Capture keeps, per window, a uniform sample of at most `capture.audit_sample_rows` of ALL its rows with their
   inclusion probability π_capture = sampled / window rows (labelloop/stages/capture.py).
2. Select draws k = round(`select.audit_fraction` × batch_size) audit items uniformly from the candidates of every
   window not drawn from before ("open"), before the strategy runs and never by it: π_select = k / eligible
   candidates. Each batch row carries `is_audit`, `audit_weight` = 1 / (π_capture × π_select) and `audit_window`.
   The windows drawn from are recorded (state/audit-draws.json, before the batch is written; a rerun of the same
   batch draws the same items) and never drawn from again. Candidates already queued, labelled or in the holdout
   (an item id logged again) are not eligible.
3. The dataset stage appends every labelled audit item to the audit set (`Workspace.audit_path`, DVC-tracked and
   versioned with the labelled set), once per item (a re-import or a vendor's correction appends nothing:
   append-only), with these columns, the DATA CONTRACT other stages read:
   item_id, the schema's stored columns, label, audit_weight (float), audit_window (str), batch_id (str),
   audited_at (UTC ISO string).
4. How audit items join training without biasing an evaluation: an audit item is withheld from the labelled set
   until it has been used to evaluate (state/audit.json `evaluated`). Each cycle, after the gate, the champion —
   and the challenger trained this cycle — are evaluated on the audit items that are not in their own training
   data (the labelled set of the data version each was trained on; the ids used are recorded in
   reports/audit.jsonl); those items are then marked evaluated and join the labelled set in the next data version.
   So no model is ever evaluated on an item it trained on, a challenger and the champion are compared on the same
   fresh items, and no label is wasted: every audit label trains the models of later cycles.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.batches import BatchStore, utc_timestamp
from labelloop.columns import ITEM_ID, LABEL
from labelloop.core.io import read_json, read_json_lines, read_parquet, write_json, write_parquet, write_text
from labelloop.domain.audit import AuditEstimate, estimate
from labelloop.workspace import Workspace

AUDIT_FLAG, AUDIT_WEIGHT, AUDIT_WINDOW = "is_audit", "audit_weight", "audit_window"
AUDIT_PROBABILITY = "audit_probability"  # a candidate's capture inclusion probability (candidates files only)
AUDITED_AT = "audited_at"
AUDIT_CONFIDENCE = 0.9


def audit_columns(workspace: Workspace) -> list[str]:
    """The audit set's columns, in order (the data contract)."""
    return [ITEM_ID, *workspace.schema().stored_columns, LABEL, AUDIT_WEIGHT, AUDIT_WINDOW, "batch_id", AUDITED_AT]


def draws_path(workspace: Workspace) -> Path:
    return workspace.state_dir / "audit-draws.json"


def state_path(workspace: Workspace) -> Path:
    return workspace.state_dir / "audit.json"


def report_path(workspace: Workspace) -> Path:
    return workspace.reports_dir / "audit.jsonl"


# -- select: the audit draw ----------------------------------------------------------------------------


def open_windows(workspace: Workspace, batch_id: str) -> dict[str, dict]:
    """Capture windows select may draw from for `batch_id`: not drawn from yet, or drawn from by this same batch
    (a rerun after a crash between recording the draw and writing the batch)."""
    from labelloop.stages.capture import audit_windows

    draws = read_json(draws_path(workspace), {})
    return {w: entry for w, entry in sorted(audit_windows(workspace).items()) if draws.get(w) in (None, batch_id)}


def draw_audit_items(workspace: Workspace, k: int, batch_id: str, key: str, exclude: set[str]) -> pd.DataFrame:
    """k audit items drawn uniformly (seeded by the batch's key) from the open windows' eligible candidates, with
    is_audit, audit_weight and audit_window; the windows are recorded as drawn by `batch_id` before returning.
    An empty frame when k is 0 or nothing is open."""
    from labelloop.stages.capture import audit_candidates_path

    windows = open_windows(workspace, batch_id) if k > 0 else {}
    frames = [read_parquet(audit_candidates_path(workspace, w)) for w in windows
              if audit_candidates_path(workspace, w).exists()]
    if not frames:
        return pd.DataFrame()
    candidates = pd.concat(frames, ignore_index=True)
    candidates = candidates[~candidates[ITEM_ID].astype(str).isin(exclude)]
    candidates = candidates.drop_duplicates(ITEM_ID, keep="first").reset_index(drop=True)
    draws = read_json(draws_path(workspace), {})
    write_json(draws_path(workspace), {**draws, **dict.fromkeys(windows, batch_id)})
    if candidates.empty:
        return pd.DataFrame()
    size = min(k, len(candidates))
    rng = np.random.default_rng(int(hashlib.sha256(f"audit:{key}".encode()).hexdigest()[:16], 16))
    chosen = np.sort(rng.choice(len(candidates), size, replace=False))
    drawn = candidates.iloc[chosen].reset_index(drop=True)
    probability = drawn[AUDIT_PROBABILITY].astype(float) * (size / len(candidates))
    drawn[AUDIT_FLAG] = True
    drawn[AUDIT_WEIGHT] = 1.0 / probability
    drawn[AUDIT_WINDOW] = drawn[AUDIT_WINDOW].astype(str)
    return drawn.drop(columns=[AUDIT_PROBABILITY])


def mark_strategy_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows the strategy chose: not audit items."""
    return rows.assign(**{AUDIT_FLAG: False, AUDIT_WEIGHT: np.nan, AUDIT_WINDOW: None})


def audit_rows(items: pd.DataFrame) -> pd.DataFrame:
    """The audit items among a batch's selected rows (a missing or null flag is not audit)."""
    if AUDIT_FLAG not in items.columns:
        return items.iloc[0:0]
    return items[items[AUDIT_FLAG].map(lambda v: v is True or v is np.True_ or v == 1)]


# -- the audit set ---------------------------------------------------------------------------------------


def load_audit_set(workspace: Workspace) -> pd.DataFrame:
    if not workspace.audit_path.exists():
        return pd.DataFrame(columns=audit_columns(workspace))
    return read_parquet(workspace.audit_path)


def append_audit_items(workspace: Workspace, store: BatchStore | None = None) -> int:
    """Append every labelled audit item not yet in the audit set (its final label at that moment), time-stamped;
    returns how many. Append-only: rows already there are never changed or repeated (a re-import, a recheck that
    relabels, a rerun after a crash add nothing)."""
    store = store or BatchStore(workspace)
    current = load_audit_set(workspace)
    known = set(current[ITEM_ID].astype(str))
    columns = audit_columns(workspace)
    frames = []
    for meta in store.list():
        if meta.status not in ("imported", "partial"):
            continue
        items = audit_rows(store.selected_items(meta.batch_id))
        if items.empty:
            continue
        final = store.final_labels(meta.batch_id)
        if final.empty:
            continue
        items = items.assign(**{ITEM_ID: items[ITEM_ID].astype(str)})
        final = final.assign(**{ITEM_ID: final[ITEM_ID].astype(str)}).drop_duplicates(ITEM_ID, keep="last")
        joined = items.drop(columns=[LABEL], errors="ignore").merge(final[[ITEM_ID, LABEL]], on=ITEM_ID, how="inner")
        joined = joined[~joined[ITEM_ID].isin(known)]
        if joined.empty:
            continue
        joined["batch_id"] = meta.batch_id
        known |= set(joined[ITEM_ID])
        frames.append(joined.reindex(columns=columns[:-1]))
    if not frames:
        return 0
    new = pd.concat(frames, ignore_index=True)
    new[AUDIT_WEIGHT] = new[AUDIT_WEIGHT].astype(float)
    new[AUDIT_WINDOW] = new[AUDIT_WINDOW].astype(str)
    new[LABEL] = new[LABEL].astype(str)
    new[AUDITED_AT] = utc_timestamp()
    combined = pd.concat([current, new], ignore_index=True) if len(current) else new
    from labelloop.prediction_log import storable

    write_parquet(workspace.audit_path, storable(combined[columns]))
    return len(new)


def evaluated_ids(workspace: Workspace) -> set[str]:
    return set(read_json(state_path(workspace), {}).get("evaluated", {}))


def withheld_ids(workspace: Workspace, store: BatchStore | None = None) -> set[str]:
    """Audit items not yet used to evaluate: kept out of the labelled set until they are."""
    store = store or BatchStore(workspace)
    ids: set[str] = set()
    for meta in store.list():
        path = workspace.batch_dir(meta.batch_id) / "batch.parquet"
        if path.exists():
            ids |= set(audit_rows(read_parquet(path))[ITEM_ID].astype(str))
    return ids - evaluated_ids(workspace)


def audit_path_dirty(workspace: Workspace) -> bool:
    """The audit set exists and its content is not the one the current data version recorded."""
    from labelloop.adapters import versioning

    path = workspace.audit_path
    if not path.exists():
        return False
    if not Path(str(path) + ".dvc").exists():
        return True
    return versioning.version_of(workspace.registry_dir, path) is None


# -- the cycle's estimate ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelAudit:
    role: str  # champion | challenger
    version: str
    data_tag: str | None
    estimate: AuditEstimate | None  # None: no audit item it did not train on
    n_trained_on: int  # audit items left out because the model trained on them

    def text(self) -> str:
        if self.estimate is None:
            return f"{self.role} v{self.version}: no audit item it did not train on"
        return f"{self.role} v{self.version} {self.estimate.text()}"

    def to_dict(self) -> dict:
        return {"role": self.role, "version": self.version, "data_tag": self.data_tag, "n_trained_on": self.n_trained_on,
                "estimate": self.estimate.to_dict() if self.estimate is not None else None, "text": self.text()}


def _training_ids(workspace: Workspace, data_tag: str | None, cache: dict[str, set[str]]) -> set[str]:
    from labelloop.adapters import versioning
    from labelloop.stages.dataset import labeled_at

    if data_tag is None:
        return set()
    if data_tag not in cache:
        if versioning.version_of(workspace.registry_dir, workspace.labeled_path) == data_tag:
            frame = read_parquet(workspace.labeled_path, columns=[ITEM_ID])
        else:
            frame = labeled_at(workspace, data_tag)
        cache[data_tag] = set(frame[ITEM_ID].astype(str))
    return cache[data_tag]


def untrained_audit_items(workspace: Workspace, model_name: str, versions: list[str]) -> pd.DataFrame:
    """The labelled audit items none of `versions` trained on (the gate's paired audit rows), one row per item."""
    from labelloop.adapters import tracking

    audit = load_audit_set(workspace)
    if audit.empty:
        return audit
    cache: dict[str, set[str]] = {}
    trained: set[str] = set()
    for version in versions:
        trained |= _training_ids(workspace, tracking.client(workspace).get_model_version(model_name, str(version))
                                 .tags.get("data_tag"), cache)
    keep = ~audit[ITEM_ID].astype(str).isin(trained) & audit[LABEL].notna()
    return audit.loc[keep].drop_duplicates(ITEM_ID, keep="last").reset_index(drop=True)


def model_audit(workspace: Workspace, audit: pd.DataFrame, model_name: str, version: str, role: str,
                segment_column: str | None, cache: dict[str, set[str]]) -> tuple[ModelAudit, list[str]]:
    """`version` evaluated on the audit items not in its training data; with the item ids used."""
    from labelloop.adapters import tracking

    data_tag = tracking.client(workspace).get_model_version(model_name, version).tags.get("data_tag")
    trained = _training_ids(workspace, data_tag, cache)
    ids = audit[ITEM_ID].astype(str)
    rows = audit[~ids.isin(trained)]
    if rows.empty:
        return ModelAudit(role, str(version), data_tag, None, int(ids.isin(trained).sum())), []
    schema = workspace.schema()
    predicted = tracking.load_model(workspace, model_name, version).predict(rows[schema.feature_columns])
    segments = rows[segment_column] if segment_column and segment_column in rows.columns else None
    result = estimate(rows[LABEL].astype(str).to_numpy(), np.asarray(predicted).astype(str),
                      rows[AUDIT_WEIGHT].astype(float).to_numpy(), schema.class_names, segments, AUDIT_CONFIDENCE,
                      segment_column=segment_column if segments is not None else None)
    return ModelAudit(role, str(version), data_tag, result, int(ids.isin(trained).sum())), list(rows[ITEM_ID].astype(str))


def audit_cycle(workspace: Workspace, model_name: str, cycle: int, segment_column: str | None = None,
                challenger: str | None = None) -> list[ModelAudit]:
    """The cycle's audit estimates: the champion's and (when given and not the champion) the challenger's, each on
    the audit items it did not train on. Logs them as MLflow metrics of each version's run (step = cycle), writes
    the cycle's line of reports/audit.jsonl (a rerun replaces it), then marks every audit item of the set
    evaluated (they join the labelled set in the next data version). [] without a champion or audit items."""
    from labelloop.adapters import tracking

    audit = load_audit_set(workspace)
    champion = tracking.alias_version(workspace, model_name, tracking.CHAMPION)
    if audit.empty or champion is None:
        return []
    cache: dict[str, set[str]] = {}
    results, used = [], {}
    for role, version in (("champion", champion), ("challenger", challenger)):
        if version is None or (role == "challenger" and str(version) == str(champion)):
            continue
        result, ids = model_audit(workspace, audit, model_name, str(version), role, segment_column, cache)
        results.append(result)
        used[role] = ids
        if result.estimate is not None:
            run_id = tracking.client(workspace).get_model_version(model_name, str(version)).run_id
            log_metrics(workspace, run_id, result.estimate.metrics(), cycle)
    line = {"cycle": cycle, "at": utc_timestamp(), "items": len(audit), "models": [r.to_dict() for r in results],
            "used": used}
    kept = [r for r in read_json_lines(report_path(workspace)) if r.get("cycle") != cycle]
    write_text(report_path(workspace), "".join(json.dumps(r, sort_keys=True) + "\n" for r in [*kept, line]))
    mark_evaluated(workspace, audit[ITEM_ID].astype(str), cycle)
    return results


def mark_evaluated(workspace: Workspace, item_ids, cycle: int) -> None:
    """Record audit items as used to evaluate (by `cycle`; an item keeps its first cycle): the next data version
    takes them into the labelled set."""
    state = read_json(state_path(workspace), {})
    evaluated = dict(state.get("evaluated", {}))
    for item in item_ids:
        evaluated.setdefault(str(item), cycle)
    write_json(state_path(workspace), {**state, "evaluated": evaluated})


def log_metrics(workspace: Workspace, run_id: str, metrics: dict[str, float], step: int) -> None:
    from labelloop.adapters import tracking

    client = tracking.client(workspace)
    now = int(time.time() * 1000)
    from mlflow.entities import Metric

    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items() if np.isfinite(v)])


def audit_text(results: list[ModelAudit]) -> str | None:
    """The cycle line's audit part, e.g. 'champion v3 audit acc 0.871 [0.80, 0.92] ...; challenger v4 ...'."""
    return "; ".join(r.text() for r in results) or None


def load_report(workspace: Workspace) -> list[dict]:
    """Every cycle's audit line (reports/audit.jsonl), oldest first."""
    return read_json_lines(report_path(workspace))


def last_audit(workspace: Workspace) -> dict | None:
    lines = load_report(workspace)
    return lines[-1] if lines else None


def audit_status_line(workspace: Workspace) -> str:
    """For `labelloop status` (files only, no MLflow): the audit set's size and the last cycle's estimates."""
    rows = len(read_parquet(workspace.audit_path, columns=[ITEM_ID])) if workspace.audit_path.exists() else 0
    text = f"audit set: {rows} items"
    last = last_audit(workspace)
    if last is not None:
        text += f"; cycle {last['cycle']}: " + "; ".join(m["text"] for m in last["models"])
    return text
