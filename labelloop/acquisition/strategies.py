"""Uncertainty and random strategies: O(n·k) time, O(n) extra memory, fully vectorized."""

from __future__ import annotations

import numpy as np

from labelloop.acquisition.registry import register_strategy


def _valid_probas(probas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float probas and a mask of rows that are usable (finite, non-empty)."""
    probas = np.asarray(probas, dtype=np.float64)
    if probas.ndim != 2:
        raise ValueError(f"probas must be 2-D (rows × classes), got shape {probas.shape}")
    ok = np.isfinite(probas).all(axis=1) if probas.shape[1] else np.zeros(len(probas), bool)
    return probas, ok


def _masked(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64).copy()
    out[~ok] = np.nan
    return out


@register_strategy("least_confidence", cost="O(n·k) time, O(n) memory")
def least_confidence(probas: np.ndarray, **_: object) -> np.ndarray:
    probas, ok = _valid_probas(probas)
    top = np.max(np.where(ok[:, None], probas, 0.0), axis=1, initial=0.0)
    return _masked(1.0 - top, ok)


def _top_two(probas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if probas.shape[1] == 1:
        first = probas[:, 0]
        return first, np.zeros_like(first)
    part = np.partition(probas, -2, axis=1)
    return part[:, -1], part[:, -2]


@register_strategy("margin", cost="O(n·k) time (partial sort), O(n) memory")
def margin(probas: np.ndarray, **_: object) -> np.ndarray:
    probas, ok = _valid_probas(probas)
    first, second = _top_two(np.where(ok[:, None], probas, 0.0))
    return _masked(-(first - second), ok)


@register_strategy("ratio", cost="O(n·k) time (partial sort), O(n) memory")
def ratio(probas: np.ndarray, **_: object) -> np.ndarray:
    """Second-best over best probability: 1 means a tie."""
    probas, ok = _valid_probas(probas)
    first, second = _top_two(np.where(ok[:, None], probas, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(first > 0, second / first, 0.0)
    return _masked(value, ok)


@register_strategy("entropy", cost="O(n·k) time, O(n·k) temporary memory per chunk")
def entropy(probas: np.ndarray, **_: object) -> np.ndarray:
    probas, ok = _valid_probas(probas)
    clipped = np.clip(np.where(ok[:, None], probas, 0.0), 1e-12, 1.0)
    value = -(clipped * np.log(clipped)).sum(axis=1)
    return _masked(value, ok)


@register_strategy("random", cost="O(n) time and memory")
def random(probas: np.ndarray, *, rng: np.random.Generator | None = None, **_: object) -> np.ndarray:
    if rng is None:
        raise ValueError("the random strategy needs a seeded rng")
    probas, ok = _valid_probas(probas)
    return _masked(rng.random(len(probas)), ok)
