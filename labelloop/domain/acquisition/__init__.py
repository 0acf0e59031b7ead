"""Acquisition: strategies turn probabilities into utilities, selectors turn utilities into a batch.

A strategy is a pure function `(probas, *, <inputs and parameters it declares>) -> utilities`, one
utility per row, higher = label first, NaN = may not be picked. A selector is
`(utilities, batch_size, *, <inputs and parameters it declares>) -> row indices`, best first.
Both are named in the tables of registry.py so `params.yaml` and the CLI can name them.
"""

from labelloop.domain.acquisition.registry import (
    SELECTORS,
    STRATEGIES,
    SelectorSpec,
    StrategySpec,
    choose,
    get_selector,
    get_strategy,
    resolve_selector,
    score,
    selector_names,
    strategy_names,
)
from labelloop.domain.acquisition.selectors import BatchShrunkWarning

__all__ = [
    "SELECTORS",
    "STRATEGIES",
    "BatchShrunkWarning",
    "SelectorSpec",
    "StrategySpec",
    "choose",
    "get_selector",
    "get_strategy",
    "resolve_selector",
    "score",
    "selector_names",
    "strategy_names",
]
