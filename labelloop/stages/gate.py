"""The gate stage: judge the challenger against the champion, record the decision, move the alias;
roll the champion back, finish a gate a crash interrupted; and the stop rules (`gate.stop`), evaluated
after every cycle, reported with it, optionally obeyed.

The decision itself is pure (`labelloop.domain.gate.decide`); this module reads the metrics it needs
from the registry, predicts the holdout rows with both models for the paired test (`holdout_rows`; each
version's holdout probabilities are kept in `state/gate/`, keyed by model, version, run and holdout
digest, so a cycle predicts only its new challenger), records in the registry what it decided, and
every move of `champion` in the champion history (`labelloop.adapters.tracking`).

Stop rules on a workspace: `labelloop.domain.stop_rules` holds the pure rules over a history; this
module feeds them a workspace's history: labels and the champion's `gate.primary_metric` per cycle
(from the cycle history, `labelloop.history`), and for stabilising predictions, each newly trained
model's predictions on a fixed unlabelled stop set. The stop set is drawn once from the prediction
log (features only, `gate.stop.stop_set_size` rows, seeded) and kept in `state/stop_set.parquet`, so
every later model is compared on the same rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelloop.adapters import tracking
from labelloop.columns import ITEM_ID, LABEL, PREDICTED, PREDICTION_ID
from labelloop.config import GateParams, StopParams
from labelloop.core.faults import crash_point
from labelloop.core.io import read_parquet, write_parquet
from labelloop.domain.cycle import CycleRecord
from labelloop.domain.gate import GateDecision, ModelMetrics, PairedRows, SeedTwins, decide
from labelloop.domain.stop_rules import StopReport, StopRules, evaluate_stop_rules
from labelloop.history import load_history
from labelloop.schema import invalid_rows
from labelloop.workspace import Workspace


@tracking.server_faults("evaluating the gate")
def evaluate_gate(workspace: Workspace, model_name: str, rules: GateParams,
                  segment_columns: Sequence[str] = ()) -> GateDecision:
    """The decision for the current challenger against the current champion (pure once metrics are read);
    `segment_columns` (the segment monitor's, labelloop/stages/monitor.py) group the audit rows for the
    per-segment guard."""
    challenger_version = tracking.alias_version(workspace, model_name, tracking.CHALLENGER)
    if challenger_version is None:
        raise RuntimeError(f"model {model_name!r} has no '{tracking.CHALLENGER}' version to gate; run the train stage first")
    champion_version = tracking.alias_version(workspace, model_name, tracking.CHAMPION)
    challenger = tracking.model_metrics(workspace, model_name, challenger_version)
    recorded = tracking.client(workspace).get_model_version(model_name, challenger_version).tags
    changed = rules_changed(recorded.get("gate.rules"), rules)
    if champion_version == challenger_version:
        # A rerun after promotion: the serving champion is not re-judged; say so, and what changed.
        reasons = [(f"version {challenger_version} is already champion; its recorded decision stands "
                    f"({recorded.get('gate.decision', 'promote')}: {recorded.get('gate.reasons', 'no reasons recorded')})")]
        if changed:
            reasons.append(f"gate rules changed since that decision ({changed}); they apply to the next challenger — "
                           "to undo this promotion use `labelloop model rollback`")
        value = challenger.metrics[rules.primary_metric]
        return GateDecision(recorded.get("gate.decision", "promote") == "promote", reasons, rules.primary_metric, value, value,
                            challenger_version, champion_version)
    champion = tracking.model_metrics(workspace, model_name, champion_version) if champion_version else None
    paired: list[PairedRows] = []
    audit: PairedRows | None = None
    twins: SeedTwins | None = None
    notes: list[str] = []
    if champion is not None and champion_version is not None:
        challenger = ModelMetrics(challenger.version, challenger.metrics, challenger.class_recall, challenger.holdout_digest,
                                  new_labels=challenger.new_labels - champion.new_labels)
        if rules.min_confidence > 0:
            try:
                paired.append(holdout_rows(workspace, model_name, challenger_version, champion_version))
                twins, twin_notes = challenger_twins(workspace, model_name, recorded, paired[0], rules)
                notes += twin_notes
                if rules.audit_guard:
                    audit = audit_paired_rows(workspace, model_name, challenger_version, champion_version,
                                              segment_columns)
            except tracking.IncompatibleModel as error:  # a champion stored by an older labelloop: no per-row predictions
                notes.append(f"no paired test: {error}")
    decision = decide(challenger, champion, rules, paired, audit, twins=twins)
    if notes:
        decision = dataclasses.replace(decision, reasons=[*decision.reasons, *notes])
    if "gate.decision" in recorded:
        note = (f"re-decided under changed gate rules ({changed}); was {recorded['gate.decision']}" if changed
                else f"re-decided with the same rules; was {recorded['gate.decision']}")
        decision = dataclasses.replace(decision, reasons=[*decision.reasons, note])
    return decision


# -- the paired test's rows: both models' holdout probabilities ---------------------------------------

def challenger_twins(workspace: Workspace, model_name: str, version_tags: dict[str, str], rows: PairedRows,
                     rules: GateParams) -> tuple[SeedTwins | None, list[str]]:
    """The challenger's seed twins the train stage kept (`labelloop.stages.train.ensure_seed_twins`, keyed by the
    version's data_tag and params_hash and the holdout), on `rows`; None with `gate.seed_twins` 0 or none kept (a
    deterministic estimator), and a note when the kept ones belong to another fit of the challenger."""
    if rules.seed_twins == 0 or "data_tag" not in version_tags or "params_hash" not in version_tags:
        return None, []
    from labelloop.stages.train import file_digest, read_seed_twins, seed_twins_path

    path = seed_twins_path(workspace, model_name, version_tags["data_tag"], version_tags["params_hash"],
                           file_digest(workspace.holdout_path))
    blocks = read_seed_twins(path, read_parquet(workspace.holdout_path), workspace.schema())
    if len(blocks) < 2:
        return None, []
    if np.shape(blocks[0][1]) != np.shape(rows.challenger_proba) or not np.allclose(blocks[0][1], rows.challenger_proba,
                                                                                      rtol=0, atol=1e-9):
        return None, [f"seed twins in {path.name} were fitted beside another fit of this challenger: not used"]
    return SeedTwins(tuple(seed for seed, _ in blocks), (rows.challenger_proba, *(proba for _, proba in blocks[1:]))), []


def holdout_rows(workspace: Workspace, model_name: str, challenger_version: str, champion_version: str) -> PairedRows:
    """The holdout's true classes and both versions' probabilities on its rows, for the paired test."""
    holdout = read_parquet(workspace.holdout_path)
    schema = workspace.schema()
    index = {name: i for i, name in enumerate(schema.class_names)}
    labels = holdout[LABEL].astype(str)
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"holdout labels outside the label set {schema.class_names}: {unknown[:10]}")
    digest = hashlib.sha256(workspace.holdout_path.read_bytes()).hexdigest()[:16]
    probas = {version: holdout_proba(workspace, model_name, version, holdout, digest)
              for version in (challenger_version, champion_version)}
    prune_holdout_predictions(workspace, model_name, keep={challenger_version, champion_version})
    return PairedRows("holdout", labels.map(index).to_numpy(dtype=np.int64), probas[challenger_version],
                      probas[champion_version])


def audit_paired_rows(workspace: Workspace, model_name: str, challenger_version: str,
                      champion_version: str, segment_columns: Sequence[str] = ()) -> PairedRows | None:
    """The audit items neither version trained on, their true classes, both versions' probabilities, the
    items' inverse sampling probabilities as weights and their segments of `segment_columns` (named as the
    segment monitor names them) — the gate's audit guards; None without such items."""
    from labelloop.domain.segments import segment_labels
    from labelloop.stages.audit import AUDIT_WEIGHT, untrained_audit_items

    items = untrained_audit_items(workspace, model_name, [challenger_version, champion_version])
    schema = workspace.schema()
    index = {name: i for i, name in enumerate(schema.class_names)}
    items = items[items[LABEL].astype(str).isin(index)] if len(items) else items
    if items.empty:
        return None
    probas = []
    for version in (challenger_version, champion_version):
        model = tracking.load_model(workspace, model_name, str(version))
        probas.append(np.asarray(model.predict_proba(items[schema.feature_columns]), dtype=np.float64))
    weights = pd.to_numeric(items[AUDIT_WEIGHT], errors="coerce").fillna(1.0).to_numpy(dtype=np.float64)
    missing = [column for column in segment_columns if column not in items.columns]
    if missing:
        raise ValueError(f"segment columns {missing} (monitor.segments, else select.group_column) are not columns of "
                         f"the audit set; allowed: {', '.join(schema.stored_columns)}")
    return PairedRows("audit", items[LABEL].astype(str).map(index).to_numpy(dtype=np.int64), probas[0], probas[1],
                      weights, tuple(schema.class_names),
                      {column: segment_labels(items[column]) for column in segment_columns})


