"""Selectors: utilities → batch of row indices, best first."""

from __future__ import annotations

import warnings

import numpy as np

from labelloop.acquisition.registry import register_selector


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


@register_selector("topk", cost="O(n) time (argpartition) + O(b log b)")
def topk(utilities: np.ndarray, batch_size: int, *, rng: np.random.Generator, **_: object) -> np.ndarray:
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
