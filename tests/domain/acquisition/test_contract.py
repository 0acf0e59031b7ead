"""One contract every registered strategy and selector must honour."""

from __future__ import annotations

import inspect
import warnings
from typing import get_args

import numpy as np
import pytest

from labelloop.config import HybridParams, SelectorName, StrategyName, TrainParams
from labelloop.domain.acquisition import (
    SELECTORS,
    STRATEGIES,
    BatchShrunkWarning,
    choose,
    get_selector,
    get_strategy,
    score,
    selector_names,
    strategy_names,
)
from labelloop.domain.acquisition.pool import SelectionContext, select_indices
from labelloop.model import LabelloopClassifier
from labelloop.schema import Schema

CLASSES = ["a", "b", "c", "d"]
FAST = TrainParams(n_estimators=8, max_depth=3)
# Keep expected error reduction small in tests: it refits a model per candidate and label.
STRATEGY_PARAMS = {"expected_error_reduction": {"candidate_cap": 6, "eval_size": 50}}


def make_problem(seed: int = 0, n: int = 240, d: int = 5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(len(CLASSES), d))
    y_idx = rng.integers(0, len(CLASSES), size=n)
    X = centers[y_idx] + rng.normal(size=(n, d))
    return X, np.array(CLASSES, dtype=object)[y_idx].astype(str)


# Strategy-level cases that run with non-default selector options (name → selector_params).
SELECTOR_PARAMS = {
    "hybrid_labelled_quota": {"quota_balance": "labelled"},
    "hybrid_inverse_weighted": {"quota_balance": "labelled", "exploit_weighting": "inverse_labelled"},
}


def make_context(strategy: str, X_lab, y_lab, **extra) -> SelectionContext:
    return SelectionContext(
        labelled_rows=X_lab, labelled_labels=y_lab, class_names=CLASSES, train_params=FAST,
        committee_size=3, strategy_params=STRATEGY_PARAMS.get(strategy, {}),
        selector_params=SELECTOR_PARAMS.get(strategy, {}), **extra,
    )


def fitted_probas(X_lab, y_lab, X_pool):
    schema = Schema.numeric([f"x{i}" for i in range(np.shape(X_lab)[1])], CLASSES)
    model = LabelloopClassifier.from_params(FAST, schema).fit(X_lab, y_lab)
    return model.predict_proba(X_pool)


def select(strategy, selector, probas, X, X_lab, y_lab, batch, seed=0):
    context = make_context(strategy, X_lab, y_lab)
    if strategy in SELECTOR_PARAMS:
        strategy, selector = "hybrid", "hybrid"
    return select_indices(
        probas, batch, strategy=strategy, selector=selector, seed=seed, features=X,
        context=context, class_names=CLASSES,
    )


@pytest.fixture(scope="module")
def problem():
    X, y = make_problem()
    lab = np.arange(30)
    pool = np.arange(30, len(X))
    probas = fitted_probas(X[lab], y[lab], X[pool])
    return X, y, lab, pool, probas


STRATEGY_CASES = strategy_names() + sorted(SELECTOR_PARAMS)
SELECTOR_NAMES = selector_names()


def test_tables_are_keyed_by_the_config_choice_types():
    """params.yaml validates against these Literals (and the Prefect form lists them): same names as the tables."""
    assert set(STRATEGIES) == set(get_args(StrategyName))
    assert set(SELECTORS) == set(get_args(SelectorName))
    for spec in STRATEGIES.values():
        assert spec.selector is None or spec.selector in SELECTORS