def _cache_prefix(model_name: str) -> str:
    return "holdout-" + hashlib.sha256(model_name.encode("utf-8")).hexdigest()[:12]


def holdout_predictions_path(workspace: Workspace, model_name: str, version: str, run_id: str, digest: str) -> Path:
    """Where one version's holdout probabilities are kept: keyed by model, version, its run and the holdout."""
    return workspace.state_dir / "gate" / f"{_cache_prefix(model_name)}-v{version}-{run_id[:12]}-{digest}.parquet"


def holdout_proba(workspace: Workspace, model_name: str, version: str, holdout: pd.DataFrame, digest: str) -> np.ndarray:
    """`version`'s class probabilities on the holdout rows: read from its cached file, else predicted and kept."""
    schema = workspace.schema()
    run_id = tracking.client(workspace).get_model_version(model_name, version).run_id
    path = holdout_predictions_path(workspace, model_name, str(version), run_id, digest)
    columns = schema.proba_columns
    if path.exists():
        try:
            cached = read_parquet(path)
        except (OSError, ValueError):  # a damaged cache is predicted again
            cached = None
        if (cached is not None and list(cached.columns) == [ITEM_ID, *columns]
                and cached[ITEM_ID].astype(str).tolist() == holdout[ITEM_ID].astype(str).tolist()):
            return cached[columns].to_numpy(dtype=np.float64)
    model = tracking.load_model(workspace, model_name, str(version))
    proba = np.asarray(model.predict_proba(holdout[schema.feature_columns]), dtype=np.float64)
    if proba.shape != (len(holdout), len(columns)):
        raise ValueError(f"model {model_name!r} version {version} gave probabilities of shape {proba.shape} "
                         f"on {len(holdout)} holdout rows and {len(columns)} classes")
    frame = pd.DataFrame(proba, columns=columns)
    frame.insert(0, ITEM_ID, holdout[ITEM_ID].astype(str).to_numpy())
    write_parquet(path, frame)
    return proba


