"""The parent flow: one turn of the active-learning loop, chaining the stage flows."""

from __future__ import annotations

from prefect import flow, get_run_logger

from labelloop.flows.stages import (
    DEFAULT_WORKSPACE,
    capture_flow,
    dataset_flow,
    export_flow,
    gate_flow,
    import_flow,
    production_flow,
    resolve,
    select_flow,
    train_flow,
)
from labelloop.stages import gate as stopping
from labelloop.adapters import tracking
from labelloop.adapters import versioning
from labelloop.batches import BatchStore
from labelloop.config import (
    CaptureParams,
    ExportParams,
    GateParams,
    ImportParams,
    Params,
    ProductionParams,
    SelectParams,
    TrainParams,
)
from labelloop.core.io import read_parquet
from labelloop.core.lock import workspace_lock
from labelloop.apps.reports import CycleRecord, append_history, label_spend, load_history
from labelloop.workspace import Workspace
from labelloop.tasks.stop import evaluate_stop_rules


@flow(name="active_learning_cycle")
def active_learning_cycle(
    workspace: str = DEFAULT_WORKSPACE,
    production: ProductionParams | None = None,
    capture: CaptureParams | None = None,
    select: SelectParams | None = None,
    export: ExportParams | None = None,
    import_: ImportParams | None = None,
    train: TrainParams | None = None,
    gate: GateParams | None = None,
) -> CycleRecord:
    """production → capture → select → export → import → dataset → retrain → gate.

    A section given here overrides the workspace's `params.yaml` for this run only; the params are
    resolved once and every stage of the run gets exactly them. The workspace lock makes a second run
    started at the same time fail fast instead of interleaving writes.
    """
    logger = get_run_logger()
    ws, p = resolve(workspace, production=production, capture=capture, select=select, export=export,
                    import_=import_, train=train, gate=gate)
    root = str(ws.root)
    with workspace_lock(ws):
        versioning.recover_registry(ws.registry_dir)  # the lock proves no other labelloop process runs here
        versioning.require_production_line(ws.registry_dir)  # before any write: an experiment never reaches production
        model_name = p.train.model_name
        if tracking.alias_version(ws, model_name, tracking.CHAMPION) is None:
            logger.info("no champion yet: training the first model on the seed set")
            seeded = train_flow(root, p.train, resolved=p)
            decision = gate_flow(root, p.gate, resolved=p, expected_challenger=seeded.version)
            if seeded.data_tag not in {r.data_tag for r in load_history(ws)}:
                labels = int(tracking.model_metrics(ws, model_name, seeded.version).new_labels)
                append_history(ws, _cycle_record(ws, p, seeded.data_tag, labels, 0, decision.label, None))
        else:
            resumed = tracking.resume_gate(ws, model_name)
            if resumed:
                logger.warning(f"finished an interrupted gate: version {resumed} is champion as its recorded decision says")
            completed = complete_interrupted_version(ws, p)
            if completed is not None:
                logger.warning(f"first completed {completed.data_tag} (made by a rollback or an interrupted run, not yet "
                               f"trained, gated or recorded): {completed.line()}")
        production_flow(root, p.production, resolved=p)
        captured = capture_flow(root, p.capture, resolved=p)
        halt = stopping.halted(ws, p.gate)
        batch_id = None
        if halt is None:
            batch_id = select_flow(root, p.select, resolved=p)
            export_flow(root, p.export, resolved=p)
        else:  # labels already bought are still imported, versioned and trained on below
            logger.warning(f"stop rules fired ({'; '.join(halt.reasons)}) and gate.stop.halt is true: "
                           "nothing selected or exported this cycle; change gate.stop to resume")
        import_flow(root, p.import_, resolved=p)
        version = dataset_flow(root, resolved=p)
        decision_label = "no-new-data"
        trained_version = None
        if version.created or tracking.needs_retrain(ws, p.train, version.tag):
            trained_version = train_flow(root, p.train, resolved=p).version
            decision_label = gate_flow(root, p.gate, resolved=p, expected_challenger=trained_version).label
        record = _cycle_record(ws, p, version.tag, version.n_rows, version.n_new, decision_label, batch_id)
        record.capture_lost = captured.lost_text() or None
        record = evaluate_stop_rules(root, record, p.gate, model_name, trained_version)
        append_history(ws, record)
        logger.info(record.line())
        return record


def _cycle_record(ws: Workspace, p: Params, data_tag: str, labels: int, new_labels: int, decision: str,
                  batch_id: str | None) -> CycleRecord:
    model_name = p.train.model_name
    champion = tracking.alias_version(ws, model_name, tracking.CHAMPION)
    metrics = tracking.model_metrics(ws, model_name, champion).metrics if champion else {}
    cost, cost_per_point = label_spend(ws, metrics.get("accuracy"))
    return CycleRecord(
        cycle=max([r.cycle for r in load_history(ws)], default=-1) + 1, labels=labels, data_tag=data_tag,
        champion_version=champion, champion_accuracy=metrics.get("accuracy"), champion_macro_f1=metrics.get("macro_f1"),
        decision=decision, batch_id=batch_id, new_labels=new_labels, cost=cost, cost_per_point=cost_per_point,
    )


def complete_interrupted_version(ws: Workspace, p: Params) -> CycleRecord | None:
    """Finish the data version a killed cycle (or a rollback) left behind: the labelled set is a tagged
    version with no history row — train and gate it if no model for it was decided, then record it — so
    the history keeps one row per data version and the stop rules and learning curve lose no point."""
    tag = versioning.version_of(ws.registry_dir, ws.labeled_path)
    history = load_history(ws)
    if tag is None or tag in {r.data_tag for r in history}:
        return None
    root = str(ws.root)
    trained_version = None
    model = tracking.find_version(ws, p.train.model_name, tag, tracking.params_hash(p.train))
    if model is None or "gate.decision" not in model.tags:
        trained_version = train_flow(root, p.train, resolved=p).version
        decision = gate_flow(root, p.gate, resolved=p, expected_challenger=trained_version).label
    else:
        decision = model.tags["gate.decision"]
    labels = len(read_parquet(ws.labeled_path, columns=["item_id"]))
    previous = history[-1].labels if history else 0
    batches = [m.batch_id for m in BatchStore(ws).list() if m.versioned_in == tag]
    record = _cycle_record(ws, p, tag, labels, labels - previous, decision, batches[-1] if batches else None)
    record = evaluate_stop_rules(root, record, p.gate, p.train.model_name, trained_version)
    append_history(ws, record)
    return record
