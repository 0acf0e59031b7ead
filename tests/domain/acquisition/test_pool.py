"""Selecting from prediction-log pools: frames, streamed parquet files, the file-to-file entry point."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelloop.config import TrainParams
from labelloop.domain.acquisition.pool import (
    SelectionContext,
    select_from_frame,
    select_from_parquet,
    select_pool_to_file,
)


def overconfident(rng, n, k):
    """Labels drawn from softmax(z); the model reports softmax(3z): too sure of itself."""
    z = rng.normal(scale=1.5, size=(n, k))
    true = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = (rng.random((n, 1)) > true.cumsum(axis=1)).sum(axis=1).clip(0, k - 1)
    reported = np.exp(3 * z) / np.exp(3 * z).sum(axis=1, keepdims=True)
    return reported, labels


def make_pool(n: int = 3000, k: int = 4, d: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    probas = rng.dirichlet(np.ones(k) * 0.5, size=n)
    frame = pd.DataFrame(rng.normal(size=(n, d)), columns=[f"x{i}" for i in range(d)])
    for j in range(k):
        frame[f"proba_c{j}"] = probas[:, j]
    frame.insert(0, "prediction_id", [f"p{i}" for i in range(n)])
    frame.insert(1, "ts", pd.Timestamp("2026-01-01"))
    frame.insert(2, "model_version", "1")
    frame["predicted"] = [f"c{j}" for j in probas.argmax(axis=1)]
    frame["confidence"] = probas.max(axis=1)
    frame["segment"] = np.where(rng.random(n) < 0.03, "rare", "common")
    return frame


def test_streamed_topk_equals_in_memory(tmp_path):
    pool = make_pool()
    path = tmp_path / "pool.parquet"
    pool.to_parquet(path)
    whole = select_from_frame(pool, strategy="margin", selector="topk", batch_size=50, seed=0)
    streamed = select_from_parquet(path, strategy="margin", selector="topk", batch_size=50, seed=0, chunk_size=700)
    assert set(whole.item_ids) == set(streamed.item_ids)
    assert streamed.n_candidates == len(pool)


@pytest.mark.parametrize("strategy,selector", [("hybrid", None), ("margin", "cluster"), ("entropy", "coreset")])
def test_streamed_diversity_selection_is_seeded(tmp_path, strategy, selector):
    path = tmp_path / "pool.parquet"
    make_pool().to_parquet(path)
    a = select_from_parquet(path, strategy=strategy, selector=selector, batch_size=40, seed=3, chunk_size=500)
    b = select_from_parquet(path, strategy=strategy, selector=selector, batch_size=40, seed=3, chunk_size=500)
    assert a.item_ids == b.item_ids and len(set(a.item_ids)) == 40


def test_hybrid_segment_quota_from_a_column(tmp_path):
    pool = make_pool()
    path = tmp_path / "pool.parquet"
    pool.to_parquet(path)
    ctx = SelectionContext(group_column="segment")
    sel = select_from_parquet(path, strategy="hybrid", selector=None, batch_size=40, seed=0, chunk_size=600, context=ctx)
    assert (sel.rows["segment"] == "rare").sum() >= 4
    assert "segment" in sel.rows.columns


def test_committee_strategy_needs_context_then_works(tmp_path):
    pool = make_pool(n=800)
    path = tmp_path / "pool.parquet"
    pool.to_parquet(path)
    with pytest.raises(ValueError, match="labelled set"):
        select_from_parquet(path, strategy="bald", selector="topk", batch_size=10, seed=0)
    rng = np.random.default_rng(1)
    X_lab = rng.normal(size=(40, 6))
    y_lab = np.array(["c0", "c1", "c2"])[rng.integers(0, 3, 40)]  # c3 never labelled: cold start
    ctx = SelectionContext(labelled_rows=X_lab, labelled_labels=y_lab, class_names=["c0", "c1", "c2", "c3"],
                           train_params=TrainParams(n_estimators=5),
                           committee_size=3)
    sel = select_from_parquet(path, strategy="bald", selector="topk", batch_size=10, seed=0, chunk_size=300, context=ctx)
    assert len(sel.item_ids) == 10
    assert {"committee_train", "committee_predict"} <= set(sel.seconds)


def test_calibration_reports_ece(tmp_path):
    pool = make_pool(n=500)
    path = tmp_path / "pool.parquet"
    pool.to_parquet(path)
    rng = np.random.default_rng(0)
    val, labels = overconfident(rng, 300, 4)
    ctx = SelectionContext(calibration="temperature", validation_probas=val,
                           validation_labels=np.array([f"c{j}" for j in labels]))
    sel = select_from_parquet(path, strategy="margin", batch_size=10, seed=0, context=ctx)
    assert sel.metrics["ece_after"] < sel.metrics["ece_before"]


def test_select_pool_to_file(tmp_path):
    pool = make_pool(n=1000)
    path = tmp_path / "pool.parquet"
    pool.to_parquet(path)
    out = tmp_path / "out" / "batch.parquet"
    report = select_pool_to_file(path, out, "hybrid", 30, seed=1, chunk_size=256)
    batch = pd.read_parquet(out)
    assert len(batch) == report["n_selected"] == 30
    assert report["n_candidates"] == 1000
    assert report["seconds"] > 0 and report["peak_memory_mib"] > 0
    assert {"prediction_id", "acquisition_score", "rank", "strategy", "selector", "seed"} <= set(batch.columns)
    assert batch["selector"].iloc[0] == "hybrid"
    with pytest.raises(ValueError, match="does not exist"):
        select_pool_to_file(tmp_path / "missing.parquet", out, "margin", 5)
    with pytest.raises(ValueError, match="unknown strategy"):
        select_pool_to_file(path, out, "nope", 5)


class CountingSpace:
    """A fittable feature map that records what it was fitted on and how many rows each call mapped."""

    sample_rows = 120

    def __init__(self, inner) -> None:
        self.inner, self.fitted_on, self.mapped = inner, [], []

    def fit(self, sample, seed):
        self.fitted_on.append(len(sample))
        fitted = self.inner.fit(sample, seed)

        def space(rows):
            self.mapped.append(len(rows))
            return fitted(rows)

        return space


@pytest.mark.parametrize("strategy,selector", [("hybrid", None), ("margin", "coreset")])
def test_streamed_selection_on_text_uses_a_feature_map_fitted_on_a_bounded_sample(tmp_path, strategy, selector):
    from labelloop.domain.acquisition.space import ModelSpace
    from labelloop.model import LabelloopClassifier
    from tests.domain.acquisition.test_space import CLASSES, FAST, mixed_frame

    frame, y, schema = mixed_frame(n=900, seed=2)
    model = LabelloopClassifier.from_params(FAST, schema).fit(frame.iloc[:80], y[:80])
    pool = frame.iloc[80:].reset_index(drop=True)
    probas = model.predict_proba(pool)
    for j, name in enumerate(CLASSES):
        pool[f"proba_{name}"] = probas[:, j]
    pool.insert(0, "prediction_id", [f"p{i}" for i in range(len(pool))])
    path = tmp_path / "pool.parquet"
    pool.to_parquet(path)
    space = CountingSpace(ModelSpace.of_model(model, components=6))
    context = SelectionContext(labelled_rows=frame.iloc[:80], labelled_labels=y[:80], class_names=CLASSES, schema=schema,
                               feature_map=space)
    batch, keep_factor = 12, 3
    sel = select_from_parquet(path, strategy=strategy, selector=selector, batch_size=batch, seed=0, chunk_size=100,
                              keep_factor=keep_factor, context=context)
    assert len(set(sel.item_ids)) == batch and set(sel.item_ids) <= set(pool["prediction_id"])
    assert sel.n_candidates == len(pool) and "body" in sel.rows.columns
    # Fitted once, on a uniform sample of the stream no larger than the map's sample_rows; then it maps only the
    # candidate set the stream kept (top, random and per-group rows) — never the whole pool at once.
    assert space.fitted_on == [CountingSpace.sample_rows]
    keep = batch * keep_factor
    bound = 2 * keep + batch * len(CLASSES) + (80 if selector == "coreset" else 0)  # coreset maps the labelled rows too
    assert sum(space.mapped) <= bound < len(pool)
    again = select_from_parquet(path, strategy=strategy, selector=selector, batch_size=batch, seed=0, chunk_size=100,
                                keep_factor=keep_factor, context=SelectionContext(
                                    labelled_rows=frame.iloc[:80], labelled_labels=y[:80], class_names=CLASSES,
                                    schema=schema, feature_map=CountingSpace(ModelSpace.of_model(model, components=6))))
    assert again.item_ids == sel.item_ids  # seeded: the same sample, the same space, the same batch
