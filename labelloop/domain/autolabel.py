"""Auto-labels with a measured precision (pure: arrays in, decisions out).

Pool rows the model is sure of get its label without a human, at one confidence threshold per class. The
thresholds are chosen on *check items*: human-labelled rows whose prediction and confidence (by the model that
scored them) are known — audit items, and the held-back share of each batch (pool rows at or above
`min_confidence`, drawn uniformly and sent to humans anyway). Each check item carries an importance weight (the
inverse of its sampling probability); the precision above the thresholds is their weighted share of correct
predictions, and its one-sided Clopper-Pearson lower bound is taken at the Kish effective sample size.

The choice: for a per-class precision level q (from `min_precision` up to 1), each class gets the lowest threshold
at which its own checked items above it reach q (with at least `min_checked_per_class` of them); the auto-labels'
precision over all classes' check items above their thresholds must then have its lower bound at least
`min_precision`, on at least `min_checked` items. Of the levels that pass, the one covering the most (weighted) check
items wins: the lowest thresholds that keep the bound. Choosing the thresholds on the same items that estimate the
precision makes the estimate optimistic (each class's threshold lands where its check items happen to look good, and
with many classes those lucky cells add up), so the check items are split once and for all (by position, a fixed
seed: an item keeps its side across cycles): a `choose_share` of them place the per-class thresholds, the others
only measure the precision and its bound at them. The bound a level must pass is Bonferroni-corrected over the levels
tried (at 1 - (1 - confidence) / LEVELS; the bound reported is at `confidence`). `choose_share` 0: one set does both
(the earlier, optimistic rule). Every cycle re-measures it at the thresholds
in force with the newest check items, and when the bound has fallen below the target, auto-labelling pauses for that
cycle.

With `target_predicted`/`target_confidence` (the rows that may be auto-labelled), the check items are
importance-weighted to their class and confidence distribution (`target_weights`); items of weight 0 drop out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from numpy.typing import ArrayLike

LEVELS = 21  # per-class precision levels tried between min_precision and 1
SPLIT_SEED = 17  # the fixed split of the check items into choosing and measuring ones (see choosing_items)
# Confidence bins (as 1 - confidence) of the importance weights: auto-labels come from the rows still in the pool,
# which after a few cycles sit just above the thresholds, where the precision is lower than above them on average.
ERROR_EDGES = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 1.0)


@dataclass(frozen=True)
class ClassCheck:
    label: str
    threshold: float | None  # None: no auto-labels for this class
    n_checked: int  # check items predicted as this class at or above min_confidence
    n_above: int  # ... and at or above its threshold
    precision: float | None  # weighted share of them labelled as predicted
    lower_bound: float | None  # Clopper-Pearson, at the effective sample size


@dataclass(frozen=True)
class AutolabelDecision:
    thresholds: dict[str, float]  # classes that get auto-labels this cycle (empty when paused)
    classes: list[ClassCheck]
    n_checked: int  # check items above the thresholds (all classes)
    precision: float | None
    lower_bound: float | None
    paused: bool
    reason: str
    min_precision: float = 0.0
    confidence: float = 0.0
    remeasured: dict = field(default_factory=dict)  # the thresholds in force before, measured on the newest checks

    def to_dict(self) -> dict:
        return asdict(self)


def clopper_pearson_lower(successes: float, n: float, confidence: float) -> float:
    """One-sided lower bound of a binomial proportion at `confidence` (non-integer counts allowed: effective sizes)."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0
    successes = min(max(successes, 0.0), n)
    if successes <= 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, successes, n - successes + 1.0))