def prune_holdout_predictions(workspace: Workspace, model_name: str, keep: set[str]) -> None:
    """Drop the kept holdout probabilities of this model's versions other than `keep` (champion, challenger)."""
    folder = workspace.state_dir / "gate"
    prefix = _cache_prefix(model_name)
    for path in folder.glob(f"{prefix}-v*.parquet"):
        version = path.name[len(prefix) + 2:].split("-", 1)[0]
        if version not in keep:
            path.unlink(missing_ok=True)


def rules_changed(recorded_json: str | None, rules: GateParams) -> str:
    """'' when `rules` equal the recorded ones (or none were recorded), else 'key old → new, ...'."""
    if not recorded_json:
        return ""
    try:
        recorded = json.loads(recorded_json)
    except json.JSONDecodeError:
        return ""
    current = rules.model_dump(mode="json")
    return ", ".join(f"{key} {recorded.get(key)!r} → {value!r}" for key, value in current.items() if recorded.get(key) != value)


@tracking.server_faults("recording the gate decision")
def record_decision(workspace: Workspace, model_name: str, decision: GateDecision, rules: GateParams | None = None) -> None:
    """Tags on the challenger's run and model version: decision, every reason, the champion it faced,
    the paired test's evidence per row set (`gate.evidence`, JSON), and the rules it was judged by (so a
    rerun with other rules can say what changed); the decision and reasons also in the version's description."""
    mlflow_client = tracking.client(workspace)
    model_version = mlflow_client.get_model_version(model_name, decision.challenger_version)
    tags: dict[str, Any] = {
        "gate.decision": decision.label,
        "gate.reasons": " | ".join(decision.reasons),
        "gate.primary_metric": decision.primary_metric,
        "gate.champion_version": str(decision.champion_version),
    }
    if decision.evidence:
        tags["gate.evidence"] = json.dumps([dataclasses.asdict(e) for e in decision.evidence], sort_keys=True)
    if rules is not None:
        tags["gate.rules"] = json.dumps(rules.model_dump(mode="json"), sort_keys=True)
    for key, value in tags.items():
        mlflow_client.set_tag(model_version.run_id, key, value)
        mlflow_client.set_model_version_tag(model_name, decision.challenger_version, key, value)
    tracking.describe_gate_decision(workspace, model_name, decision)  # the version's description says it too
    crash_point("gate.after_record")