def test_every_function_states_its_keywords():
    """No catch-all **kwargs: a misspelt keyword must never be swallowed."""
    for spec in [*STRATEGIES.values(), *SELECTORS.values()]:
        kinds = {p.kind for p in inspect.signature(spec.fn).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds, spec.fn.__name__


def test_a_wrong_parameter_is_an_error_naming_the_allowed_ones(problem):
    X, _, _, pool, probas = problem
    with pytest.raises(ValueError, match=r"strategy 'information_density' has no parameter 'betta'; allowed: beta"):
        score("information_density", probas, {"betta": 2.0}, rng=np.random.default_rng(0), features=X[pool])
    with pytest.raises(ValueError, match=r"strategy 'margin' has no parameter 'beta'; allowed: none"):
        score("margin", probas, {"beta": 2.0})
    with pytest.raises(ValueError, match=r"selector 'cluster' has no parameter 'top_m'; allowed: top_m_factor"):
        choose("cluster", np.ones(20), 5, {"top_m": 3}, rng=np.random.default_rng(0), features=np.ones((20, 2)))
    # Through the engine: the context's parameters reach the strategy / the selector that runs.
    context = SelectionContext(strategy_params={"candidate_cap": 3, "eval_sise": 10})
    with pytest.raises(ValueError, match="eval_sise.*allowed: candidate_cap, top_classes, eval_size"):
        select_indices(probas, 5, strategy="expected_error_reduction", features=X[pool], context=context)
    context = SelectionContext(selector_params={"explore_fracton": 0.0})
    with pytest.raises(ValueError, match="selector 'hybrid' has no parameter 'explore_fracton'; allowed: exploit_fraction"):
        select_indices(probas, 5, strategy="hybrid", features=X[pool], context=context)
    with pytest.raises(ValueError, match="selector 'topk' has no parameter 'explore_fraction'; allowed: none"):
        select_indices(probas, 5, strategy="margin", context=SelectionContext(selector_params={"explore_fraction": 0.0}))


def test_engine_inputs_reach_only_the_functions_that_declare_them():
    rng = np.random.default_rng(0)
    probas = rng.dirichlet(np.ones(3), size=30)
    extra = {"rng": np.random.default_rng(0), "features": np.ones((30, 2)), "groups": np.zeros(30, np.int64)}
    np.testing.assert_array_equal(score("margin", probas, **extra), get_strategy("margin").fn(probas))
    assert choose("topk", probas[:, 0], 4, **extra).shape == (4,)
    with pytest.raises(TypeError, match="featurs is not an engine input"):
        score("margin", probas, featurs=np.ones((30, 2)))


def test_hybrid_selector_defaults_are_the_params_yaml_defaults():
    defaults = {p.name: p.default for p in inspect.signature(get_selector("hybrid").fn).parameters.values()}
    assert HybridParams().model_dump() == {name: defaults[name] for name in get_selector("hybrid").parameters}


def test_hybrid_settings_reach_the_hybrid_selector_and_no_other(problem):
    X, _, _, pool, probas = problem

    def hybrid_batch(context=None):
        return select_indices(probas, 20, strategy="hybrid", seed=0, features=X[pool], context=context)[0]

    plain = hybrid_batch()
    np.testing.assert_array_equal(plain, hybrid_batch(SelectionContext(hybrid=HybridParams())))
    settings = HybridParams(exploit_fraction=1.0, quota_fraction=0.0, explore_fraction=0.0, diversity="none")
    exploit_only = hybrid_batch(SelectionContext(hybrid=settings))
    top = select_indices(probas, 20, strategy="margin", seed=0)[0]
    assert set(exploit_only.tolist()) == set(top.tolist()) != set(plain.tolist())
    # Another selector ignores the hybrid settings (they are not its parameters).
    with_settings = select_indices(probas, 20, strategy="margin", seed=0, context=SelectionContext(hybrid=settings))[0]
    np.testing.assert_array_equal(with_settings, top)


def test_registries_hold_the_issue_names():
    for name in ["least_confidence", "margin", "entropy", "ratio", "vote_entropy", "kl_consensus", "bald",
                 "information_density", "expected_error_reduction", "random", "hybrid"]:
        assert name in STRATEGY_CASES
    for name in ["topk", "cluster", "coreset", "hybrid"]:
        assert name in SELECTOR_NAMES
    for name in strategy_names():
        assert get_strategy(name).cost, f"strategy {name} documents no cost"
    for name in SELECTOR_NAMES:
        assert get_selector(name).cost, f"selector {name} documents no cost"


@pytest.mark.parametrize("strategy", STRATEGY_CASES)
def test_strategy_shape_nan_and_reproducible(strategy, problem):
    X, y, lab, pool, probas = problem
    probas = probas.copy()
    bad = np.array([0, 5, 17])
    probas[bad] = np.nan
    chosen, utilities, seconds = select(strategy, "topk", probas, X[pool], X[lab], y[lab], 10, seed=3)
    assert utilities.shape == (len(pool),)
    assert np.isnan(utilities[bad]).all()
    assert np.isfinite(utilities).sum() >= 1
    assert len(chosen) == min(10, int(np.isfinite(utilities).sum()))
    assert len(set(chosen.tolist())) == len(chosen)
    assert not set(chosen.tolist()) & set(bad.tolist())
    assert {"score", "select"} <= set(seconds)
    again, utilities2, _ = select(strategy, "topk", probas, X[pool], X[lab], y[lab], 10, seed=3)
    np.testing.assert_array_equal(chosen, again)
    np.testing.assert_allclose(utilities, utilities2, equal_nan=True)


@pytest.mark.parametrize("strategy", STRATEGY_CASES)
def test_strategy_batch_larger_than_candidates_shrinks(strategy, problem):
    X, y, lab, pool, probas = problem
    sub = pool[:12]
    p = probas[:12].copy()
    p[:4] = np.nan
    with pytest.warns(BatchShrunkWarning):
        chosen, utilities, _ = select(strategy, None, p, X[sub], X[lab], y[lab], 50, seed=1)
    eligible = set(np.flatnonzero(np.isfinite(utilities)).tolist())
    assert set(chosen.tolist()) <= eligible
    assert len(chosen) == len(eligible)


@pytest.mark.parametrize("strategy", STRATEGY_CASES)
def test_strategy_cold_start_and_several_cycles(strategy):
    """The labelled set lacks class 'd'; three cycles grow it without ever picking a row twice."""
    X, y = make_problem(seed=1, n=200)
    lab = list(np.flatnonzero(y != "d")[:12])
    picked: set[int] = set()
    for cycle in range(3):
        pool = np.setdiff1d(np.arange(len(X)), lab)
        probas = fitted_probas(X[lab], y[lab], X[pool])
        assert probas[:, CLASSES.index("d")].max() == 0.0 if cycle == 0 else True
        chosen, _, _ = select(strategy, None, probas, X[pool], X[lab], y[lab], 8, seed=cycle)
        assert len(chosen) == 8
        rows = pool[chosen]
        assert not set(rows.tolist()) & picked
        assert not set(rows.tolist()) & set(lab)
        picked |= set(rows.tolist())
        lab.extend(rows.tolist())
    assert len(lab) == 12 + 3 * 8


# Every selector with its defaults, plus the non-default options a preset or benchmark variant may use.
SELECTOR_CASES = [(name, {}) for name in SELECTOR_NAMES] + [
    ("hybrid", {"quota_balance": "labelled", "labelled_groups": np.r_[np.zeros(60, np.int64), np.ones(5, np.int64)]}),
    ("hybrid", {"quota_balance": "labelled"}),  # no labelled_groups: falls back to "batch"
    ("hybrid", {"exploit_weighting": "inverse_labelled", "quota_balance": "labelled",
                "labelled_groups": np.r_[np.zeros(60, np.int64), np.ones(5, np.int64)]}),
]


@pytest.mark.parametrize("selector,options", SELECTOR_CASES, ids=lambda v: str(v) if isinstance(v, str) else ",".join(v))
def test_selector_contract(selector, options):
    rng = np.random.default_rng(0)
    n = 500
    utilities = rng.random(n)
    utilities[::7] = np.nan
    features = rng.normal(size=(n, 4))
    groups = rng.integers(0, 3, size=n)
    inputs = {k: v for k, v in options.items() if k == "labelled_groups"}
    params = {k: v for k, v in options.items() if k != "labelled_groups"}

    def fn(utilities, batch_size, **kw):
        return choose(selector, utilities, batch_size, params, **inputs, **kw)

    chosen = fn(utilities, 40, rng=np.random.default_rng(5), features=features, groups=groups)
    assert chosen.dtype.kind == "i" and chosen.shape == (40,)
    assert len(set(chosen.tolist())) == 40
    assert np.isfinite(utilities[chosen]).all()
    again = fn(utilities, 40, rng=np.random.default_rng(5), features=features, groups=groups)
    np.testing.assert_array_equal(chosen, again)
    other = fn(utilities, 40, rng=np.random.default_rng(6), features=features, groups=groups)
    assert other.shape == (40,)
    with pytest.warns(BatchShrunkWarning):
        small = fn(utilities[:14], 40, rng=np.random.default_rng(5), features=features[:14], groups=groups[:14])
    assert sorted(small.tolist()) == sorted(np.flatnonzero(np.isfinite(utilities[:14])).tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BatchShrunkWarning)
        none = fn(np.full(5, np.nan), 3, rng=np.random.default_rng(0), features=features[:5], groups=groups[:5])
    assert len(none) == 0
    with pytest.raises(ValueError):
        fn(utilities, 0, rng=np.random.default_rng(0), features=features, groups=groups)


@pytest.mark.parametrize("selector", ["cluster", "coreset"])
def test_diversity_selectors_spread_the_batch(selector):
    """Two tight blobs, the best utilities all in blob A: a diverse batch still reaches blob B."""
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.01, size=(200, 2))
    b = rng.normal(10, 0.01, size=(200, 2))
    features = np.vstack([a, b])
    utilities = np.r_[np.full(200, 1.0) + rng.random(200) * 0.01, np.full(200, 0.9)]
    top = get_selector("topk").fn(utilities, 10, rng=np.random.default_rng(0))
    assert (top < 200).all()
    chosen = get_selector(selector).fn(utilities, 10, rng=np.random.default_rng(0), features=features, top_m_factor=40)
    assert (chosen >= 200).any()


