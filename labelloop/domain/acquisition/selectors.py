"""Selectors: `(utilities, batch_size, *, <what each reads>) -> row indices`, best first.

Each declares exactly the keywords it reads; the table naming them is registry.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import get_args

import numpy as np

from labelloop.config import HybridDiversity, HybridExploitWeighting, HybridExplore, HybridParams, HybridQuotaBalance
from labelloop.domain.acquisition.space import LazyFeatures


class BatchShrunkWarning(UserWarning):
    """Fewer eligible candidates than the requested batch size."""


def eligible_count_or_warn(utilities: np.ndarray, batch_size: int) -> int:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    eligible = int(np.isfinite(utilities).sum())
    if eligible < batch_size:
        warnings.warn(
            f"only {eligible} eligible candidates for a batch of {batch_size}; the batch shrinks to {eligible}",
            BatchShrunkWarning,
            stacklevel=3,
        )
    return min(eligible, batch_size)


def rank_by_utility(utilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of the finite utilities, best first; ties broken by the seeded rng."""
    utilities = np.asarray(utilities, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(utilities))
    tiebreak = rng.random(len(finite))
    order = np.lexsort((tiebreak, -utilities[finite]))
    return finite[order]


def topk(utilities: np.ndarray, batch_size: int, *, rng: np.random.Generator) -> np.ndarray:
    utilities = np.asarray(utilities, dtype=np.float64)
    size = eligible_count_or_warn(utilities, batch_size)
    if size == 0:
        return np.empty(0, dtype=np.int64)
    finite = np.flatnonzero(np.isfinite(utilities))
    if size < len(finite):
        # Keep every row tied with the cut-off so the seeded tie-break decides, not the partition.
        cut = np.partition(utilities[finite], len(finite) - size)[len(finite) - size]
        finite = finite[utilities[finite] >= cut]
    candidates = np.full_like(utilities, np.nan)
    candidates[finite] = utilities[finite]
    return rank_by_utility(candidates, rng)[:size].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Diversity selectors. Each restricts itself to the top-M candidates by utility (M = top_m_factor
# × batch), so its cost depends on the batch, not on the pool: the pool is reduced in one O(n) pass.
# ---------------------------------------------------------------------------------------------

TOP_M_FACTOR = 10


def top_candidates(utilities: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """The m best finite rows, best first (seeded tie-break), in O(n + m log m)."""
    utilities = np.asarray(utilities, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(utilities))
    if m < len(finite):
        cut = np.partition(utilities[finite], len(finite) - m)[len(finite) - m]
        finite = finite[utilities[finite] >= cut]
    tiebreak = rng.random(len(finite))
    order = np.lexsort((tiebreak, -utilities[finite]))
    return finite[order][:m]


def _scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[~np.isfinite(std) | (std == 0)] = 1.0
    return mean, std


def _need_features(features: np.ndarray | LazyFeatures | None, n: int, who: str) -> np.ndarray:
    """The features as a finite float32 matrix; a LazyFeatures stays lazy (rows are mapped when indexed)."""
    if features is None:
        raise ValueError(f"the {who} selector needs features= (the candidates' feature columns)")
    if isinstance(features, LazyFeatures):
        if len(features) != n:
            raise ValueError(f"features must be (rows={n}, d), got shape {features.shape}")
        return features  # type: ignore[return-value]  # indexed like an array: rows come out finite float32
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != n:
        raise ValueError(f"features must be (rows={n}, d), got shape {features.shape}")
    return np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0)


def _kmeans_labels(x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd k-means from k random rows (k-means++ seeding costs ~10× more at k=1,000 and buys little here)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, init="random", n_init=1, max_iter=30, random_state=int(rng.integers(2**31 - 1)))
    labels = km.fit_predict(np.ascontiguousarray(x, dtype=np.float32))
    return labels, km.cluster_centers_


def _fill(chosen: np.ndarray, ranked: np.ndarray, size: int) -> np.ndarray:
    """Top up `chosen` to `size` with the best of `ranked` not yet chosen."""
    if len(chosen) >= size:
        return chosen[:size]
    rest = ranked[~np.isin(ranked, chosen)]
    return np.concatenate([chosen, rest[: size - len(chosen)]])


def _cluster_pick(utilities, size, rng, features, top_m_factor, exclude=None) -> np.ndarray:
    utilities = np.asarray(utilities, dtype=np.float64)
    if exclude is not None and len(exclude):
        utilities = utilities.copy()
        utilities[exclude] = np.nan
    ranked = top_candidates(utilities, max(size * top_m_factor, size), rng)
    size = min(size, len(ranked))
    if size == 0:
        return np.empty(0, dtype=np.int64)
    if len(ranked) <= size or size == 1:
        return ranked[:size]
    x = features[ranked]
    mean, std = _scaler(x)
    labels, _ = _kmeans_labels((x - mean) / std, size, rng)
    # `ranked` is best first, so the first occurrence of each cluster is its best member.
    _, first = np.unique(labels, return_index=True)
    chosen = ranked[np.sort(first)]
    return _fill(chosen, ranked, size)


def cluster(
    utilities: np.ndarray,
    batch_size: int,
    *,
    rng: np.random.Generator,
    features: np.ndarray | None = None,
    top_m_factor: int = TOP_M_FACTOR,
) -> np.ndarray:
    """k-means (k = batch) over the top-M candidates by utility; the best candidate of each cluster."""
    utilities = np.asarray(utilities, dtype=np.float64)
    size = eligible_count_or_warn(utilities, batch_size)
    if size == 0:
        return np.empty(0, dtype=np.int64)
    x = _need_features(features, len(utilities), "cluster")
    return _cluster_pick(utilities, size, rng, x, top_m_factor).astype(np.int64)


def _k_center(x: np.ndarray, size: int, labelled: np.ndarray | None) -> np.ndarray:
    """Greedy k-center: repeatedly take the row farthest from everything chosen/labelled (ties → earlier row)."""
    n = len(x)
    sq = (x * x).sum(axis=1)
    min_d = np.full(n, np.inf, dtype=np.float32)
    if labelled is not None and len(labelled):
        for start in range(0, len(labelled), 2048):
            block = labelled[start : start + 2048]
            d = sq[:, None] - 2.0 * x @ block.T + (block * block).sum(axis=1)[None, :]
            min_d = np.minimum(min_d, d.min(axis=1))
    chosen = np.empty(size, dtype=np.int64)
    for i in range(size):
        j = 0 if (i == 0 and not np.isfinite(min_d).any()) else int(np.argmax(min_d))
        chosen[i] = j
        diff = x - x[j]
        min_d = np.minimum(min_d, np.einsum("ij,ij->i", diff, diff))
        min_d[j] = -1.0  # never again
    return chosen


def coreset(
    utilities: np.ndarray,
    batch_size: int,
    *,
    rng: np.random.Generator,
    features: np.ndarray | None = None,
    labelled_features: np.ndarray | None = None,
    top_m_factor: int = TOP_M_FACTOR,
) -> np.ndarray:
    """Greedy k-center (Sener & Savarese) on standardized features, restricted to the top-M by utility.

    With `labelled_features` the labelled rows are the initial centres; without, the best candidate is.
    """
    utilities = np.asarray(utilities, dtype=np.float64)
    size = eligible_count_or_warn(utilities, batch_size)
    if size == 0:
        return np.empty(0, dtype=np.int64)
    x_all = _need_features(features, len(utilities), "coreset")
    ranked = top_candidates(utilities, max(size * top_m_factor, size), rng)
    x = x_all[ranked]
    mean, std = _scaler(x)
    x = ((x - mean) / std).astype(np.float32)
    labelled = None
    if labelled_features is not None and len(labelled_features):
        labelled = ((np.asarray(labelled_features, dtype=np.float32) - mean) / std).astype(np.float32)
        labelled = np.nan_to_num(labelled)
    return ranked[_k_center(x, size, labelled)].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Hybrid: exploitation (uncertainty + diversity) + per-group quotas + exploration.
# ---------------------------------------------------------------------------------------------

# The hybrid settings are one definition: `select.hybrid` of params.yaml (HybridParams); its defaults are these.
HYBRID = HybridParams()
EXPLORES = get_args(HybridExplore)
DIVERSITIES = get_args(HybridDiversity)
QUOTA_BALANCES = get_args(HybridQuotaBalance)
EXPLOIT_WEIGHTINGS = get_args(HybridExploitWeighting)


def inverse_labelled_weights(utilities: np.ndarray, groups: np.ndarray, labelled_groups: np.ndarray) -> np.ndarray:
    """Utilities shifted to be ≥ 0 (minus the smallest finite one) and multiplied by mean_count / count(group).

    count(group) = labelled rows in the row's group (at least 1); mean_count = its mean over the groups of the
    eligible rows. A group with half the average labelled count doubles its rows' (shifted) utilities.
    """
    out = np.full(len(utilities), np.nan)
    finite = np.flatnonzero(np.isfinite(utilities))
    if len(finite) == 0:
        return out
    codes, inverse = np.unique(np.asarray(groups)[finite], return_inverse=True)
    counts = np.zeros(len(codes), dtype=np.float64)
    prior = np.asarray(labelled_groups)
    if len(prior):
        pos = np.clip(np.searchsorted(codes, prior), 0, len(codes) - 1)
        match = codes[pos] == prior
        np.add.at(counts, pos[match], 1.0)
    counts = np.maximum(counts, 1.0)
    weight = counts.mean() / counts
    shifted = utilities[finite] - utilities[finite].min()
    out[finite] = shifted * weight[inverse]
    return out


def _quota_pick(utilities, n_quota, groups, taken, rng, prior_groups=None, group_boost=None) -> np.ndarray:
    """Round-robin over groups, fewest-picked group first, best utility within a group.

    `prior_groups` (group values of rows counted as already picked, e.g. the labelled rows) adds to each
    group's count, so the quota fills the groups that are rarest there first (water-filling).
    `group_boost` (str(group) → weight ≥ 1): a group of weight w takes w turns per round (its picks so far
    count 1/w each), e.g. a drifted or under-performing segment with weight 2 gets twice the quota.
    """
    eligible = np.flatnonzero(np.isfinite(utilities) & ~taken)
    if n_quota <= 0 or len(eligible) == 0:
        return np.empty(0, dtype=np.int64)
    codes, inverse = np.unique(np.asarray(groups)[eligible], return_inverse=True)
    already = np.zeros(len(codes), dtype=np.int64)
    picked_groups = np.asarray(groups)[np.flatnonzero(taken)]
    if prior_groups is not None and len(prior_groups):
        picked_groups = np.concatenate([picked_groups, np.asarray(prior_groups)])
    if len(picked_groups):
        pos = np.searchsorted(codes, picked_groups)
        pos = np.clip(pos, 0, len(codes) - 1)
        match = codes[pos] == picked_groups
        np.add.at(already, pos[match], 1)
    tiebreak = rng.random(len(eligible))
    order = np.lexsort((tiebreak, -utilities[eligible], inverse))  # by group, best first
    sorted_groups = inverse[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    round_ = (rank + already[sorted_groups]).astype(np.float64)
    if group_boost:
        weight = np.array([float(group_boost.get(str(code), 1.0)) for code in codes])
        round_ = round_ / weight[sorted_groups]
    pick = np.lexsort((tiebreak[order], -utilities[eligible][order], round_))[:n_quota]
    return eligible[order][pick]


def _explore_pick(utilities, n_explore, taken, rng, features, explore, explore_pool, representative_sample) -> np.ndarray:
    mask = np.isfinite(utilities) & ~taken
    if explore_pool is not None:
        restricted = mask & np.asarray(explore_pool, dtype=bool)
        mask = restricted if restricted.sum() >= n_explore else mask
    eligible = np.flatnonzero(mask)
    n_explore = min(n_explore, len(eligible))
    if n_explore <= 0:
        return np.empty(0, dtype=np.int64)
    if explore == "representative" and features is not None and n_explore > 1:
        if len(eligible) <= representative_sample:
            sample = eligible
        else:
            sample = rng.choice(eligible, representative_sample, replace=False)
        sample = np.sort(sample)
        x = features[sample]
        mean, std = _scaler(x)
        x = (x - mean) / std
        labels, centers = _kmeans_labels(x, n_explore, rng)
        d = ((x - centers[labels]) ** 2).sum(axis=1)
        order = np.lexsort((d, labels))
        first = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]])
        chosen = sample[order[first]]
        return _fill(chosen, rng.permutation(eligible), n_explore)
    return rng.choice(eligible, n_explore, replace=False)


