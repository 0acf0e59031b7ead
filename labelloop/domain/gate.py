"""The deployment gate: a pure decision over challenger and champion on the same rows.

The primary metric is compared with a paired test on the rows both models predicted (`PairedRows`: the
true class and both models' probabilities per row), so a gain inside the noise of the holdout is not a
promotion:

- accuracy: McNemar's exact conditional test on the rows only one of the two models gets right (b rows
  only the challenger, c only the champion; the accuracy difference is (b − c)/n): b ~ Binomial(b + c, π).
  Against a threshold t other than 0 (`min_delta`, or −`non_inferiority_margin`) the same binomial is
  tested at π0 = (1 + t·n/(b + c))/2, the discordance rate taken as observed; at t = 0 this is McNemar.
  Bounds: Clopper-Pearson on π, mapped back. Exact, not mid-p: at 1 - min_confidence = 0.1 the mid-p
  test promotes an equally good challenger with probability 13.2% at 20 discordant rows, 11.0% at 150
  (its size swings around the level with the count); the exact test's never exceeds the level.
- macro_f1 and neg_log_loss (and accuracy on weighted rows): a paired basic bootstrap over rows (2,000
  resamples, seeded; both models scored on the same resampled rows, vectorised as resample-count
  matrices times per-row contributions): bounds and p from the resampled differences' spread around the
  observed one (`paired_bootstrap`).

`gate.mode` says what must be shown with `gate.min_confidence` (one-sided test at 1 − min_confidence):
superiority — the challenger is better by more than `min_delta`; non_inferiority — it is not worse by
`non_inferiority_margin` or more. `min_confidence: 0` turns the test off (the point difference alone).

Row sets: `decide` takes one `PairedRows` per set of rows the challenger must pass on (the holdout): an
intersection-union test, so the false-promotion rate stays at most 1 − min_confidence without correction.

The audit rows (`audit`: the audit items neither model trained on, weighted by their inverse sampling
probabilities; labelloop/stages/audit.py) are a second paired comparison on live traffic, a guardrail rather
than a second hurdle (a few dozen rows could rarely show a gain): with `gate.audit_guard` the same paired test,
against 0, is reported in the reasons, and from `gate.audit_min_rows` rows a challenger significantly worse
there — the one-sided min_confidence upper bound on its difference below 0 — is rejected. A guard only
rejects, so it cannot raise the false-promotion rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from labelloop.config import GateParams

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
MCNEMAR = "McNemar exact"
BOOTSTRAP = "paired bootstrap"
_CELLS_PER_CHUNK = 4_000_000  # resample counts held at once (resamples × rows), ~32 MB


@dataclass(frozen=True)
class ModelMetrics:
    version: str
    metrics: dict[str, float]  # accuracy, macro_f1, log_loss, neg_log_loss, ece
    class_recall: dict[str, float] = field(default_factory=dict)
    holdout_digest: str = ""
    new_labels: int = 0  # labels added since the champion's data version


@dataclass(frozen=True, eq=False)
class PairedRows:
    """One set of rows both models predicted: each row's true class (a column index of the probabilities)
    and both models' class probabilities; `weights` (e.g. inverse sampling probabilities of audit rows)
    make every metric a weighted one and the accuracy test a bootstrap."""

    name: str  # "holdout" or "audit"
    y: np.ndarray  # (n,) int
    challenger_proba: np.ndarray  # (n, k)
    champion_proba: np.ndarray  # (n, k)
    weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.y)
        for what, proba in (("challenger_proba", self.challenger_proba), ("champion_proba", self.champion_proba)):
            if np.ndim(proba) != 2 or len(proba) != n:
                raise ValueError(f"{self.name}: {what} must be (rows, classes) with {n} rows, got shape {np.shape(proba)}")
        if np.shape(self.challenger_proba)[1] != np.shape(self.champion_proba)[1]:
            raise ValueError(f"{self.name}: the two models give probabilities over different numbers of classes")
        if self.weights is not None and (np.shape(self.weights) != (n,) or np.any(np.asarray(self.weights) < 0)):
            raise ValueError(f"{self.name}: weights must be {n} non-negative numbers")


@dataclass(frozen=True)
class PairedEvidence:
    """The paired comparison on one set of rows, as the decision reads it and the registry records it.
    `difference` is challenger − champion in the metric's own direction (higher is better); `lower` and
    `upper` are each a one-sided `confidence` bound on it; `p_value` is one-sided, for H0: difference ≤
    `threshold`."""

    rows: str
    n: int
    metric: str
    test: str
    difference: float
    lower: float
    upper: float
    confidence: float
    threshold: float
    p_value: float
    passed: bool
    challenger_only: int | None = None  # McNemar: rows only the challenger gets right
    champion_only: int | None = None
    resamples: int | None = None  # bootstrap
    seed: int | None = None

    def reason(self, rules: GateParams) -> str:
        """E.g. 'McNemar exact on 1,287 holdout rows (challenger alone right on 41, champion alone on
        37): accuracy +0.0031, one-sided 90% bounds [-0.0029, +0.0091]; p=0.31 > 0.1 = 1 - min_confidence
        for a gain above min_delta 0.0 → reject'."""
        if self.test == MCNEMAR:
            test = (f"{MCNEMAR} on {self.n:,} {self.rows} rows (challenger alone right on {self.challenger_only}, "
                    f"champion alone on {self.champion_only})")
        else:
            test = f"{BOOTSTRAP} ({self.resamples:,} resamples, seed {self.seed}) on {self.n:,} {self.rows} rows"
        alpha = 1 - self.confidence
        claim = (f"a gain above min_delta {rules.min_delta}" if rules.mode == "superiority"
                 else f"a loss smaller than non_inferiority_margin {rules.non_inferiority_margin}")
        return (f"{test}: {self.metric} {self.difference:+.4f}, one-sided {_percent(self.confidence)} bounds "
                f"[{self.lower:+.4f}, {self.upper:+.4f}]; p={_p(self.p_value, alpha)} {'<=' if self.passed else '>'} "
                f"{alpha:.2g} = 1 - min_confidence for {claim} → {'pass' if self.passed else 'reject'}")


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]
    primary_metric: str
    challenger_value: float
    champion_value: float | None
    challenger_version: str
    champion_version: str | None
    evidence: list[PairedEvidence] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "promote" if self.promote else "reject"

    def to_dict(self) -> dict:
        return asdict(self) | {"decision": self.label}