def test_hybrid_quota_feeds_a_starved_group():
    rng = np.random.default_rng(0)
    n = 1000
    groups = np.where(np.arange(n) < 20, 1, 0)  # group 1 is rare and has the lowest utilities
    utilities = np.where(groups == 1, 0.0, 1.0) + rng.random(n) * 0.1
    features = rng.normal(size=(n, 3))
    chosen = get_selector("hybrid").fn(
        utilities, 50, rng=np.random.default_rng(1), features=features, groups=groups, explore_fraction=0.0,
    )
    assert (groups[chosen] == 1).sum() >= 5
    topk = get_selector("topk").fn(utilities, 50, rng=np.random.default_rng(1))
    assert (groups[topk] == 1).sum() == 0


def test_hybrid_rejects_bad_fractions():
    with pytest.raises(ValueError, match="exploit_fraction"):
        get_selector("hybrid").fn(np.ones(10), 2, rng=np.random.default_rng(0), exploit_fraction=1.5)
    with pytest.raises(ValueError, match="diversity"):
        get_selector("hybrid").fn(np.ones(10), 2, rng=np.random.default_rng(0), diversity="nope")


def test_committee_strategies_measure_disagreement():
    agree = np.tile(np.array([[0.9, 0.1], [0.6, 0.4]])[None], (4, 1, 1))
    split = np.stack([np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([[0.1, 0.9], [0.1, 0.9]])] * 2)
    probas = agree.mean(axis=0)
    for name in ["vote_entropy", "kl_consensus", "bald"]:
        fn = get_strategy(name).fn
        np.testing.assert_allclose(fn(probas, committee=agree), 0.0, atol=1e-9)
        assert (fn(probas, committee=split) > 0.1).all()
    with pytest.raises(ValueError, match="committee"):
        get_strategy("bald").fn(probas)


