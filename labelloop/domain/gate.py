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

The seed term (`twins`, `seed_evidence`): a paired test on the holdout tells the two models' row noise from a gain,
but not a gain the challenger owes to its random_state: with a seed-dependent estimator two retrains on the same
rows really differ on the population, and the paired test alone promoted 6–26% of them at min_confidence 0.9
(docs/benchmarks.md, issue 16). The train stage fits k − 1 seed twins of the challenger (same rows, other
random_states; `gate.seed_twins`); the spread s² of the k fits' holdout metric holds the seed's effect plus each
fit's own row noise, i.e. what separates two same-data retrains on these rows. Under the null the champion is one
more such draw, so challenger − champion has variance 2s²: t = (difference − threshold)/√(2s²) on k − 1 df, one-sided
at 1 − min_confidence (slightly conservative: the challenger is one of the k; 8.6% at a nominal 10% for k = 3 with
normal metrics). Not se_paired² + 2s²: s² already holds the row noise, which would be counted twice (power lost for
nothing). The paired test must still pass beside it (intersection-union again: no correction), so the seed term
only ever rejects, and with no spread (twins that predict alike) it passes: the decision is the paired test's.

The audit rows (`audit`: the audit items neither model trained on, weighted by their inverse sampling
probabilities; labelloop/stages/audit.py) are a second paired comparison on live traffic, a guardrail rather
than a second hurdle (a few dozen rows could rarely show a gain): with `gate.audit_guard` the same paired test,
against 0, is reported in the reasons, and from `gate.audit_min_rows` rows a challenger significantly worse
there — the one-sided min_confidence upper bound on its difference below 0 — is rejected.

Per class and per segment, the same audit rows guard against a collapse the overall difference hides
(`audit_group_guards`, with `gate.audit_guard`): the importance-weighted recall of each true class
(`gate.max_class_recall_drop`) and the importance-weighted accuracy of each segment of every segment column
(`gate.max_segment_accuracy_drop`; the columns of `monitor.segments`, else `select.group_column`, as the segment
monitor reads them), challenger vs champion on the group's rows, by the same paired test (`guard_evidence`)
against a drop of the allowance. A group with `gate.audit_min_rows_per_group` rows whose drop is significantly
larger — the one-sided min_confidence lower bound on the drop above the allowance — is rejected; smaller groups
are reported, not used; an allowance of 1 turns the guard off. Each group is tested at min_confidence on its
own, without a correction across groups: a group whose true drop is right at the allowance rejects with
probability up to 1 − min_confidence, and the more groups, the more often some group's noise rejects a challenger
(the allowance is what keeps that rare for an equally good one) — a missed promotion, never a false one.

