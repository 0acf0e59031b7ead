"""The parent flow: one turn of the active-learning loop, chaining the stages as tasks of its run."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

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
from labelloop.core.lock import workspace_lock
from labelloop.domain.cycle import CycleRecord
from labelloop.domain.gate import GateDecision
from labelloop.flows.stages import (
    DEFAULT_WORKSPACE,
    capture_stage,
    dataset_stage,
    export_stage,
    gate_stage,
    import_stage,
    production_stage,
    resolve,
    select_stage,
    train_stage,
)
from labelloop.tasks import autolabel as autolabel_tasks
from labelloop.tasks import cycle as cycle_tasks
from labelloop.tasks import gate as gate_tasks
from labelloop.tasks import train as train_tasks


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
    # The stages run as tasks of this run, each named after its stage with its logs and artifacts (a flow
    # run per stage cost ~0.4 s each); each stays a flow and a deployment of its own to rerun alone.
    with workspace_lock(ws):
        start = cycle_tasks.start_cycle(root, p.train.model_name)
        if start.champion_version is None:
            logger.info("no champion yet: training the first model on the seed set")
            seeded = train_stage(root, p.train, resolved=p)
            seed_decision = gate_stage(root, p.gate, resolved=p, expected_challenger=seeded.version)
            cycle_tasks.record_seed(root, p, seeded.data_tag, seeded.version, seed_decision.label)
        else:
            if start.resumed_gate:
                logger.warning(f"finished an interrupted gate: version {start.resumed_gate} is champion as its "
                               "recorded decision says")
            completed = complete_interrupted_version(root, p)
            if completed is not None:
                logger.warning(f"first completed {completed.data_tag} (made by a rollback or an interrupted run, not yet "
                               f"trained, gated or recorded): {completed.line()}")
        production_stage(root, p.production, resolved=p)
        captured = capture_stage(root, p.capture, resolved=p)
        halt = gate_tasks.stop_halt(root, p.gate)
        batch_id = None
        if halt is None:
            batch_id = select_stage(root, p.select, resolved=p)
            if p.autolabel.enabled:  # confident pool rows labelled by the champion; check items exported below
                logger.info(autolabel_tasks.run_autolabel(root, p)["reason"])
            export_stage(root, p.export, resolved=p)
        else:  # labels already bought are still imported, versioned and trained on below
            logger.warning(f"stop rules fired ({'; '.join(halt.reasons)}) and gate.stop.halt is true: "
                           "nothing selected or exported this cycle; change gate.stop to resume")
        imports = import_stage(root, p.import_, resolved=p)
        version = dataset_stage(root, resolved=p)
        decision: GateDecision | None = None
        trained_version = None
        if version.created or train_tasks.needs_retrain(root, p.train, version.tag):
            trained_version = train_stage(root, p.train, resolved=p).version
            decision = gate_stage(root, p.gate, resolved=p, expected_challenger=trained_version)
        record = cycle_tasks.close_cycle(root, p, version.tag, version.n_rows, version.n_new,
                                         decision.label if decision is not None else "no-new-data", batch_id,
                                         captured.lost_text() or None, trained_version)
        # The parent run's own artifact: what this turn bought, got back, versioned and decided, in one place.
        summary = cycle_tasks.summarise(root, p.train.model_name, record, batch_id, imports, version, decision,
                                        flow_run.ui_url)
        create_markdown_artifact(key="cycle", markdown=summary, description=record.line())
        logger.info(record.line())
        return record


def complete_interrupted_version(root: str, p: Params) -> CycleRecord | None:
    """Finish the data version a killed cycle (or a rollback) left behind: the labelled set is a tagged
    version with no history row — train and gate it if no model for it was decided, then record it — so
    the history keeps one row per data version and the stop rules and learning curve lose no point."""
    pending = cycle_tasks.pending_version(root, p)
    if pending is None:
        return None
    trained_version = None
    decision = pending.decision
    if pending.needs_training or decision is None:
        trained_version = train_stage(root, p.train, resolved=p).version
        decision = gate_stage(root, p.gate, resolved=p, expected_challenger=trained_version).label
    return cycle_tasks.record_pending(root, p, pending, decision, trained_version)
