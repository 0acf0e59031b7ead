from prefect import task

from labelloop.adapters import tracking
from labelloop.config import GateParams
from labelloop.domain.gate import GateDecision
from labelloop.workspace import Workspace


@task(name="gate-decide")
def decide(workspace: str, model_name: str, rules: GateParams) -> GateDecision:
    """Challenger vs champion on the same holdout: the pure decision, with its reasons."""
    return tracking.evaluate_gate(Workspace.at(workspace), model_name, rules)


@task(name="gate-record", retries=2, retry_delay_seconds=[2, 10])
def record(workspace: str, model_name: str, decision: GateDecision, rules: GateParams | None = None) -> None:
    tracking.record_decision(Workspace.at(workspace), model_name, decision, rules)


@task(name="move-champion-alias", retries=2, retry_delay_seconds=[2, 10])
def promote(workspace: str, model_name: str, decision: GateDecision) -> str | None:
    """Move `champion` to the challenger; the old champion keeps `previous-champion`."""
    return tracking.promote(Workspace.at(workspace), model_name, decision.challenger_version, "; ".join(decision.reasons))
