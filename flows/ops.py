"""Operational flows for scheduled deployments (the stage flows themselves live in flows/stages.py)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from labelloop.config import GateParams, TrainParams
from labelloop.core.lock import workspace_lock
from labelloop.flows.stages import DEFAULT_WORKSPACE, dataset_stage, gate_stage, resolve, train_stage


@flow(name="retrain")
def retrain_flow(workspace: str = DEFAULT_WORKSPACE, train: TrainParams | None = None,
                 gate: GateParams | None = None) -> dict:
    """dataset → retrain → gate, only when new labels arrived.

    Run by its deployment trigger when a stand-alone import lands labels (`labelloop.labels.imported`,
    flows/deploy.py), or by hand: when the dataset stage makes no new version and a challenger for
    the current data version already exists, nothing is trained and nothing is gated. The params are
    resolved once and the workspace lock is held throughout, like a cycle; the stages are tasks of this run.
    """
    logger = get_run_logger()
    ws, p = resolve(workspace, train=train, gate=gate)
    with workspace_lock(ws):
        version = dataset_stage(workspace, resolved=p)
        result = train_stage(workspace, p.train, resolved=p)
        if not version.created and not result.created:
            logger.info(f"no new labels since {version.tag}: model v{result.version} already trained on it, gate skipped")
            return {"data_tag": version.tag, "retrained": False, "decision": None, "version": result.version}
        decision = gate_stage(workspace, p.gate, resolved=p, expected_challenger=result.version)
        logger.info(f"{version.tag}: challenger v{result.version} → {decision.label}")
        return {"data_tag": version.tag, "retrained": True, "decision": decision.label, "version": result.version}
