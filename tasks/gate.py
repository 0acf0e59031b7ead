from prefect import task

from labelloop.config import GateParams
from labelloop.domain.gate import GateDecision
from labelloop.domain.stop_rules import StopReport
from labelloop.stages import gate
from labelloop.tasks.environment import open_workspace


@task(name="gate-decide")
def decide(workspace: str, model_name: str, rules: GateParams) -> GateDecision:
    """Challenger vs champion on the same holdout: the pure decision, with its reasons."""
    return gate.evaluate_gate(open_workspace(workspace), model_name, rules)


@task(name="gate-record", retries=2, retry_delay_seconds=[2, 10])
def record(workspace: str, model_name: str, decision: GateDecision, rules: GateParams | None = None) -> None:
    gate.record_decision(open_workspace(workspace), model_name, decision, rules)


@task(name="move-champion-alias", retries=2, retry_delay_seconds=[2, 10])
def promote(workspace: str, model_name: str, decision: GateDecision) -> str | None:
    """Move `champion` to the challenger; the old champion keeps `previous-champion`."""
    return gate.promote(open_workspace(workspace), model_name, decision.challenger_version, "; ".join(decision.reasons))


@task(name="check-stop-halt")
def stop_halt(workspace: str, rules: GateParams) -> StopReport | None:
    """With `gate.stop.halt`, the fired stop rules that keep this cycle from buying labels; None to go on."""
    return gate.halted(open_workspace(workspace), rules)