def hybrid(
    utilities: np.ndarray,
    batch_size: int,
    *,
    rng: np.random.Generator,
    features: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    labelled_features: np.ndarray | None = None,
    labelled_groups: np.ndarray | None = None,
    explore_pool: np.ndarray | None = None,
    exploit_fraction: float = HYBRID.exploit_fraction,
    quota_fraction: float = HYBRID.quota_fraction,
    explore_fraction: float = HYBRID.explore_fraction,
    explore: str = HYBRID.explore,
    diversity: str = HYBRID.diversity,
    top_m_factor: int = HYBRID.top_m_factor,
    representative_sample: int = HYBRID.representative_sample,
    min_quota_groups: int = HYBRID.min_quota_groups,
    quota_balance: str = HYBRID.quota_balance,
    exploit_weighting: str = HYBRID.exploit_weighting,
    group_boost: Mapping[str, float] | None = None,
) -> np.ndarray:
    """A batch in three shares, in this order:

    - exploit (`exploit_fraction`): the most useful rows, spread out by `diversity` (cluster / coreset / none);
    - quota (`quota_fraction`, needs `groups`): round-robin over groups (predicted class or a segment
      column), the group with the fewest picks so far first, so no group is starved;
    - explore (`explore_fraction`): uniform random rows (or pool-representative rows), ignoring utility.

    Fractions are normalised to sum to 1. `explore_pool` (bool mask) restricts exploration to rows that
    are a uniform sample of the pool (the streaming scorer keeps one). With `min_quota_groups` = g > 0
    the quota share goes to exploitation when the eligible rows span fewer than g groups (with two
    predicted classes, margin's best rows already sit on the one boundary, so a per-class quota only
    takes rows farther from it).

    `quota_balance`: "batch" (default) counts only this batch's picks per group; "labelled" also counts
    `labelled_groups` (the group of each labelled row, same coding as `groups`; for the default
    predicted-class groups, the labelled rows' class indices), so the quota goes to the groups rarest
    in the labelled set. Without `labelled_groups` "labelled" behaves like "batch".

    `exploit_weighting`: "none" (default) or "inverse_labelled": the exploit share ranks rows by
    `inverse_labelled_weights` (utility shifted to ≥ 0, times mean labelled count / the row's group's
    labelled count) instead of the raw utility; needs `groups` and `labelled_groups`, else "none".

    `group_boost` (str(group value) → weight ≥ 1, e.g. from the segment monitor, labelloop/domain/segments.py): a
    boosted group takes that many turns per round of the quota, so a drifted or under-performing segment gets a
    larger share of it; groups not named keep weight 1.

    `top_m_factor`: the diversity step considers the top top_m_factor × (exploit share) rows by utility;
    `representative_sample`: explore="representative" fits its k-means on at most this many rows.
    """
    utilities = np.asarray(utilities, dtype=np.float64)
    fractions = {"exploit_fraction": exploit_fraction, "quota_fraction": quota_fraction, "explore_fraction": explore_fraction}
    for name, value in fractions.items():
        if not (0.0 <= float(value) <= 1.0):
            raise ValueError(f"{name} must be within [0, 1], got {value}")
    total = float(exploit_fraction) + float(quota_fraction) + float(explore_fraction)
    if total <= 0:
        raise ValueError("hybrid: the exploit, quota and explore fractions are all zero")
    if explore not in EXPLORES:
        raise ValueError(f"explore must be one of {EXPLORES}, got {explore!r}")
    if diversity not in DIVERSITIES:
        raise ValueError(f"diversity must be one of {DIVERSITIES}, got {diversity!r}")
    if quota_balance not in QUOTA_BALANCES:
        raise ValueError(f"quota_balance must be one of {QUOTA_BALANCES}, got {quota_balance!r}")
    bad = {k: v for k, v in (group_boost or {}).items() if not (np.isfinite(v) and v >= 1)}
    if bad:
        raise ValueError(f"group_boost weights must be finite and at least 1, got {bad}")
    if exploit_weighting not in EXPLOIT_WEIGHTINGS:
        raise ValueError(f"exploit_weighting must be one of {EXPLOIT_WEIGHTINGS}, got {exploit_weighting!r}")
    size = eligible_count_or_warn(utilities, batch_size)
    if size == 0:
        return np.empty(0, dtype=np.int64)
    x = None if features is None else _need_features(features, len(utilities), "hybrid")
    use_quota = groups is not None and (
        min_quota_groups <= 0 or len(np.unique(np.asarray(groups)[np.isfinite(utilities)])) >= min_quota_groups
    )
    n_quota = round(size * quota_fraction / total) if use_quota else 0
    n_explore = round(size * explore_fraction / total)
    n_exploit = max(size - n_quota - n_explore, 0)
    taken = np.zeros(len(utilities), dtype=bool)

    exploit_u = utilities
    if exploit_weighting == "inverse_labelled" and groups is not None and labelled_groups is not None:
        exploit_u = inverse_labelled_weights(utilities, groups, labelled_groups)
    if n_exploit == 0:
        exploit = np.empty(0, dtype=np.int64)
    elif x is None or diversity == "none":
        exploit = top_candidates(exploit_u, n_exploit, rng)
    elif diversity == "cluster":
        exploit = _cluster_pick(exploit_u, n_exploit, rng, x, top_m_factor)
    else:
        ranked = top_candidates(exploit_u, max(n_exploit * top_m_factor, n_exploit), rng)
        xr = x[ranked]
        mean, std = _scaler(xr)
        lab = None
        if labelled_features is not None and len(labelled_features):
            lab = np.nan_to_num(((np.asarray(labelled_features, dtype=np.float32) - mean) / std).astype(np.float32))
        exploit = ranked[_k_center(((xr - mean) / std).astype(np.float32), min(n_exploit, len(ranked)), lab)]
    taken[exploit] = True

    prior = labelled_groups if quota_balance == "labelled" else None
    quota = (_quota_pick(utilities, n_quota, groups, taken, rng, prior, group_boost) if n_quota
             else np.empty(0, dtype=np.int64))
    taken[quota] = True
    explored = _explore_pick(utilities, n_explore, taken, rng, x, explore, explore_pool, representative_sample)
    taken[explored] = True
    chosen = np.concatenate([exploit, quota, explored]).astype(np.int64)
    if len(chosen) < size:
        chosen = _fill(chosen, top_candidates(utilities, len(utilities), rng), size)
    return chosen.astype(np.int64)