def weighted_precision(correct: np.ndarray, weights: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """(estimate, lower bound) of the weighted share of correct items; (None, None) without items."""
    correct = np.asarray(correct, dtype=bool)
    weights = np.asarray(weights, dtype=np.float64)
    total = float(weights.sum())
    if len(correct) == 0 or total <= 0:
        return None, None
    estimate = float(weights[correct].sum() / total)
    n_eff = total**2 / float((weights**2).sum())
    return estimate, clopper_pearson_lower(estimate * n_eff, n_eff, confidence)


def _as_arrays(predicted: ArrayLike, confidence: ArrayLike, correct: ArrayLike,
               weights: ArrayLike | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pred = np.asarray(predicted, dtype=object).astype(str)
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    weight = np.ones(len(pred)) if weights is None else np.asarray(weights, dtype=np.float64)
    if not (len(pred) == len(conf) == len(right) == len(weight)):
        raise ValueError("predicted, confidence, correct and weights must have one entry per check item")
    if len(weight) and (not np.all(np.isfinite(weight)) or weight.min() < 0):
        raise ValueError("check-item weights must be non-negative and finite")
    return pred, conf, right, weight


def above(predicted: np.ndarray, confidence: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """Rows whose confidence reaches their predicted class's threshold (classes without one: never)."""
    limit = np.array([thresholds.get(str(p), np.inf) for p in predicted], dtype=np.float64)
    return np.asarray(confidence, dtype=np.float64) >= limit


def _error_bin(confidence: ArrayLike) -> np.ndarray:
    error = 1.0 - np.asarray(confidence, dtype=np.float64)
    return np.clip(np.searchsorted(np.asarray(ERROR_EDGES), error, side="right") - 1, 0, len(ERROR_EDGES) - 2)


def target_weights(predicted: ArrayLike, confidence: ArrayLike, weights: ArrayLike | None, target_predicted: ArrayLike,
                   target_confidence: ArrayLike) -> np.ndarray:
    """Check-item weights times a density ratio, so that per (predicted class, confidence bin) the check items stand
    for the rows that may be auto-labelled (`target_*`: the eligible pool rows). A check item in a bin without any
    target row gets weight 0 (it says nothing about them)."""
    pred = np.asarray(predicted, dtype=object).astype(str)
    base = np.ones(len(pred)) if weights is None else np.asarray(weights, dtype=np.float64)
    check_bin = _error_bin(confidence)
    target_keys = zip(np.asarray(target_predicted, dtype=object).astype(str).tolist(),
                      _error_bin(target_confidence).tolist(), strict=True)
    counts: dict[tuple[str, int], int] = {}
    for key in target_keys:
        counts[key] = counts.get(key, 0) + 1
    out = np.zeros(len(pred))
    for key in set(zip(pred.tolist(), check_bin.tolist(), strict=True)):
        mine = (pred == key[0]) & (check_bin == key[1])
        total = base[mine].sum()  # 0 when all of them are spent (weight 0): they stay at 0
        out[mine] = base[mine] * counts.get(key, 0) / total if total > 0 else 0.0
    return out


def choosing_items(n: int, choose_share: float, keys: Sequence[str] | None = None) -> np.ndarray:
    """Which of `n` check items place the thresholds; the others measure the precision. With `keys` (the items'
    ids) the side follows from the id alone, so an item keeps its side whatever the other check items of a cycle
    are (production: held-back checks are added and audit items leave as they are trained on). Without, from the
    position with a fixed seed: the first k items fall the same way whatever n is (a check set that only grows)."""
    if not 0 <= choose_share < 1:
        raise ValueError("choose_share must be in [0, 1)")
    if keys is None:
        return np.random.default_rng(SPLIT_SEED).random(n) < choose_share
    if len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} check items")
    draws = [int.from_bytes(hashlib.sha256(f"{SPLIT_SEED}|{key}".encode()).digest()[:8], "big") / 2**64 for key in keys]
    return np.asarray(draws, dtype=float) < choose_share


def _class_threshold(conf: np.ndarray, correct: np.ndarray, weights: np.ndarray, level: float,
                     min_items: int) -> float | None:
    """The lowest threshold at which this class's check items above it reach `level` (at least min_items of them)."""
    if len(conf) < min_items or len(conf) == 0:
        return None
    order = np.argsort(-conf, kind="stable")
    conf, correct, weights = conf[order], correct[order], weights[order]
    cum_right = np.cumsum(weights * correct)
    cum_all = np.cumsum(weights)
    # A threshold is a confidence value: only prefixes that end where the confidence changes (ties included).
    ends = np.r_[np.flatnonzero(np.diff(conf) != 0), len(conf) - 1]
    ok = ends[(ends + 1 >= min_items) & (cum_right[ends] >= level * cum_all[ends] - 1e-12)]
    return float(conf[ok[-1]]) if len(ok) else None


def _measure(classes: Sequence[str], predicted, confidence, correct, weights, thresholds: dict[str, float],
             floor: float, level: float) -> tuple[list[ClassCheck], int, float | None, float | None]:
    rows = []
    for label in classes:
        mine = (predicted == label) & (confidence >= floor)
        threshold = thresholds.get(label)
        hit = mine & (confidence >= threshold) if threshold is not None else np.zeros(len(predicted), dtype=bool)
        estimate, bound = weighted_precision(correct[hit], weights[hit], level)
        rows.append(ClassCheck(label, threshold, int(mine.sum()), int(hit.sum()), estimate, bound))
    hit = above(predicted, confidence, thresholds)
    estimate, bound = weighted_precision(correct[hit], weights[hit], level)
    return rows, int(hit.sum()), estimate, bound


def choose_thresholds(
    classes: Sequence[str], predicted: ArrayLike, confidence: ArrayLike, correct: ArrayLike,
    weights: ArrayLike | None = None, *, min_precision: float, confidence_level: float, min_confidence: float,
    min_checked_per_class: int, min_checked: int, in_force: dict[str, float] | None = None,
    recent: ArrayLike | None = None, target_predicted: ArrayLike | None = None,
    target_confidence: ArrayLike | None = None, choose_share: float = 0.5, keys: Sequence[str] | None = None,
) -> AutolabelDecision:
    """Per-class thresholds for this cycle from the check items (see the module docstring).

    `in_force`: the thresholds of the previous cycle; they are first re-measured on the `recent` check items (a
    boolean mask; default all): when their lower bound is below `min_precision`, the decision is paused with the
    reason. Otherwise (or with none in force) the thresholds are chosen afresh; when no choice reaches the bound,
    the decision is paused too. `choose_share`: the share of the check items that place the thresholds (the rest
    measure them, the re-measurement included); 0: all items do both. `keys`: the check items' ids, which then
    decide their side (`choosing_items`).
    """
    classes = [str(c) for c in classes]
    pred, conf, right, weight = _as_arrays(predicted, confidence, correct, weights)
    if target_predicted is not None and target_confidence is not None:
        weight = target_weights(pred, conf, weight, target_predicted, target_confidence)
    chooser = choosing_items(len(pred), choose_share, None if keys is None else [str(k) for k in keys])
    keep = weight > 0
    newest = None if recent is None else np.asarray(recent, dtype=bool)[keep]
    chooser = chooser[keep]
    pred, conf, right, weight = pred[keep], conf[keep], right[keep], weight[keep]
    # The choosing and the measuring items: all of them, both, when choose_share is 0.
    every = np.ones(len(pred), dtype=bool)
    chooser, judge = (chooser, ~chooser) if choose_share > 0 else (every, every)
    common = {"min_precision": min_precision, "confidence": confidence_level}
    remeasured: dict = {}
    if in_force:
        mask = judge if newest is None else newest & judge
        rows, n, estimate, bound = _measure(classes, pred[mask], conf[mask], right[mask], weight[mask],
                                            in_force, min_confidence, confidence_level)
        remeasured = {"thresholds": dict(in_force), "n_checked": n, "precision": estimate, "lower_bound": bound}
        if n and bound is not None and bound < min_precision:
            return AutolabelDecision(
                {}, rows, n, estimate, bound, True,
                f"precision bound {bound:.3f} (estimate {estimate:.3f} on {n} checked items) fell below the target "
                f"{min_precision} at the thresholds in force: auto-labelling paused", remeasured=remeasured, **common)
    best: tuple[float, dict[str, float]] | None = None
    best_bound: float | None = None
    # The rules tried: per-class thresholds at each precision level and (with a split, where an honest measure can
    # tell which is better) one threshold for all classes, reaching the level on all the choosing items above it:
    # not fitted to each class's few items, so it holds better out of sample when classes have few check items.
    levels = np.linspace(min_precision, 1.0, LEVELS)
    rules = [(float(level), True) for level in levels] + [(float(level), False) for level in levels if choose_share]
    corrected = 1.0 - (1.0 - confidence_level) / len(rules)  # the search tries that many choices
    floor = (conf >= min_confidence) & chooser
    for level, per_class in rules:
        common_threshold = (None if per_class else
                            _class_threshold(conf[floor], right[floor], weight[floor], level, min_checked))
        thresholds = {}
        for label in classes:
            mine = (pred == label) & floor
            if mine.sum() < min_checked_per_class:
                continue
            found = (_class_threshold(conf[mine], right[mine], weight[mine], level, min_checked_per_class)
                     if per_class else common_threshold)
            if found is not None and (conf[mine] >= found).sum() >= min_checked_per_class:
                thresholds[label] = found
        if not thresholds:
            continue
        hit = above(pred, conf, thresholds) & judge
        estimate, bound = weighted_precision(right[hit], weight[hit], corrected)
        if bound is not None and (best_bound is None or bound > best_bound):
            best_bound = bound
        if hit.sum() < min_checked or bound is None or bound < min_precision:
            continue
        coverage = float(weight[hit].sum())
        if best is None or coverage > best[0]:
            best = (coverage, thresholds)
    if best is None:
        n_floor = int((conf >= min_confidence).sum())
        rows, _, _, _ = _measure(classes, pred, conf, right, weight, {}, min_confidence, confidence_level)
        shown = "none" if best_bound is None else f"{best_bound:.3f}"
        return AutolabelDecision(
            {}, rows, 0, None, None, True,
            f"no class qualifies yet: {n_floor} checked items at or above {min_confidence} (a choice needs at least "
            f"{min_checked} above the thresholds, {min_checked_per_class} per class, and a {corrected:.2%} lower bound "
            f"(Bonferroni over {len(rules)} rules) of at least {min_precision}; best bound {shown})",
            remeasured=remeasured, **common)
    thresholds = best[1]
    rows, n, estimate, bound = _measure(classes, pred[judge], conf[judge], right[judge], weight[judge], thresholds,
                                        min_confidence, confidence_level)
    return AutolabelDecision(thresholds, rows, n, estimate, bound, False,
                             f"auto-labelling {len(thresholds)} of {len(classes)} classes: precision {estimate:.3f}, "
                             f"{confidence_level:.0%} lower bound {bound:.3f} on {n} checked items",
                             remeasured=remeasured, **common)


def spent_checks(spent: ArrayLike, predicted: ArrayLike, confidence: ArrayLike,
                 thresholds: dict[str, float]) -> np.ndarray:
    """`spent` plus the check items that would have been auto-labelled at a cycle's `thresholds` (scored by that
    cycle's model). A fixed check set (the holdout) must lose them as the pool loses its auto-labelled rows: the pool
    rows left above a later threshold were below the earlier ones, so they are harder than check items of the same
    class and confidence that were above them all along. Give spent items weight 0."""
    pred = np.asarray(predicted, dtype=object).astype(str)
    return np.asarray(spent, dtype=bool) | above(pred, np.asarray(confidence, dtype=np.float64), thresholds)


def pick_auto_rows(predicted: ArrayLike, confidence: ArrayLike, thresholds: dict[str, float], max_rows: int,
                   eligible: ArrayLike | None = None) -> np.ndarray:
    """Indices of the rows to auto-label: eligible, at or above their class's threshold, the most confident first,
    at most `max_rows`."""
    pred = np.asarray(predicted, dtype=object).astype(str)
    conf = np.asarray(confidence, dtype=np.float64)
    ok = above(pred, conf, thresholds)
    if eligible is not None:
        ok &= np.asarray(eligible, dtype=bool)
    index = np.flatnonzero(ok)
    return index[np.argsort(-conf[index], kind="stable")][:max_rows]


def draw_holdback(confidence: ArrayLike, n: int, min_confidence: float, seed: int | Sequence[int],
                  eligible: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`n` check rows drawn uniformly among the eligible rows at or above `min_confidence`, and their weights."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = conf >= min_confidence
    if eligible is not None:
        ok &= np.asarray(eligible, dtype=bool)
    index = np.flatnonzero(ok)
    n = min(int(n), len(index))
    if n <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0)
    picked = np.sort(np.random.default_rng(seed).choice(index, n, replace=False))
    # Every cycle's draw is a uniform sample of the same region (rows at or above min_confidence), so together they
    # are one: equal weights. Unequal weights (audit items drawn with different probabilities) cost effective size.
    return picked, np.ones(n)


def holdback_size(batch_size: int, share: float) -> int:
    """Rows of a human batch spent on checking."""
    return round(batch_size * share)