@tracking.server_faults("moving the champion alias")
def promote(workspace: Workspace, model_name: str, version: str, reason: str = "", by: str = "gate") -> str | None:
    """Move `champion` to `version`; the version it leaves keeps `previous-champion`; the change is
    appended to the champion history (`by`: gate, rollback or resume). Idempotent: a rerun after the
    alias moved only writes the history record a crash may have left unwritten."""
    if by not in tracking.MOVED_BY:
        raise ValueError(f"unknown champion change {by!r}; allowed: {', '.join(tracking.MOVED_BY)}")
    version = str(version)
    mlflow_client = tracking.client(workspace)
    # Read before the move, so the move is not taken for an unrecorded one.
    history = tracking.champion_history(workspace, model_name)
    current = tracking.alias_version(workspace, model_name, tracking.CHAMPION)
    if current == version:
        if history and history[-1].version == version and history[-1].by == "unrecorded":
            replaced = history[-1].replaced
            tracking.write_champion_changes(
                workspace, model_name, history[:-1],
                [tracking.new_champion_change(workspace, model_name, version, by, reason or "resumed", replaced)])
        return current
    if current is not None:
        mlflow_client.set_registered_model_alias(model_name, tracking.PREVIOUS, current)
        crash_point("gate.after_previous")
    mlflow_client.set_registered_model_alias(model_name, tracking.CHAMPION, version)
    if reason:
        because = f"rollback: {reason}" if by == "rollback" else reason
        mlflow_client.set_model_version_tag(model_name, version, "promoted_because", because[:5000])
    crash_point("gate.after_champion")
    tracking.write_champion_changes(workspace, model_name, history,
                                    [tracking.new_champion_change(workspace, model_name, version, by, reason, current)])
    return current


@tracking.server_faults("resuming the gate")
def resume_gate(workspace: Workspace, model_name: str) -> str | None:
    """Finish a gate a crash interrupted: the challenger's recorded decision is `promote` but it is
    not champion, or it is champion but its history record was never written. A version a rollback
    demoted is left alone. Returns the version promoted."""
    challenger = tracking.alias_version(workspace, model_name, tracking.CHALLENGER)
    if challenger is None:
        return None
    tags = tracking.client(workspace).get_model_version(model_name, challenger).tags
    # The reasons as the gate stage passes them to promote ("; "-joined; the tag joins them with " | ").
    reason = tags.get("gate.reasons", "resumed after an interrupted gate").replace(" | ", "; ")
    if challenger == tracking.alias_version(workspace, model_name, tracking.CHAMPION):
        history = tracking.champion_history(workspace, model_name)
        if tags.get("gate.decision") == "promote" and history and history[-1].by == "unrecorded":
            promote(workspace, model_name, challenger, reason, by="resume")  # writes only the missing record
        return None
    if (tags.get("gate.decision") != "promote" or tags.get("rolled_back")
            or challenger in rolled_back(tracking.champion_history(workspace, model_name))):
        return None
    promote(workspace, model_name, challenger, reason, by="resume")
    return challenger


def champion_line(history: list[tracking.ChampionChange]) -> list[str]:
    """The champions a rollback steps back along, oldest first; the last is the current champion.
    A rollback removes the version it demoted, and a rollback to an earlier champion removes every
    champion after it — so stepping back never returns to a rolled-back version (never forward)."""
    line: list[str] = []
    for change in history:
        if change.by == "rollback" and change.version in line:
            del line[line.index(change.version) + 1:]
            continue
        if change.by == "rollback" and line and line[-1] == change.replaced:
            line.pop()
        if change.version in line:
            line.remove(change.version)
        line.append(change.version)
    return line


def rolled_back(history: list[tracking.ChampionChange]) -> dict[str, tracking.ChampionChange]:
    """Version → the rollback that demoted it, for versions no later change made champion again."""
    demoted: dict[str, tracking.ChampionChange] = {}
    for change in history:
        demoted.pop(change.version, None)
        if change.by == "rollback" and change.replaced:
            demoted[change.replaced] = change
    return demoted


def mark_rolled_back(workspace: Workspace, model_name: str, version: str, reason: str) -> None:
    tracking.client(workspace).set_model_version_tag(model_name, str(version), "rolled_back", reason[:5000])


