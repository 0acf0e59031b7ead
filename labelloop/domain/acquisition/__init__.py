"""Acquisition: strategies turn probabilities into utilities, selectors turn utilities into a batch.

A strategy is a pure function `(probas, *, rng, features=None, committee=None) -> utilities`,
one utility per row, higher = label first, NaN = may not be picked. A selector is
`(utilities, batch_size, *, rng, features=None, groups=None) -> row indices`.
Both are looked up by name in a registry so `params.yaml` and the CLI can name them.
"""

from labelloop.domain.acquisition.registry import (
    SELECTORS,
    STRATEGIES,
    StrategySpec,
    get_selector,
    get_strategy,
    selector_names,
    strategy_names,
)
from labelloop.domain.acquisition.selectors import BatchShrunkWarning

# Importing the modules registers their entries.
from labelloop.domain.acquisition import strategies as _strategies  # noqa: F401,E402
from labelloop.domain.acquisition import selectors as _selectors  # noqa: F401,E402

__all__ = [
    "SELECTORS",
    "STRATEGIES",
    "BatchShrunkWarning",
    "StrategySpec",
    "get_selector",
    "get_strategy",
    "selector_names",
    "strategy_names",
]