def test_hybrid_preset_implies_the_hybrid_selector(problem):
    from labelloop.domain.acquisition.registry import resolve_selector

    assert resolve_selector("hybrid", "topk") == "hybrid"
    assert resolve_selector("hybrid", None) == "hybrid"
    assert resolve_selector("hybrid", "coreset") == "coreset"
    assert resolve_selector("margin", None) == "topk"


def test_information_density_prefers_dense_rows():
    rng = np.random.default_rng(0)
    dense = rng.normal(0, 0.1, size=(300, 2))
    outliers = rng.normal(0, 0.1, size=(5, 2)) + 8
    features = np.vstack([dense, outliers])
    probas = np.full((len(features), 2), 0.5)
    u = get_strategy("information_density").fn(probas, rng=np.random.default_rng(0), features=features)
    assert u[:300].min() > u[300:].max()


def test_hybrid_min_quota_groups_moves_the_quota_share_to_exploitation():
    rng = np.random.default_rng(0)
    n = 1000
    utilities = rng.random(n)
    features = rng.normal(size=(n, 3))
    two = (np.arange(n) % 2).astype(np.int64)
    three = (np.arange(n) % 3).astype(np.int64)
    fn = get_selector("hybrid").fn
    kw = dict(rng=np.random.default_rng(1), features=features, explore_fraction=0.0, diversity="none")
    # Two groups, min 3: no quota, so the batch is the plain top by utility.
    no_quota = fn(utilities, 50, groups=two, min_quota_groups=3, **kw)
    top = get_selector("topk").fn(utilities, 50, rng=np.random.default_rng(1))
    assert set(no_quota.tolist()) == set(top.tolist())
    # Three groups: the quota applies exactly as with the default (0 = always).
    a = fn(utilities, 50, groups=three, min_quota_groups=3, **{**kw, "rng": np.random.default_rng(1)})
    b = fn(utilities, 50, groups=three, **{**kw, "rng": np.random.default_rng(1)})
    np.testing.assert_array_equal(a, b)