def _percent(value: float) -> str:
    return f"{value * 100:.4g}%"


def _p(value: float, alpha: float) -> str:
    """p to two significant digits, more where that would print it equal to alpha."""
    return f"{value:.2g}" if f"{value:.2g}" != f"{alpha:.2g}" else f"{value:.4g}"


def threshold(rules: GateParams) -> float:
    """The difference (challenger − champion) the challenger must be shown to exceed."""
    return rules.min_delta if rules.mode == "superiority" else -rules.non_inferiority_margin


# -- per-row contributions ------------------------------------------------------------------------

def per_row_loss(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's log loss, with the clipping and renormalisation of `holdout_metrics`."""
    clipped = np.clip(np.asarray(proba, dtype=np.float64), 1e-15, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    return -np.log(clipped[np.arange(len(clipped)), np.asarray(y, dtype=np.int64)])


def _contributions(metric: str, y: np.ndarray, proba: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n, columns) per-row values whose column sums give the metric (`_metric_from_sums`)."""
    if metric == "accuracy":
        return np.column_stack([weights * (proba.argmax(axis=1) == y), weights])
    if metric == "neg_log_loss":
        return np.column_stack([-weights * per_row_loss(proba, y), weights])
    if metric == "macro_f1":
        k = proba.shape[1]
        classes = np.arange(k)
        truth = y[:, None] == classes[None, :]
        predicted = proba.argmax(axis=1)[:, None] == classes[None, :]
        w = weights[:, None]
        return np.hstack([w * (truth & predicted), w * (~truth & predicted), w * (truth & ~predicted)])
    raise ValueError(f"unknown gate metric {metric!r}; allowed: accuracy, macro_f1, neg_log_loss")


def _metric_from_sums(metric: str, sums: np.ndarray) -> np.ndarray:
    """The metric from column sums of `_contributions` (last axis), for any leading shape."""
    if metric in ("accuracy", "neg_log_loss"):
        total = sums[..., 1]
        return np.divide(sums[..., 0], total, out=np.zeros_like(total), where=total > 0)
    tp, fp, fn = np.split(sums, 3, axis=-1)
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return f1.mean(axis=-1)


def _resample_sums(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Column sums of `values` over `resamples` bootstrap resamples of its rows: (resamples, columns).

    Each resample is a row-count vector (rows drawn with replacement); counts × values is one matrix
    product per chunk of resamples. Deterministic for a seed, rows and resamples."""
    n = len(values)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS_PER_CHUNK // max(n, 1))
    out = np.empty((resamples, values.shape[1]))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        drawn = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
        counts = np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n)
        out[start:start + size] = counts @ values
    return out


def paired_bootstrap(metric: str, rows: PairedRows, threshold: float, confidence: float,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> PairedEvidence:
    """Both models scored on the same bootstrap resamples of the rows (the basic bootstrap): one-sided bounds
    observed − the (1 − α) and α quantiles of (resampled − observed) difference, and p = the share of
    resamples whose difference exceeds the observed one by at least observed − `threshold` (+1 smoothed)."""
    y = np.asarray(rows.y, dtype=np.int64)
    weights = np.ones(len(y)) if rows.weights is None else np.asarray(rows.weights, dtype=np.float64)
    ch = _contributions(metric, y, np.asarray(rows.challenger_proba), weights)
    cp = _contributions(metric, y, np.asarray(rows.champion_proba), weights)
    both = np.hstack([ch, cp]).astype(np.float64)
    width = ch.shape[1]
    point = float(_metric_from_sums(metric, ch.sum(axis=0)) - _metric_from_sums(metric, cp.sum(axis=0)))
    if len(y) == 0:
        raise ValueError(f"{rows.name}: no rows to compare the models on")
    sums = _resample_sums(both, resamples, seed)
    shifts = _metric_from_sums(metric, sums[:, :width]) - _metric_from_sums(metric, sums[:, width:]) - point
    alpha = 1 - confidence
    # Basic bootstrap: the difference's error is distributed as the resampled difference's shift from the
    # observed one. The percentile bootstrap promoted 12-17% of exactly-equal model pairs on log loss at
    # alpha 0.1 (a few rows' heavy-tailed losses skew each resampled distribution with the observed mean).
    p_value = float((1 + np.sum(shifts >= point - threshold)) / (1 + resamples))
    low_shift, high_shift = (float(v) for v in np.quantile(shifts, [alpha, 1 - alpha]))
    lower, upper = point - high_shift, point - low_shift
    return PairedEvidence(rows.name, len(y), metric, BOOTSTRAP, point, min(lower, point), max(upper, point), confidence,
                          threshold, p_value, p_value <= alpha, resamples=resamples, seed=seed)


def _binomial_pmf(m: int, pi: float) -> np.ndarray:
    """P(X = j), j = 0..m, for X ~ Binomial(m, pi) (log space, numpy only)."""
    if pi <= 0 or pi >= 1:
        pmf = np.zeros(m + 1)
        pmf[0 if pi <= 0 else m] = 1.0
        return pmf
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, m + 1)))])
    j = np.arange(m + 1)
    return np.exp(log_factorial[m] - log_factorial[j] - log_factorial[m - j] + j * np.log(pi) + (m - j) * np.log1p(-pi))