Every guard only rejects — it can turn a promotion into a rejection, never the reverse — so none can raise
the false-promotion rate of the holdout test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from labelloop.config import GateParams

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
MCNEMAR = "McNemar exact"
BOOTSTRAP = "paired bootstrap"
SEED_T = "seed-aware t"
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
    make every metric a weighted one and the accuracy test a bootstrap. `classes` names the probability
    columns and `segments` gives each row's segment per segment column (the audit guards' groups)."""

    name: str  # "holdout" or "audit"
    y: np.ndarray  # (n,) int
    challenger_proba: np.ndarray  # (n, k)
    champion_proba: np.ndarray  # (n, k)
    weights: np.ndarray | None = None
    classes: Sequence[str] = ()  # k class names; () = the column indices
    segments: Mapping[str, np.ndarray] = field(default_factory=dict)  # segment column -> (n,) segment names

    def __post_init__(self) -> None:
        n = len(self.y)
        for what, proba in (("challenger_proba", self.challenger_proba), ("champion_proba", self.champion_proba)):
            if np.ndim(proba) != 2 or len(proba) != n:
                raise ValueError(f"{self.name}: {what} must be (rows, classes) with {n} rows, got shape {np.shape(proba)}")
        if np.shape(self.challenger_proba)[1] != np.shape(self.champion_proba)[1]:
            raise ValueError(f"{self.name}: the two models give probabilities over different numbers of classes")
        if self.weights is not None and (np.shape(self.weights) != (n,) or np.any(np.asarray(self.weights) < 0)):
            raise ValueError(f"{self.name}: weights must be {n} non-negative numbers")
        if self.classes and len(self.classes) != np.shape(self.challenger_proba)[1]:
            raise ValueError(f"{self.name}: {len(self.classes)} class names for {np.shape(self.challenger_proba)[1]} "
                             "probability columns")
        for column, values in self.segments.items():
            if np.shape(values) != (n,):
                raise ValueError(f"{self.name}: segments[{column!r}] must hold one segment per row ({n}), "
                                 f"got shape {np.shape(values)}")


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
    seeds: list[int] | None = None  # seed-aware t: the challenger's random_state, then its twins'
    seed_sd: float | None = None  # their metric values' standard deviation
    seed_values: list[float] | None = None

    def reason(self, rules: GateParams) -> str:
        """E.g. 'McNemar exact on 1,287 holdout rows (challenger alone right on 41, champion alone on
        37): accuracy +0.0031, one-sided 90% bounds [-0.0029, +0.0091]; p=0.31 > 0.1 = 1 - min_confidence
        for a gain above min_delta 0.0 → reject'."""
        if self.test == MCNEMAR:
            test = (f"{MCNEMAR} on {self.n:,} {self.rows} rows (challenger alone right on {self.challenger_only}, "
                    f"champion alone on {self.champion_only})")
        elif self.test == SEED_T:
            return self._seed_reason(rules)
        else:
            test = f"{BOOTSTRAP} ({self.resamples:,} resamples, seed {self.seed}) on {self.n:,} {self.rows} rows"
        alpha = 1 - self.confidence
        claim = _claim(rules)
        return (f"{test}: {self.metric} {self.difference:+.4f}, one-sided {_percent(self.confidence)} bounds "
                f"[{self.lower:+.4f}, {self.upper:+.4f}]; p={_p(self.p_value, alpha)} {'<=' if self.passed else '>'} "
                f"{alpha:.2g} = 1 - min_confidence for {claim} → {'pass' if self.passed else 'reject'}")

    def _seed_reason(self, rules: GateParams) -> str:
        """E.g. 'seed-aware t on 1,287 holdout rows: the challenger (random_state 0) and 2 seed twins (random_state
        1817441348, 993632895) score accuracy 0.8834, 0.8772, 0.8772, seed sd 0.0036; challenger - champion +0.0117
        over se √2·sd 0.0051 (both models carry seed noise), t on 2 df, one-sided 90% bounds [+0.0021, +0.0212];
        p=0.074 <= 0.1 = 1 - min_confidence for a gain above min_delta 0.0 → pass'."""
        seeds, values = self.seeds or [], self.seed_values or []
        twins = len(seeds) - 1
        head = (f"{SEED_T} on {self.n:,} {self.rows} rows: the challenger (random_state {seeds[0]}) and {twins} seed "
                f"twin{'s' if twins != 1 else ''} (random_state {', '.join(str(s) for s in seeds[1:])}) score "
                f"{self.metric} {', '.join(f'{v:.4f}' for v in values)}, seed sd {self.seed_sd:.4f}")
        if self.seed_sd is not None and self.seed_sd * np.sqrt(2.0) <= 1e-12:
            return head + "; no seed spread: the seed term adds nothing, the paired test decides → pass"
        alpha = 1 - self.confidence
        return (f"{head}; challenger - champion {self.difference:+.4f} over se √2·sd {np.sqrt(2.0) * (self.seed_sd or 0.0):.4f} "
                f"(both models carry seed noise), t on {len(seeds) - 1} df, one-sided {_percent(self.confidence)} bounds "
                f"[{self.lower:+.4f}, {self.upper:+.4f}]; p={_p(self.p_value, alpha)} {'<=' if self.passed else '>'} "
                f"{alpha:.2g} = 1 - min_confidence for {_claim(rules)} → {'pass' if self.passed else 'reject'}")


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


def _claim(rules: GateParams) -> str:
    return (f"a gain above min_delta {rules.min_delta}" if rules.mode == "superiority"
            else f"a loss smaller than non_inferiority_margin {rules.non_inferiority_margin}")


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


# -- the seed term: retrains that differ by their random_state alone ------------------------------

