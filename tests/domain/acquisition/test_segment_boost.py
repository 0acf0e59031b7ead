"""The hybrid selector's quota weights per segment (a drifted or under-performing segment gets more)."""

import numpy as np
import pandas as pd
import pytest

from labelloop.domain.acquisition import get_selector
from labelloop.domain.acquisition.pool import SelectionContext, select_from_frame


def quota_only(groups, boost, size=40):
    utilities = np.random.default_rng(0).random(len(groups))
    return get_selector("hybrid").fn(utilities, size, rng=np.random.default_rng(1), groups=groups, exploit_fraction=0.0,
                                     quota_fraction=1.0, explore_fraction=0.0, group_boost=boost)


def test_a_boosted_group_takes_its_weight_in_turns_of_the_quota():
    groups = np.array(["a", "b", "c", "d"] * 100, dtype=object)
    even = pd.Series(groups[quota_only(groups, None)]).value_counts()
    assert set(even) == {10}  # round-robin: an even split
    boosted = pd.Series(groups[quota_only(groups, {"b": 2.0, "d": 3.0})]).value_counts()
    assert (boosted["a"], boosted["b"], boosted["c"], boosted["d"]) == (6, 11, 6, 17)  # weights 1:2:1:3 of 40
    assert boosted.sum() == 40


def test_boost_weights_below_one_are_refused():
    with pytest.raises(ValueError, match="group_boost"):
        quota_only(np.array(["a", "b"] * 10, dtype=object), {"a": 0.5}, size=4)


def test_the_selection_context_passes_the_boost_to_the_selectors_that_declare_it():
    rng = np.random.default_rng(3)
    n = 600
    pool = pd.DataFrame({"item_id": [f"i{i}" for i in range(n)], "x": rng.normal(size=n),
                         "segment": np.array(["new", "old", "mid"])[np.arange(n) % 3],
                         "proba_a": rng.random(n)})
    pool["proba_b"] = 1 - pool["proba_a"]
    picks = {}
    for boost in ({}, {"new": 4.0}):
        context = SelectionContext(group_column="segment", group_boost=boost)
        selection = select_from_frame(pool, strategy="hybrid", batch_size=60, seed=0, feature_columns=["x"],
                                      id_column="item_id", context=context)
        picks[bool(boost)] = int((selection.rows["segment"] == "new").sum())
    assert picks[True] > picks[False]
    # Other selectors do not declare the input and never get it.
    context = SelectionContext(group_column="segment", group_boost={"new": 4.0})
    topk = select_from_frame(pool, strategy="margin", selector="topk", batch_size=60, seed=0, feature_columns=["x"],
                             id_column="item_id", context=context)
    assert len(topk.item_ids) == 60


def test_a_streamed_pool_boosts_the_same_segment(tmp_path):
    from labelloop.domain.acquisition.pool import select_from_parquet

    rng = np.random.default_rng(4)
    n = 900
    pool = pd.DataFrame({"item_id": [f"i{i}" for i in range(n)], "x": rng.normal(size=n),
                         "segment": np.array(["new", "old", "mid"])[np.arange(n) % 3], "proba_a": rng.random(n)})
    pool["proba_b"] = 1 - pool["proba_a"]
    path = tmp_path / "pool.parquet"
    pool.to_parquet(path)
    picks = {}
    for boost in ({}, {"new": 4.0}):
        context = SelectionContext(group_column="segment", group_boost=boost)
        selection = select_from_parquet(path, strategy="hybrid", selector=None, batch_size=60, seed=0, chunk_size=300,
                                        context=context, id_column="item_id")
        picks[bool(boost)] = int((selection.rows["segment"] == "new").sum())
    assert picks[True] > picks[False]