def test_hybrid_quota_balance_labelled_fills_the_rarest_labelled_group():
    rng = np.random.default_rng(0)
    n = 900
    utilities = rng.random(n)
    features = rng.normal(size=(n, 3))
    groups = (np.arange(n) % 3).astype(np.int64)
    fn = get_selector("hybrid").fn
    kw = dict(features=features, groups=groups, explore_fraction=0.0, diversity="none")
    labelled = np.r_[np.zeros(200, np.int64), np.ones(150, np.int64), np.full(10, 2, np.int64)]
    batch = fn(utilities, 50, rng=np.random.default_rng(1), **kw)
    balanced = fn(utilities, 50, rng=np.random.default_rng(1), quota_balance="labelled", labelled_groups=labelled, **kw)
    n_quota = round(50 * 0.2 / 0.9)
    # Exploitation is unchanged; the whole quota goes to group 2, rarest among the labelled rows.
    np.testing.assert_array_equal(batch[:-n_quota], balanced[:-n_quota])
    assert (groups[balanced[-n_quota:]] == 2).all()
    assert len(set(groups[batch[-n_quota:]].tolist())) > 1
    # The default ignores labelled_groups: today's behaviour.
    again = fn(utilities, 50, rng=np.random.default_rng(1), labelled_groups=labelled, **kw)
    np.testing.assert_array_equal(batch, again)
    with pytest.raises(ValueError, match="quota_balance"):
        fn(utilities, 50, rng=np.random.default_rng(1), quota_balance="nope", **kw)


def test_labelled_quota_counts_the_labelled_classes_through_select_indices(problem):
    X, y, lab, pool, probas = problem
    ctx = SelectionContext(
        labelled_rows=X[lab], labelled_labels=y[lab], class_names=CLASSES,
        selector_params={"quota_balance": "labelled", "explore_fraction": 0.0, "diversity": "none"},
    )
    chosen, _, _ = select_indices(probas, 20, strategy="hybrid", seed=0, features=X[pool], context=ctx, class_names=CLASSES)
    n_quota = round(20 * 0.2 / 0.9)
    predicted = np.argmax(probas, axis=1)
    # The first quota pick's predicted class has the fewest labelled rows + exploit picks among the classes left.
    exploit = chosen[:-n_quota]
    left = np.setdiff1d(np.arange(len(pool)), exploit)
    count = {c: int((y[lab] == CLASSES[c]).sum() + (predicted[exploit] == c).sum()) for c in np.unique(predicted[left])}
    assert count[int(predicted[chosen[-n_quota]])] == min(count.values())


def test_hybrid_inverse_labelled_weighting_favours_the_rare_labelled_group():
    from labelloop.domain.acquisition.selectors import inverse_labelled_weights

    rng = np.random.default_rng(0)
    n = 900
    utilities = -rng.random(n)  # margin-like: negative, higher is better
    utilities[::11] = np.nan
    groups = (np.arange(n) % 3).astype(np.int64)
    labelled = np.r_[np.zeros(200, np.int64), np.ones(90, np.int64), np.full(10, 2, np.int64)]
    w = inverse_labelled_weights(utilities, groups, labelled)
    assert np.isnan(w[::11]).all() and (w[np.isfinite(w)] >= 0).all()
    # Within a group the order is the utility's; across groups group 2 (10 labelled rows) is scaled ×10 vs 1.
    g2 = np.isfinite(utilities) & (groups == 2)
    assert np.array_equal(np.argsort(w[g2]), np.argsort(utilities[g2]))
    fn = get_selector("hybrid").fn
    kw = dict(features=rng.normal(size=(n, 3)), groups=groups, labelled_groups=labelled,
              explore_fraction=0.0, quota_fraction=0.0, diversity="none")
    plain = fn(utilities, 60, rng=np.random.default_rng(1), **kw)
    weighted = fn(utilities, 60, rng=np.random.default_rng(1), exploit_weighting="inverse_labelled", **kw)
    assert (groups[weighted] == 2).sum() > (groups[plain] == 2).sum()
    with pytest.raises(ValueError, match="exploit_weighting"):
        fn(utilities, 60, rng=np.random.default_rng(1), exploit_weighting="nope", **kw)


def test_labelled_class_indices_only_when_an_option_reads_them():
    from labelloop.domain.acquisition.pool import _labelled_class_indices

    labels = np.array(["b", "a", "zz", "d"])
    on = SelectionContext(labelled_labels=labels)
    np.testing.assert_array_equal(_labelled_class_indices(on, CLASSES, {"quota_balance": "labelled"}), [1, 0, -1, 3])
    assert _labelled_class_indices(on, CLASSES, {}) is None
    column = SelectionContext(labelled_labels=labels, group_column="segment")
    assert _labelled_class_indices(column, CLASSES, {"quota_balance": "labelled"}) is None
