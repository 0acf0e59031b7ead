"""The deployment gate: a pure decision over challenger and champion metrics on the same holdout."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from labelloop.config import GateParams


@dataclass(frozen=True)
class ModelMetrics:
    version: str
    metrics: dict[str, float]  # accuracy, macro_f1, log_loss, neg_log_loss, ece
    class_recall: dict[str, float] = field(default_factory=dict)
    holdout_digest: str = ""
    new_labels: int = 0  # labels added since the champion's data version


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]
    primary_metric: str
    challenger_value: float
    champion_value: float | None
    challenger_version: str
    champion_version: str | None

    @property
    def label(self) -> str:
        return "promote" if self.promote else "reject"

    def to_dict(self) -> dict:
        return asdict(self) | {"decision": self.label}


def decide(challenger: ModelMetrics, champion: ModelMetrics | None, rules: GateParams) -> GateDecision:
    """Promote only if every rule passes; every rule's outcome is a reason, passing or not."""
    metric = rules.primary_metric
    value = challenger.metrics[metric]
    if champion is None:
        return GateDecision(True, ["no champion yet: the first model becomes champion"], metric, value, None,
                            challenger.version, None)
    if champion.holdout_digest and challenger.holdout_digest and champion.holdout_digest != challenger.holdout_digest:
        raise ValueError("challenger and champion were evaluated on different holdout sets; re-evaluate the champion first")
    reasons: list[str] = []
    failed = False
    base = champion.metrics[metric]
    delta = value - base
    if delta >= rules.min_delta:
        reasons.append(f"{metric} {value:.4f} vs champion {base:.4f}: +{delta:.4f} >= min_delta {rules.min_delta}")
    else:
        failed = True
        reasons.append(f"{metric} {value:.4f} vs champion {base:.4f}: {delta:+.4f} < min_delta {rules.min_delta}")
    if challenger.new_labels < 0:
        # Trained on less data than the champion: a data rollback removed labels; judged on its metrics alone.
        reasons.append(f"{-challenger.new_labels} fewer labels than the champion's data (a data rollback): "
                       "min_new_labels does not apply")
    elif challenger.new_labels < rules.min_new_labels:
        failed = True
        reasons.append(f"only {challenger.new_labels} new labels < min_new_labels {rules.min_new_labels}")
    drops = {c: champion.class_recall[c] - r for c, r in challenger.class_recall.items() if c in champion.class_recall}
    worst = max(drops.items(), key=lambda kv: kv[1], default=(None, 0.0))
    if worst[0] is not None and worst[1] > rules.max_class_recall_drop:
        failed = True
        reasons.append(f"recall of class {worst[0]!r} drops by {worst[1]:.4f} "
                       f"> max_class_recall_drop {rules.max_class_recall_drop}")
    elif worst[0] is not None:
        reasons.append(f"largest class-recall drop {max(worst[1], 0.0):.4f} within {rules.max_class_recall_drop}")
    if "ece" in challenger.metrics and "ece" in champion.metrics:
        ece_increase = challenger.metrics["ece"] - champion.metrics["ece"]
        if ece_increase > rules.max_ece_increase:
            failed = True
            reasons.append(f"calibration error rises by {ece_increase:.4f} > max_ece_increase {rules.max_ece_increase}")
    return GateDecision(not failed, reasons, metric, value, base, challenger.version, champion.version)
