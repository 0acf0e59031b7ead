from prefect import task

from labelloop.config import BanditParams, GateParams
from labelloop.domain.gate import GateDecision
from labelloop.domain.stop_rules import StopReport
from labelloop.stages import bandit, gate
from labelloop.tasks import events
from labelloop.tasks.environment import open_workspace


@task(name="gate-decide")
def decide(workspace: str, model_name: str, rules: GateParams, segment_columns: list[str] | None = None) -> GateDecision:
    """Challenger vs champion on the same holdout: the pure decision, with its reasons (`segment_columns`: the
    audit rows' segments for the per-segment guard)."""
    return gate.evaluate_gate(open_workspace(workspace), model_name, rules, segment_columns or ())


@task(name="gate-record", retries=2, retry_delay_seconds=[2, 10])
def record(workspace: str, model_name: str, decision: GateDecision, rules: GateParams | None = None) -> None:
    """The decision on the challenger's run and model version; a rejection also as `labelloop.gate.rejected`."""
    ws = open_workspace(workspace)
    gate.record_decision(ws, model_name, decision, rules)
    events.gate_rejected(ws, model_name, decision)


@task(name="move-champion-alias", retries=2, retry_delay_seconds=[2, 10])
def promote(workspace: str, model_name: str, decision: GateDecision) -> str | None:
    """Move `champion` to the challenger; the old champion keeps `previous-champion`."""
    return gate.promote(open_workspace(workspace), model_name, decision.challenger_version, "; ".join(decision.reasons))


@task(name="check-stop-halt")
def stop_halt(workspace: str, rules: GateParams) -> StopReport | None:
    """With `gate.stop.halt`, the fired stop rules that keep this cycle from buying labels; None to go on."""
    return gate.halted(open_workspace(workspace), rules)


@task(name="bandit-reward", retries=2, retry_delay_seconds=[2, 10])
def bandit_reward(workspace: str, model_name: str, challenger_version: str, params: BanditParams) -> str | None:
    """select.strategy auto: pay each batch the challenger trained on its audit accuracy gain (once per batch)."""
    return bandit.bandit_line(bandit.record_rewards(open_workspace(workspace), model_name, challenger_version, params))
