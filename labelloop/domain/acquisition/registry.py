"""The strategy and selector tables: every name `params.yaml`, the CLI and the simulator may use.

A strategy turns probabilities into utilities (strategies.py), a selector turns utilities into a batch
(selectors.py). Each function declares exactly the keywords it reads, of two kinds:
- inputs (INPUTS: the seeded rng, features, committee, labelled set, groups, ...), which the engine
  (pool.py) supplies, each function getting only those it declares;
- parameters (e.g. `beta`, `top_m_factor`, the hybrid settings), which a caller chooses: a name the
  function does not declare is an error naming the allowed ones, never silently ignored.
The tables are keyed by exactly the names of `StrategyName` / `SelectorName` in labelloop/config.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from labelloop.config import SelectorName, StrategyName
from labelloop.domain.acquisition import selectors, strategies

# Keywords the engine supplies (what it knows about the pool and the labelled set); a function's other
# keywords are parameters a caller may set. Two views of the rows:
# - `features` / `labelled_features`: the selection space (space.py), a dense float matrix to measure
#   distances in (raw numeric columns, or the model's transformed features with text reduced by SVD);
# - `rows` / `labelled_rows`: the rows as the model reads them (the schema's feature columns), for
#   strategies that fit models (expected error reduction); `schema` describes them.
INPUTS = frozenset({
    "rng", "features", "rows", "committee", "labelled_features", "labelled_rows", "labelled_labels", "class_names",
    "schema", "train_params", "groups", "labelled_groups", "explore_pool", "group_boost",
})

# What declaring an input means for the engine: features to compute, model rows to pass on, a committee
# to train, the labelled set to require or pass on, groups to compute.
_NEEDS_OF_INPUT = {"features": "features", "rows": "rows", "committee": "committee", "labelled_features": "labelled",
                   "labelled_rows": "labelled", "groups": "groups"}


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., np.ndarray]
    cost: str  # one line for `labelloop strategies`: time and memory per candidate

    @cached_property
    def keywords(self) -> tuple[str, ...]:
        """Every keyword the function declares, in order (inputs and parameters)."""
        return tuple(p.name for p in inspect.signature(self.fn).parameters.values() if p.kind is p.KEYWORD_ONLY)

    @property
    def parameters(self) -> tuple[str, ...]:
        """The keywords a caller may set."""
        return tuple(k for k in self.keywords if k not in INPUTS)

    @property
    def needs(self) -> frozenset[str]:
        """Subset of {"features", "rows", "committee", "labelled", "groups"}, read off the declared inputs."""
        return frozenset(need for keyword, need in _NEEDS_OF_INPUT.items() if keyword in self.keywords)

    def check(self, what: str, params: Mapping[str, object]) -> None:
        """A ValueError naming the allowed parameters if `params` holds another name."""
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            allowed = ", ".join(self.parameters) or "none"
            raise ValueError(f"{what} has no parameter {', '.join(map(repr, unknown))}; allowed: {allowed}")

    def arguments(self, what: str, inputs: Mapping[str, object], params: Mapping[str, object]) -> dict[str, object]:
        """The declared inputs out of `inputs`, plus `params` once each is known to be a parameter."""
        unknown = sorted(set(inputs) - INPUTS)
        if unknown:
            raise TypeError(f"{what}: {', '.join(unknown)} is not an engine input; inputs: {', '.join(sorted(INPUTS))}")
        self.check(what, params)
        return {**{k: v for k, v in inputs.items() if k in self.keywords}, **params}


@dataclass(frozen=True)
class StrategySpec(_Entry):
    chunkable: bool = True  # utilities of a row depend only on that row (so the pool can stream)
    selector: SelectorName | None = None  # a preset: the selector this strategy name implies


@dataclass(frozen=True)
class SelectorSpec(_Entry):
    pass


_COMMITTEE_COST = "O(m·n·k) time, O(n·k) memory; plus training m committee members once per selection"

STRATEGIES: dict[StrategyName, StrategySpec] = {
    "least_confidence": StrategySpec(strategies.least_confidence, "O(n·k) time, O(n) memory"),
    "margin": StrategySpec(strategies.margin, "O(n·k) time (running top-2, no sort), O(n) memory"),
    "ratio": StrategySpec(strategies.ratio, "O(n·k) time (running top-2, no sort), O(n) memory"),
    "entropy": StrategySpec(strategies.entropy, "O(n·k) time, O(block·k) temporary memory"),
    "random": StrategySpec(strategies.random, "O(n) time and memory"),
    "vote_entropy": StrategySpec(strategies.vote_entropy, _COMMITTEE_COST),
    "kl_consensus": StrategySpec(strategies.kl_consensus, _COMMITTEE_COST),
    "bald": StrategySpec(strategies.bald, _COMMITTEE_COST),
    "information_density": StrategySpec(
        strategies.information_density,
        "O(n·c·d) time for c=64 centroids (k-means on a 20k sample), O(chunk·c) memory; needs the whole pool",
        chunkable=False,
    ),
    "expected_error_reduction": StrategySpec(
        strategies.expected_error_reduction,
        f"{strategies.EER_CANDIDATE_CAP} candidates × {strategies.EER_TOP_CLASSES} labels = "
        f"{strategies.EER_CANDIDATE_CAP * strategies.EER_TOP_CLASSES} refits of train's pipeline ({strategies.EER_TREES} "
        f"trees for tree ensembles) + predictions on {strategies.EER_EVAL_SIZE} rows; seconds to minutes, independent of n "
        "beyond one margin pass",
        chunkable=False,
    ),
    # A preset: margin utilities, batched by the hybrid selector with the `select.hybrid` settings.
    "hybrid": StrategySpec(
        strategies.margin,
        "margin utilities (O(n·k)) + the hybrid selector: k-means over the top 10·b, a random/representative "
        "share and per-class quotas",
        selector="hybrid",
    ),
}

SELECTORS: dict[SelectorName, SelectorSpec] = {
    "topk": SelectorSpec(selectors.topk, "O(n) time (argpartition) + O(b log b)"),
    "cluster": SelectorSpec(
        selectors.cluster, "O(n) to take the top M=10·b, then k-means (k=b, random init, ≤30 Lloyd iterations) on M×d"
    ),
    "coreset": SelectorSpec(
        selectors.coreset, "O(n) to take the top M=10·b, then greedy k-center: b passes over M×d (~1 s for b=1,000, d=32)"
    ),
    "hybrid": SelectorSpec(
        selectors.hybrid, "cluster/coreset on the exploit share + O(n log n) per-group ranking + O(n) random draw"
    ),
}


def strategy_names() -> list[str]:
    return sorted(STRATEGIES)


def selector_names() -> list[str]:
    return sorted(SELECTORS)


def get_strategy(name: str) -> StrategySpec:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def get_selector(name: str) -> SelectorSpec:
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; allowed: {', '.join(sorted(SELECTORS))}")
    return SELECTORS[name]


def resolve_selector(strategy: str, selector: str | None) -> str:
    """The selector to use: a preset strategy's own selector unless another non-default one is named."""
    spec = get_strategy(strategy)
    if spec.selector is not None and selector in (None, "topk"):
        return spec.selector
    return selector or "topk"


def score(name: str, probas: np.ndarray, params: Mapping[str, object] | None = None, **inputs: object) -> np.ndarray:
    """Utilities of strategy `name`: it gets the `inputs` it declares and the `params` (each must be one of its parameters)."""
    spec = get_strategy(name)
    return spec.fn(probas, **spec.arguments(f"strategy {name!r}", inputs, params or {}))


def choose(
    name: str, utilities: np.ndarray, batch_size: int, params: Mapping[str, object] | None = None, **inputs: object
) -> np.ndarray:
    """Row indices of a batch by selector `name`, best first; inputs and params as in `score`."""
    spec = get_selector(name)
    arguments = spec.arguments(f"selector {name!r}", inputs, params or {})
    return np.asarray(spec.fn(utilities, batch_size, **arguments), dtype=np.int64)