def _upper_tail(b: int, m: int, pi: float) -> float:
    """P(X >= b) for X ~ Binomial(m, pi): the exact one-sided p for 'pi is larger'."""
    return float(min(1.0, _binomial_pmf(m, pi)[b:].sum()))


def _lower_tail(b: int, m: int, pi: float) -> float:
    """P(X <= b) for X ~ Binomial(m, pi)."""
    return float(min(1.0, _binomial_pmf(m, pi)[:b + 1].sum()))


def _solve_pi(b: int, m: int, alpha: float, lower: bool) -> float:
    """Clopper-Pearson one-sided bound on π (bisection; each tail is monotone in π): the lower bound is the
    π where P(X >= b) = alpha, the upper the π where P(X <= b) = alpha."""
    if (lower and b == 0) or (not lower and b == m):
        return 0.0 if lower else 1.0
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if lower:  # P(X >= b) grows with π
            low, high = (middle, high) if _upper_tail(b, m, middle) < alpha else (low, middle)
        else:  # P(X <= b) shrinks with π
            low, high = (middle, high) if _lower_tail(b, m, middle) > alpha else (low, middle)
    return (low + high) / 2


def mcnemar(rows: PairedRows, threshold: float, confidence: float) -> PairedEvidence:
    """McNemar's exact conditional test of the accuracy difference (challenger − champion) > threshold, with
    Clopper-Pearson bounds on the same binomial (so `passed` is exactly 'the lower bound is above threshold')."""
    y = np.asarray(rows.y, dtype=np.int64)
    n = len(y)
    if n == 0:
        raise ValueError(f"{rows.name}: no rows to compare the models on")
    right_ch = np.asarray(rows.challenger_proba).argmax(axis=1) == y
    right_cp = np.asarray(rows.champion_proba).argmax(axis=1) == y
    b, c = int(np.sum(right_ch & ~right_cp)), int(np.sum(~right_ch & right_cp))
    m = b + c
    alpha = 1 - confidence
    difference = (b - c) / n
    if m == 0:  # the same rows right: the difference is exactly 0
        p_value, lower, upper = (0.0 if threshold < 0 else 1.0), 0.0, 0.0
    else:
        pi0 = (1 + threshold * n / m) / 2
        p_value = 0.0 if pi0 <= 0 else 1.0 if pi0 >= 1 else _upper_tail(b, m, pi0)
        scale = m / n
        lower = (2 * _solve_pi(b, m, alpha, lower=True) - 1) * scale
        upper = (2 * _solve_pi(b, m, alpha, lower=False) - 1) * scale
    return PairedEvidence(rows.name, n, "accuracy", MCNEMAR, difference, min(lower, difference), max(upper, difference),
                          confidence, threshold, p_value, p_value <= alpha, challenger_only=b, champion_only=c)