@tracking.server_faults("rolling back the champion")
def rollback(workspace: Workspace, model_name: str, reason: str, version: str | None = None) -> tuple[str | None, str]:
    """Make an earlier model champion again; returns (the champion it demoted, the new champion).

    Without `version`: one step back along the champion history — to the champion the current one
    replaced, skipping versions a rollback demoted — so rollback twice goes v5 → v3 → v2, never forward.
    With `version` (a number or alias): that version, which must exist. The demoted version is tagged
    `rolled_back` (the gate's resume never re-promotes it) and the reason is kept in the history."""
    history = tracking.champion_history(workspace, model_name)
    current = tracking.alias_version(workspace, model_name, tracking.CHAMPION)
    if version is None:
        if current is None:
            raise tracking.UnknownModelVersion(f"no champion to roll back: {tracking.describe_versions(workspace, model_name)}")
        line = champion_line(history)
        if len(line) < 2:
            raise tracking.UnknownModelVersion(
                f"no earlier champion to roll back to: version {current} is the first in the champion history "
                f"(`labelloop model history`); name a VERSION — {tracking.describe_versions(workspace, model_name)}")
        target = line[-2]
    else:
        target = tracking.resolve_version(workspace, model_name, version)
        if target == current:
            return current, target
    if current is not None:
        mark_rolled_back(workspace, model_name, current, reason)
    left = promote(workspace, model_name, target, reason, by="rollback")
    return left, target


# -- stop rules ----------------------------------------------------------------------------------

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
        return pd.DataFrame(columns=[PREDICTION_ID, *features])
    from labelloop.prediction_log import normalise_text

    frames = []
    for part in parts:
        try:
            frame = read_parquet(part)
        except (OSError, ValueError):  # a part still being written, or broken: capture retries or quarantines it
            continue
        if {PREDICTION_ID, *features} <= set(frame.columns):
            frames.append(frame[[PREDICTION_ID, *features]].assign(**{PREDICTION_ID: lambda f: normalise_text(f[PREDICTION_ID])}))
    if not frames:
        return pd.DataFrame(columns=[PREDICTION_ID, *features])
    log = pd.concat(frames, ignore_index=True).dropna(subset=[PREDICTION_ID]).drop_duplicates(PREDICTION_ID)
    log = log[~invalid_rows(log, workspace.schema())]  # rows capture would quarantine
    chosen = log.sample(n=min(size, len(log)), random_state=seed).sort_values(PREDICTION_ID).reset_index(drop=True)
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
        write_parquet(path, pd.DataFrame({PREDICTION_ID: rows[PREDICTION_ID], PREDICTED: np.asarray(predicted).astype(str)}))
    return path


def _metric(record: CycleRecord, primary_metric: str) -> float | None:
    if record.primary_metric is not None:
        return record.primary_metric
    return {"accuracy": record.champion_accuracy, "macro_f1": record.champion_macro_f1}.get(primary_metric)


def stop_rules_over(workspace: Workspace, records: list[CycleRecord], gate: GateParams) -> StopReport:
    """Every stop rule over these cycles (oldest first), with the rules as `gate.stop` says now.

    Only cycles that trained a model have stop-set predictions, so stability compares consecutive models.
    """
    history: list[CycleRecord] = []
    predictions: list[np.ndarray | None] = []
    for record in records:
        metric = _metric(record, gate.primary_metric)
        if record.cycle == 0 or metric is None:
            continue  # the seed model is not a cycle of the loop
        history.append(dataclasses.replace(record, primary_metric=float(metric)))
        path = predictions_path(workspace, record.cycle)
        predictions.append(read_parquet(path)[PREDICTED].to_numpy() if path.exists() else None)
    return evaluate_stop_rules(history, rules_from_params(gate.stop), predictions)


def stop_rules_after(workspace: Workspace, current: CycleRecord, gate: GateParams) -> StopReport:
    """The rules after `current` (a cycle not yet appended to the history)."""
    records = [r for r in load_history(workspace) if r.cycle != current.cycle]
    return stop_rules_over(workspace, [*records, current], gate)


def halted(workspace: Workspace, gate: GateParams) -> StopReport | None:
    """With `gate.stop.halt`, the report that stops this cycle from buying labels; None to go on.

    Re-evaluated with the current rules, so raising a budget (or turning a rule off) resumes the loop.
    """
    if not gate.stop.halt:
        return None
    report = stop_rules_over(workspace, load_history(workspace), gate)
    return report if report.stop else None


def report_stop_rules(workspace: Workspace, record: CycleRecord, gate: GateParams, model_name: str,
                      trained_version: str | None) -> CycleRecord:
    """The cycle's record with the champion's primary metric and the stop rules' report filled in
    (`trained_version`: the model this cycle trained, whose stop-set predictions are kept)."""
    if trained_version is not None:
        model = tracking.load_model(workspace, model_name, trained_version)
        record_stop_set_predictions(workspace, record.cycle, model, gate.stop.stop_set_size)
    if record.champion_version is not None:
        champion = tracking.model_metrics(workspace, model_name, record.champion_version)
        record.primary_metric = champion.metrics.get(gate.primary_metric)
    record.stop = stop_rules_after(workspace, record, gate).to_dict()
    return record