@dataclass(frozen=True, eq=False)
class SeedTwins:
    """The challenger's seed twins (labelloop/stages/train.py): the same estimator refitted on the same labelled
    rows with other `random_state`s, and their class probabilities on the rows of the `PairedRows` named `rows`
    (same rows, same order). `seeds[0]` is the challenger's own random_state, `probas[0]` its probabilities."""

    seeds: tuple[int, ...]
    probas: tuple[np.ndarray, ...]  # one (n, k) array per seed, the challenger's first
    rows: str = "holdout"

    def __post_init__(self) -> None:
        if len(self.seeds) != len(self.probas) or len(self.seeds) < 2:
            raise ValueError(f"seed twins: need the challenger and at least one twin, one probability array per seed; "
                             f"got {len(self.seeds)} seeds and {len(self.probas)} arrays")
        shapes = {np.shape(p) for p in self.probas}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"seed twins: every probability array must be (rows, classes) of one shape, got {sorted(shapes)}")


def t_quantile(level: float, df: int) -> float:
    """Student's t quantile (`df` degrees of freedom)."""
    from scipy.special import stdtrit

    return float(stdtrit(df, level))


def metric_value(metric: str, y: np.ndarray, proba: np.ndarray, weights: np.ndarray | None = None) -> float:
    """`metric` (higher is better) of one model's probabilities on rows with true classes `y`."""
    y = np.asarray(y, dtype=np.int64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(_metric_from_sums(metric, _contributions(metric, y, np.asarray(proba, dtype=np.float64), w).sum(axis=0)))


def seed_evidence(rows: PairedRows, twins: SeedTwins, rules: GateParams) -> PairedEvidence:
    """The seed-aware t test of the challenger's gain: can the difference on `rows` come from the seed alone?

    The k = len(twins.seeds) fits differ only by random_state; their metric values on these rows spread by the
    seed's effect on the population metric plus each fit's own row noise, with variance s² (k − 1 df). Under
    the null (the champion is one more draw of the same retrain) challenger − champion has variance 2σ² (both
    carry it), estimated by 2s²: t = (difference − threshold) / √(2s²) on k − 1 df, one-sided at 1 − min_confidence.
    The holdout's paired test is kept beside it (`decide` requires both): s² already holds the row noise, so
    adding se_paired² would count it twice. No spread (the twins predict alike): the test passes, the paired
    test alone decides."""
    if twins.probas[0].shape != np.shape(rows.challenger_proba):
        raise ValueError(f"seed twins: probabilities of shape {twins.probas[0].shape} for {np.shape(rows.challenger_proba)} "
                         f"{rows.name} rows")
    metric, cut, confidence = rules.primary_metric, threshold(rules), rules.min_confidence
    values = np.array([metric_value(metric, rows.y, p, rows.weights) for p in twins.probas])
    difference = float(values[0] - metric_value(metric, rows.y, rows.champion_proba, rows.weights))
    k = len(values)
    sd = float(np.std(values, ddof=1))
    se = float(np.sqrt(2.0) * sd)
    alpha = 1 - confidence
    if se <= 1e-12:  # the seed changes nothing on these rows
        p_value, lower, upper, passed = 0.0, difference, difference, True
    else:
        from scipy.special import stdtr

        p_value = float(1 - stdtr(k - 1, (difference - cut) / se))
        quantile = t_quantile(confidence, k - 1)
        lower, upper, passed = difference - quantile * se, difference + quantile * se, p_value <= alpha
    return PairedEvidence(rows.name, len(rows.y), metric, SEED_T, difference, lower, upper, confidence, cut, p_value,
                          passed, seeds=[int(s) for s in twins.seeds], seed_sd=sd, seed_values=[float(v) for v in values])


def audit_evidence(rows: PairedRows, rules: GateParams, resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> PairedEvidence:
    """The paired test of `rules.primary_metric` on the audit rows against a difference of 0 (a bootstrap on
    weighted rows); `passed` says the challenger is NOT significantly worse there: its one-sided
    min_confidence upper bound is at least 0. `p_value` stays the test's, for a gain above 0."""
    return guard_evidence(rows, rules.primary_metric, 0.0, rules.min_confidence, resamples, seed)


def guard_evidence(rows: PairedRows, metric: str, allowance: float, confidence: float,
                   resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> PairedEvidence:
    """A guard's paired test of `metric` on `rows` (McNemar on unweighted accuracy, else the bootstrap) against a
    loss of `allowance`: `passed` says the challenger is NOT significantly worse by more than that — its one-sided
    `confidence` upper bound on challenger − champion is at least −allowance. `p_value` stays the test's, for a
    difference above −allowance."""
    cut = -allowance if allowance else 0.0  # not -0.0 in the recorded evidence
    tested = (mcnemar(rows, cut, confidence) if metric == "accuracy" and rows.weights is None
              else paired_bootstrap(metric, rows, cut, confidence, resamples, seed))
    return dataclasses.replace(tested, passed=tested.upper >= cut)


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


# -- the audit guards per class and per segment ------------------------------------------------------

GROUPS_LISTED = 10  # groups with too few rows named one by one in a reason; the rest counted


def subset(rows: PairedRows, keep: np.ndarray, name: str) -> PairedRows:
    """The rows where `keep` is true as a set of their own, `name` (weights and class names kept)."""
    keep = np.asarray(keep, dtype=bool)
    weights = None if rows.weights is None else np.asarray(rows.weights)[keep]
    return PairedRows(name, np.asarray(rows.y)[keep], np.asarray(rows.challenger_proba)[keep],
                      np.asarray(rows.champion_proba)[keep], weights, rows.classes)


@dataclass(frozen=True)
class GroupGuard:
    """One guard over groups of the audit rows: per true class (recall) or per segment of a column (accuracy)."""

    kind: str  # "class" or "segment"
    column: str | None  # the segment column
    metric: str  # what accuracy on a group's rows is: "recall" (a class) or "accuracy" (a segment)
    key: str  # the GateParams key holding `allowance`
    allowance: float  # the largest drop allowed
    groups: list[tuple[str, np.ndarray]]  # (label, the rows in the group)


def audit_group_guards(audit: PairedRows, rules: GateParams) -> list[GroupGuard]:
    """The guards `rules` turn on (an allowance below 1: a drop can never exceed 1): recall per true class
    (`max_class_recall_drop`), accuracy per segment of each segment column (`max_segment_accuracy_drop`)."""
    guards: list[GroupGuard] = []
    if rules.max_class_recall_drop < 1:
        y = np.asarray(audit.y, dtype=np.int64)
        classes = list(audit.classes) or [str(c) for c in range(np.shape(audit.challenger_proba)[1])]
        guards.append(GroupGuard("class", None, "recall", "max_class_recall_drop", rules.max_class_recall_drop,
                                 [(f"class {classes[c]!r}", y == c) for c in np.unique(y)]))
    if rules.max_segment_accuracy_drop < 1:
        for column, segments in audit.segments.items():
            names = np.asarray([str(v) for v in segments], dtype=object)
            guards.append(GroupGuard("segment", column, "accuracy", "max_segment_accuracy_drop",
                                     rules.max_segment_accuracy_drop,
                                     [(f"segment {column}={name!r}", names == name) for name in sorted(set(names))]))
    return guards


def _drop(evidence: PairedEvidence) -> float:
    return 0.0 - evidence.difference  # champion − challenger; 0.0 - keeps "-0.0000" out of the reasons


def _group_text(evidence: PairedEvidence) -> str:
    """E.g. "class 'b' on 24 rows: recall drop +0.4200, one-sided 90% lower bound +0.2500"."""
    return (f"{evidence.rows.removeprefix('audit ')} on {evidence.n:,} rows: {evidence.metric} drop "
            f"{_drop(evidence):+.4f}, one-sided {_percent(evidence.confidence)} lower bound {0.0 - evidence.upper:+.4f}")


def group_guard(audit: PairedRows, guard: GroupGuard, rules: GateParams) -> tuple[bool, list[str], list[PairedEvidence]]:
    """One guard's groups on the audit rows: (reject, reasons, evidence). Each group's paired test is
    `guard_evidence` on its rows against a drop of `guard.allowance`; a group decides from
    `rules.audit_min_rows_per_group` rows, one with fewer is reported, not used. A reason per rejecting group
    and one for the guard; the evidence kept is the rejecting groups', else the group closest to rejecting."""
    tested: list[PairedEvidence] = []
    unused: list[PairedEvidence] = []
    for label, keep in guard.groups:
        rows = subset(audit, keep, f"audit {label}")
        evidence = dataclasses.replace(guard_evidence(rows, "accuracy", guard.allowance, rules.min_confidence),
                                       metric=guard.metric)
        (tested if evidence.n >= rules.audit_min_rows_per_group else unused).append(evidence)
    plural = "classes" if guard.kind == "class" else "segments"
    head = f"audit {guard.kind} guard" + (f" on {guard.column}" if guard.column else "") + ": "
    how = (MCNEMAR if audit.weights is None
           else f"{BOOTSTRAP} ({BOOTSTRAP_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}), importance-weighted")
    rejected = [e for e in tested if not e.passed]
    reasons = [f"{head}{_group_text(e)} > {guard.key} {guard.allowance} on the audit rows neither model trained on "
               f"({how}) → reject" for e in rejected]
    enough = f"with at least audit_min_rows_per_group {rules.audit_min_rows_per_group} audit rows"
    if rejected:
        summary = (f"{len(rejected)} of {len(tested)} {plural} {enough} drop significantly more than {guard.key} "
                   f"{guard.allowance}")
    elif tested:
        summary = (f"none of {len(tested)} {plural} {enough} drops significantly more than {guard.key} "
                   f"{guard.allowance} (closest: {_group_text(min(tested, key=lambda e: e.upper))}; {how})")
    else:
        summary = f"no {guard.kind} {enough}"
    if unused:
        listed = ", ".join(f"{e.rows.removeprefix('audit ')} ({e.n} rows, drop {_drop(e):+.4f})"
                           for e in unused[:GROUPS_LISTED])
        more = f" and {len(unused) - GROUPS_LISTED} more" if len(unused) > GROUPS_LISTED else ""
        summary += f"; fewer rows, reported, not used: {listed}{more}"
    summary += " → reject" if rejected else " → pass" if tested else ""
    kept = rejected or ([min(tested, key=lambda e: e.upper)] if tested else [])
    return bool(rejected), [*reasons, head + summary], kept


# -- the decision ---------------------------------------------------------------------------------

def _point_reason(metric: str, value: float, base: float, rules: GateParams, why: str) -> tuple[bool, str]:
    """The comparison without a test (`min_confidence: 0`, or no per-row predictions)."""
    delta, cut = value - base, threshold(rules)
    name = "min_delta" if rules.mode == "superiority" else "-non_inferiority_margin"
    passed = delta >= cut if rules.mode == "superiority" else delta > cut
    sign = (">=" if passed else "<") if rules.mode == "superiority" else (">" if passed else "<=")
    return passed, f"{metric} {value:.4f} vs champion {base:.4f}: {delta:+.4f} {sign} {name} {cut} ({why})"


def decide(challenger: ModelMetrics, champion: ModelMetrics | None, rules: GateParams,
           paired: Sequence[PairedRows] = (), audit: PairedRows | None = None,
           twins: SeedTwins | None = None) -> GateDecision:
    """Promote only if every rule passes; every rule's outcome is a reason, passing or not.

    `paired`: the sets of rows both models predicted (the holdout). With `rules.min_confidence` > 0 the
    primary metric must pass the paired test on every set; without paired rows the recorded metrics are
    compared as point estimates, and the reason says so. `audit`: the audit rows neither model trained on,
    the guards of the module docstring (overall, per class, per segment of `audit.segments`; with
    `rules.audit_guard` and `rules.min_confidence` > 0). `twins`: the
    challenger's seed twins on the paired rows named `twins.rows`; their seed-aware t test must pass too."""
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
        # Both tests at level 1 - min_confidence (an intersection-union test): the seed term only ever rejects.
        evidence += [seed_evidence(rows, twins, rules) for rows in paired if twins is not None and rows.name == twins.rows]
        failed = not all(e.passed for e in evidence)
        reasons = [e.reason(rules) for e in evidence]
    if audit is not None and len(audit.y) and rules.audit_guard and rules.min_confidence > 0:
        guard = audit_evidence(audit, rules)
        evidence.append(guard)
        reasons.append(audit_reason(guard, rules))
        failed = failed or (not guard.passed and guard.n >= rules.audit_min_rows)
        for group in audit_group_guards(audit, rules):
            rejected, group_reasons, group_evidence = group_guard(audit, group, rules)
            failed = failed or rejected
            reasons += group_reasons
            evidence += group_evidence
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
