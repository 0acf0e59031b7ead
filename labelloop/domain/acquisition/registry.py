"""Name → function registries for strategies and selectors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class StrategySpec:
    name: str
    fn: Callable[..., np.ndarray]
    needs: frozenset[str] = field(default_factory=frozenset)  # subset of {"features", "committee", "labelled"}
    cost: str = ""  # one line for the docs: time and memory per candidate
    chunkable: bool = True  # utilities of a row depend only on that row (so the pool can stream)
    selector: str | None = None  # a preset: the selector this strategy name implies


@dataclass(frozen=True)
class SelectorSpec:
    name: str
    fn: Callable[..., np.ndarray]
    needs: frozenset[str] = field(default_factory=frozenset)
    cost: str = ""


STRATEGIES: dict[str, StrategySpec] = {}
SELECTORS: dict[str, SelectorSpec] = {}


KNOWN_NEEDS = frozenset({"features", "committee", "labelled"})


def register_strategy(
    name: str,
    *,
    needs: tuple[str, ...] = (),
    cost: str = "",
    chunkable: bool = True,
    selector: str | None = None,
):
    unknown = set(needs) - KNOWN_NEEDS
    if unknown:
        raise ValueError(f"strategy {name!r}: unknown needs {sorted(unknown)}; allowed: {sorted(KNOWN_NEEDS)}")

    def decorate(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        STRATEGIES[name] = StrategySpec(name, fn, frozenset(needs), cost, chunkable, selector)
        return fn

    return decorate


def register_selector(name: str, *, needs: tuple[str, ...] = (), cost: str = ""):
    def decorate(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        SELECTORS[name] = SelectorSpec(name, fn, frozenset(needs), cost)
        return fn

    return decorate


def _ensure_loaded() -> None:
    # The registries fill when the modules are imported; importing here avoids a cycle.
    from labelloop.domain.acquisition import selectors, strategies  # noqa: F401


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


def resolve_selector(strategy: str, selector: str | None) -> str:
    """The selector to use: a preset strategy's own selector unless another non-default one is named."""
    spec = get_strategy(strategy)
    if spec.selector is not None and selector in (None, "topk"):
        return spec.selector
    return selector or "topk"


def get_selector(name: str) -> SelectorSpec:
    _ensure_loaded()
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; allowed: {', '.join(sorted(SELECTORS))}")
    return SELECTORS[name]
