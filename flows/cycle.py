"""The parent flow: one turn of the active-learning loop, chaining the stage flows."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.stages import (
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
from labelloop import stopping, tracking
from labelloop.config import (
    CaptureParams,
    ExportParams,
    GateParams,
    ImportParams,
    ProductionParams,
    SelectParams,
    TrainParams,
)
from labelloop.lock import workspace_lock
from labelloop.reports import CycleRecord, append_history, label_spend, load_history
from tasks.stop import evaluate_stop_rules


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

    A section given here overrides the workspace's `params.yaml` for this run only. The workspace
    lock makes a second cycle started at the same time fail fast instead of interleaving writes.
    """
    logger = get_run_logger()
    ws, p = resolve(workspace, production=production, capture=capture, select=select, export=export,
                    import_=import_, train=train, gate=gate)
    root = str(ws.root)
    with workspace_lock(ws):
        model_name = p.train.model_name
        if tracking.alias_version(ws, model_name, tracking.CHAMPION) is None:
            logger.info("no champion yet: training the first model on the seed set")
            seeded = train_flow(root, p.train)
            gate_flow(root, p.gate)
            seed_metrics = seeded.metrics
            append_history(ws, CycleRecord(
                cycle=0, labels=int(tracking.model_metrics(ws, model_name, seeded.version).new_labels), data_tag=seeded.data_tag,
                champion_version=seeded.version, champion_accuracy=seed_metrics.get("accuracy"),
                champion_macro_f1=seed_metrics.get("macro_f1"), decision="promote", batch_id=None, new_labels=0,
            ))
        else:
            resumed = tracking.resume_gate(ws, model_name)
            if resumed:
                logger.warning(f"finished an interrupted gate: version {resumed} is champion as its recorded decision says")
        production_flow(root, p.production)
        capture_flow(root, p.capture)
        halt = stopping.halted(ws, p.gate)
        batch_id = None
        if halt is None:
            batch_id = select_flow(root, p.select)
            export_flow(root, p.export)
        else:  # labels already bought are still imported, versioned and trained on below
            logger.warning(f"stop rules fired ({'; '.join(halt.reasons)}) and gate.stop.halt is true: "
                           "nothing selected or exported this cycle; change gate.stop to resume")
        import_flow(root, p.import_)
        version = dataset_flow(root)
        decision_label = "no-new-data"
        trained_version = None
        if version.created or tracking.needs_retrain(ws, p.train, version.tag):
            trained_version = train_flow(root, p.train).version
            decision_label = gate_flow(root, p.gate).label
        champion = tracking.alias_version(ws, model_name, tracking.CHAMPION)
        metrics = tracking.model_metrics(ws, model_name, champion).metrics if champion else {}
        cost, cost_per_point = label_spend(ws, metrics.get("accuracy"))
        record = CycleRecord(
            cycle=max([r.cycle for r in load_history(ws)], default=0) + 1, labels=version.n_rows, data_tag=version.tag, champion_version=champion,
            champion_accuracy=metrics.get("accuracy"), champion_macro_f1=metrics.get("macro_f1"),
            decision=decision_label, batch_id=batch_id, new_labels=version.n_new, cost=cost, cost_per_point=cost_per_point,
        )
        record = evaluate_stop_rules(root, record, p.gate, model_name, trained_version)
        append_history(ws, record)
        logger.info(record.line())
        return record
