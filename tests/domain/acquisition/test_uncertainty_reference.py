"""The fast uncertainty kernels equal the naive textbook definitions exactly (not approximately)."""

from __future__ import annotations

import numpy as np
import pytest

from labelloop.domain.acquisition import get_strategy, score, strategies
from labelloop.domain.acquisition.pool import select_indices


def _reference_rows(probas):
    p = np.asarray(probas, dtype=np.float64)
    ok = np.isfinite(p).all(axis=1) if p.shape[1] else np.zeros(len(p), bool)
    return np.where(ok[:, None], p, 0.0), ok


def _reference_top_two(p):
    if p.shape[1] == 1:
        return p[:, 0], np.zeros(len(p))
    s = np.sort(p, axis=1)
    return s[:, -1], s[:, -2]


def _nan_where_bad(value, ok):
    value = np.array(value, dtype=np.float64)
    value[~ok] = np.nan
    return value


def reference(name, probas):
    p, ok = _reference_rows(probas)
    if p.shape[1] == 0:
        return np.full(len(p), np.nan)
    first, second = _reference_top_two(p)
    if name == "margin":
        return _nan_where_bad(-(first - second), ok)
    if name == "least_confidence":
        return _nan_where_bad(1.0 - np.max(p, axis=1, initial=0.0), ok)
    if name == "ratio":
        with np.errstate(divide="ignore", invalid="ignore"):
            return _nan_where_bad(np.where(first > 0, second / first, 0.0), ok)
    if name == "entropy":
        c = np.clip(p, 1e-12, 1.0)
        return _nan_where_bad(-(c * np.log(c)).sum(axis=1), ok)
    raise AssertionError(name)


def messy_probas(n, k, dtype, seed=0):
    """Dirichlet rows plus the awkward cases: ties, exact zeros/ones, tiny values, NaN and ±inf rows."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.3), size=n)
    if k >= 2:
        p[1] = 1.0 / k  # all tied
        p[2, :2] = 0.5  # top-2 tied
        p[2, 2:] = 0.0
        p[3] = 0.0
        p[3, 0] = 1.0
        p[4] = 1e-14  # below the entropy clip
        p[4, -1] = 1.0 - 1e-14 * (k - 1)
        p[5, -2:] = [0.4, 0.4]  # tie on the last columns
    p[6, 0] = np.nan
    p[7, -1] = np.inf
    p[8, 0] = -np.inf
    p[9] = np.nan
    return p.astype(dtype)


@pytest.mark.parametrize("name", ["margin", "least_confidence", "ratio", "entropy"])
@pytest.mark.parametrize("k", [1, 2, 3, 10, 26])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_reference_definition(name, k, dtype, monkeypatch):
    # Small blocks so a few hundred rows cross several block boundaries (and a ragged last block).
    monkeypatch.setattr(strategies, "CHUNK_ROWS", 37)
    probas = messy_probas(301, k, dtype, seed=k)
    got = score(name, probas, rng=np.random.default_rng(0))
    assert got.dtype == np.float64 and got.shape == (301,)
    np.testing.assert_array_equal(got, reference(name, probas))
    assert np.isnan(got[6:10]).all()


@pytest.mark.parametrize("name", ["margin", "least_confidence", "ratio", "entropy", "random"])
def test_no_classes_and_no_rows(name):
    rng = np.random.default_rng(0)
    assert np.isnan(score(name, np.empty((4, 0)), rng=rng)).all()
    assert score(name, np.empty((0, 3)), rng=rng).shape == (0,)


def test_input_is_not_modified_and_ints_are_accepted():
    probas = messy_probas(50, 4, np.float32)
    before = probas.copy()
    for name in ["margin", "least_confidence", "ratio", "entropy"]:
        get_strategy(name).fn(probas)
    np.testing.assert_array_equal(probas, before)
    as_int = np.array([[1, 0], [0, 1], [1, 1]])
    np.testing.assert_array_equal(get_strategy("margin").fn(as_int), [-1.0, -1.0, -0.0])


def test_select_indices_float32_equals_float64_path():
    """float32 probas are no longer copied to float64 up front; the selection is the same."""
    probas = messy_probas(2000, 10, np.float32, seed=3)
    for strategy in ["margin", "entropy", "hybrid"]:
        features = np.random.default_rng(1).normal(size=(2000, 4))
        a, ua, _ = select_indices(probas, 50, strategy=strategy, seed=7, features=features)
        b, ub, _ = select_indices(probas.astype(np.float64), 50, strategy=strategy, seed=7, features=features)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ua, ub)