def paired_evidence(rows: PairedRows, rules: GateParams, resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> PairedEvidence:
    """The paired test of `rules.primary_metric` on one set of rows: McNemar for accuracy on unweighted
    rows, the paired bootstrap otherwise."""
    metric, cut, confidence = rules.primary_metric, threshold(rules), rules.min_confidence
    if metric == "accuracy" and rows.weights is None:
        return mcnemar(rows, cut, confidence)
    return paired_bootstrap(metric, rows, cut, confidence, resamples, seed)


def audit_evidence(rows: PairedRows, rules: GateParams, resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> PairedEvidence:
    """The paired test of `rules.primary_metric` on the audit rows against a difference of 0 (a bootstrap on
    weighted rows); `passed` says the challenger is NOT significantly worse there: its one-sided
    min_confidence upper bound is at least 0. `p_value` stays the test's, for a gain above 0."""
    metric, confidence = rules.primary_metric, rules.min_confidence
    tested = (mcnemar(rows, 0.0, confidence) if metric == "accuracy" and rows.weights is None
              else paired_bootstrap(metric, rows, 0.0, confidence, resamples, seed))
    return dataclasses.replace(tested, passed=tested.upper >= 0)


def audit_reason(evidence: PairedEvidence, rules: GateParams) -> str:
    """E.g. 'audit guard: paired bootstrap (2,000 resamples, seed 0) on 40 audit rows neither model trained on
    (importance-weighted): accuracy -0.0500, one-sided 90% bounds [-0.1200, +0.0100]; not significantly worse
    (upper bound >= 0) → pass'."""
    if evidence.test == MCNEMAR:
        test = f"{MCNEMAR} on {evidence.n:,} audit rows neither model trained on"
    else:
        test = (f"{BOOTSTRAP} ({evidence.resamples:,} resamples, seed {evidence.seed}) on {evidence.n:,} audit rows "
                "neither model trained on (importance-weighted)")
    text = (f"audit guard: {test}: {evidence.metric} {evidence.difference:+.4f}, one-sided {_percent(evidence.confidence)} "
            f"bounds [{evidence.lower:+.4f}, {evidence.upper:+.4f}]; ")
    if evidence.n < rules.audit_min_rows:
        return text + f"{evidence.n} rows < audit_min_rows {rules.audit_min_rows}: reported, not used"
    if evidence.passed:
        return text + "not significantly worse (upper bound >= 0) → pass"
    return text + "significantly worse on live traffic (upper bound < 0) → reject"


# -- the decision ---------------------------------------------------------------------------------

def _point_reason(metric: str, value: float, base: float, rules: GateParams, why: str) -> tuple[bool, str]:
    """The comparison without a test (`min_confidence: 0`, or no per-row predictions)."""
    delta, cut = value - base, threshold(rules)
    name = "min_delta" if rules.mode == "superiority" else "-non_inferiority_margin"
    passed = delta >= cut if rules.mode == "superiority" else delta > cut
    sign = (">=" if passed else "<") if rules.mode == "superiority" else (">" if passed else "<=")
    return passed, f"{metric} {value:.4f} vs champion {base:.4f}: {delta:+.4f} {sign} {name} {cut} ({why})"


def decide(challenger: ModelMetrics, champion: ModelMetrics | None, rules: GateParams,
           paired: Sequence[PairedRows] = (), audit: PairedRows | None = None) -> GateDecision:
    """Promote only if every rule passes; every rule's outcome is a reason, passing or not.

    `paired`: the sets of rows both models predicted (the holdout). With `rules.min_confidence` > 0 the
    primary metric must pass the paired test on every set; without paired rows the recorded metrics are
    compared as point estimates, and the reason says so. `audit`: the audit rows neither model trained on,
    the guard of the module docstring (with `rules.audit_guard` and `rules.min_confidence` > 0)."""
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
    evidence: list[PairedEvidence] = []
    if rules.min_confidence == 0:
        passed, reason = _point_reason(metric, value, base, rules, "min_confidence 0: no test")
        failed, reasons = not passed, [reason]
    elif not paired:
        passed, reason = _point_reason(metric, value, base, rules, "no per-row predictions: point estimates, untested")
        failed, reasons = not passed, [reason]
    else:
        evidence = [paired_evidence(rows, rules) for rows in paired]
        failed = not all(e.passed for e in evidence)
        reasons = [e.reason(rules) for e in evidence]
    if audit is not None and len(audit.y) and rules.audit_guard and rules.min_confidence > 0:
        guard = audit_evidence(audit, rules)
        evidence.append(guard)
        reasons.append(audit_reason(guard, rules))
        failed = failed or (not guard.passed and guard.n >= rules.audit_min_rows)
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
    return GateDecision(not failed, reasons, metric, value, base, challenger.version, champion.version, evidence)
