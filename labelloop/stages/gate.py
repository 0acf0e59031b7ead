"""Stop rules on a workspace: evaluated after every cycle, reported with the cycle, optionally obeyed.

`labelloop.domain.stop_rules` holds the pure rules over a history; this module feeds them a workspace's
history: labels and the champion's `gate.primary_metric` per cycle (from `reports/cycles.json`), and
for stabilising predictions, each newly trained model's predictions on a fixed unlabelled stop set.
The stop set is drawn once from the prediction log (features only, `gate.stop.stop_set_size` rows,
seeded) and kept in `state/stop_set.parquet`, so every later model is compared on the same rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.config import GateParams, StopParams
from labelloop.core.io import read_parquet, write_parquet
from labelloop.apps.reports import CycleRecord, load_history
from labelloop.domain.stop_rules import CycleRecord as StopCycle
from labelloop.domain.stop_rules import StopReport, StopRules, evaluate_stop_rules
from labelloop.workspace import Workspace


def rules_from_params(params: StopParams) -> StopRules:
    return StopRules(label_budget=params.label_budget, target_metric=params.target_metric,
                     plateau_gain_per_100=params.plateau_gain_per_100, plateau_cycles=params.plateau_cycles,
                     stable_agreement=params.stable_agreement, stable_cycles=params.stable_cycles)


def stop_set_path(workspace: Workspace) -> Path:
    return workspace.state_dir / "stop_set.parquet"


def predictions_path(workspace: Workspace, cycle: int) -> Path:
    return workspace.reports_dir / "stop_set" / f"cycle-{cycle:04d}.parquet"


def stop_set(workspace: Workspace, size: int, seed: int = 0) -> pd.DataFrame:
    """The fixed unlabelled stop set (drawn once from the prediction log; empty while the log is)."""
    path = stop_set_path(workspace)
    if path.exists():
        return read_parquet(path)
    from labelloop.stages.production import list_log_parts

    features = workspace.schema().feature_columns
    parts = list_log_parts(workspace)
    if not parts:
        return pd.DataFrame(columns=["prediction_id", *features])
    from labelloop.prediction_log import normalise_text

    frames = []
    for part in parts:
        try:
            frame = read_parquet(part)
        except (OSError, ValueError):  # a part still being written, or broken: capture retries or quarantines it
            continue
        if {"prediction_id", *features} <= set(frame.columns):
            frames.append(frame[["prediction_id", *features]].assign(prediction_id=lambda f: normalise_text(f["prediction_id"])))
    if not frames:
        return pd.DataFrame(columns=["prediction_id", *features])
    log = pd.concat(frames, ignore_index=True).dropna(subset=["prediction_id"]).drop_duplicates("prediction_id")
    values = log[features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    log = log[np.isfinite(values).all(axis=1)]  # rows capture would quarantine
    chosen = log.sample(n=min(size, len(log)), random_state=seed).sort_values("prediction_id").reset_index(drop=True)
    write_parquet(path, chosen)
    return chosen


def record_stop_set_predictions(workspace: Workspace, cycle: int, model, size: int) -> Path | None:
    """Predictions of the model trained in `cycle` on the stop set (written once per cycle)."""
    rows = stop_set(workspace, size)
    if rows.empty:
        return None
    path = predictions_path(workspace, cycle)
    if not path.exists():
        predicted = model.predict(rows[workspace.schema().feature_columns])
        write_parquet(path, pd.DataFrame({"prediction_id": rows["prediction_id"], "predicted": np.asarray(predicted).astype(str)}))
    return path


def _metric(record: CycleRecord, primary_metric: str) -> float | None:
    if record.primary_metric is not None:
        return record.primary_metric
    return {"accuracy": record.champion_accuracy, "macro_f1": record.champion_macro_f1}.get(primary_metric)


def evaluate_history(workspace: Workspace, records: list[CycleRecord], gate: GateParams) -> StopReport:
    """Every stop rule over these cycles (oldest first), with the rules as `gate.stop` says now.

    Only cycles that trained a model have stop-set predictions, so stability compares consecutive models.
    """
    history = []
    for record in records:
        metric = _metric(record, gate.primary_metric)
        if record.cycle == 0 or metric is None:
            continue  # the seed model is not a cycle of the loop
        path = predictions_path(workspace, record.cycle)
        predictions = read_parquet(path)["predicted"].to_numpy() if path.exists() else None
        history.append(StopCycle(n_labels=record.labels, metric=float(metric), stop_set_predictions=predictions))
    return evaluate_stop_rules(history, rules_from_params(gate.stop))


def evaluate(workspace: Workspace, current: CycleRecord, gate: GateParams) -> StopReport:
    """The rules after `current` (a cycle not yet appended to the history)."""
    records = [r for r in load_history(workspace) if r.cycle != current.cycle]
    return evaluate_history(workspace, [*records, current], gate)


def halted(workspace: Workspace, gate: GateParams) -> StopReport | None:
    """With `gate.stop.halt`, the report that stops this cycle from buying labels; None to go on.

    Re-evaluated with the current rules, so raising a budget (or turning a rule off) resumes the loop.
    """
    if not gate.stop.halt:
        return None
    report = evaluate_history(workspace, load_history(workspace), gate)
    return report if report.stop else None
