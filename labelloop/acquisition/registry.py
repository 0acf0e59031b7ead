"""Name → function registries for strategies and selectors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class StrategySpec:
    name: str
    fn: Callable[..., np.ndarray]
    needs: frozenset[str] = field(default_factory=frozenset)  # subset of {"features", "committee"}
    cost: str = ""  # one line for the docs: time and memory per candidate
    chunkable: bool = True  # utilities of a row depend only on that row (so the pool can stream)


@dataclass(frozen=True)
class SelectorSpec:
    name: str
    fn: Callable[..., np.ndarray]
    needs: frozenset[str] = field(default_factory=frozenset)
    cost: str = ""


STRATEGIES: dict[str, StrategySpec] = {}
SELECTORS: dict[str, SelectorSpec] = {}


def register_strategy(name: str, *, needs: tuple[str, ...] = (), cost: str = "", chunkable: bool = True):
    def decorate(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        STRATEGIES[name] = StrategySpec(name, fn, frozenset(needs), cost, chunkable)
        return fn

    return decorate


def register_selector(name: str, *, needs: tuple[str, ...] = (), cost: str = ""):
    def decorate(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        SELECTORS[name] = SelectorSpec(name, fn, frozenset(needs), cost)
        return fn

    return decorate


def _ensure_loaded() -> None:
    # The registries fill when the modules are imported; importing here avoids a cycle.
    from labelloop.acquisition import selectors, strategies  # noqa: F401


def strategy_names() -> list[str]:
    _ensure_loaded()
    return sorted(STRATEGIES)


def selector_names() -> list[str]:
    _ensure_loaded()
    return sorted(SELECTORS)


def get_strategy(name: str) -> StrategySpec:
    _ensure_loaded()
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def get_selector(name: str) -> SelectorSpec:
    _ensure_loaded()
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; allowed: {', '.join(sorted(SELECTORS))}")
    return SELECTORS[name]
