"""The select stage on a workspace with an id, a numeric column with gaps, a categorical and a text column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelloop.batches import BatchStore, load_pool
from labelloop.config import CaptureParams, SelectParams, TextParams, TrainParams
from labelloop.stages.capture import capture
from labelloop.stages.production import append_predictions, predictions_frame
from labelloop.stages.select import select_batch, select_next_batch, selection_context
from tests.conftest import clone_workspace
from tests.domain.acquisition.test_space import mixed_frame

TRAIN = TrainParams(estimator="logistic_regression", text=TextParams(char_ngrams=None, min_df=1, selection_components=8))


@pytest.fixture(scope="module")
def mixed_template(tmp_path_factory):
    from labelloop.apps.init import init_workspace
    from labelloop.config import Params

    frame, y, _ = mixed_frame(n=500, seed=5)
    frame.insert(0, "ticket_id", [f"T{i:05d}" for i in range(len(frame))])
    frame["label"] = y
    source = tmp_path_factory.mktemp("mixed") / "tickets.parquet"
    frame.to_parquet(source)
    params = Params().with_overrides(dataset={"source": str(source)}, production={"rows_per_cycle": 100},
                                     select={"batch_size": 10}, train=TRAIN.model_dump())
    return init_workspace(tmp_path_factory.mktemp("mixed-ws") / "ws", params)


@pytest.fixture
def mixed(mixed_template, tmp_path):
    return clone_workspace(mixed_template, tmp_path / "ws")


def _pool(ws, n=60, seed=0):
    schema = ws.schema()
    traffic = pd.read_parquet(ws.simulator_dir / "traffic.parquet").head(n)
    probas = np.random.default_rng(seed).dirichlet(np.ones(len(schema.class_names)), size=n)
    append_predictions(ws, predictions_frame(traffic, probas, schema, "1", traffic.item_id.tolist()))
    capture(ws, CaptureParams(confidence_threshold=1.0))
    return load_pool(ws)


def _model(ws):
    from labelloop.model import LabelloopClassifier

    schema = ws.schema()
    labeled = pd.read_parquet(ws.labeled_path)
    return LabelloopClassifier.from_params(TRAIN, schema).fit(labeled[schema.feature_columns], labeled.label)


def test_the_workspace_has_every_role(mixed):
    schema = mixed.schema()
    assert (schema.id_columns, schema.numeric_columns, schema.categorical_columns, schema.text_columns) == (
        ["ticket_id"], ["amount"], ["country"], ["body"])


@pytest.mark.parametrize("strategy,selector", [("hybrid", None), ("margin", "coreset"), ("information_density", "topk"),
                                               ("bald", "topk")])
def test_select_runs_in_the_champions_feature_space(mixed, strategy, selector):
    from labelloop.domain.acquisition.space import ModelSpace

    pool = _pool(mixed)
    model = _model(mixed)
    params = SelectParams(strategy=strategy, selector=selector or "topk", batch_size=8, committee_size=2, audit_fraction=0)
    context = selection_context(mixed, params, TRAIN, model.predict_proba, model=model)
    assert isinstance(context.feature_map, ModelSpace) and context.feature_map.components == 8
    meta = select_batch(mixed, params, rescore=model.predict_proba, context=context)
    items = BatchStore(mixed).items(meta.batch_id)
    assert meta.n_items == 8 and items.item_id.is_unique
    assert items["body"].map(lambda v: isinstance(v, str) and len(v) > 0).all()  # the raw text travels with the batch
    assert len(load_pool(mixed)) == len(pool) - 8


def test_select_without_a_champion_uses_the_schema_space(mixed):
    _pool(mixed, n=40)
    meta = select_batch(mixed, SelectParams(strategy="margin", selector="cluster", batch_size=6, audit_fraction=0))
    assert meta.n_items == 6


def test_select_stage_wraps_a_bare_pipeline_champion(mixed, monkeypatch):
    """MLflow's scikit-learn flavour loads the pipeline alone: the stage wraps it with the workspace schema."""
    from labelloop.adapters import tracking

    _pool(mixed, n=40)
    pipeline = _model(mixed).pipeline_
    monkeypatch.setattr(tracking, "champion_model", lambda workspace, name: ("3", pipeline))
    meta = select_next_batch(mixed, SelectParams(strategy="hybrid", batch_size=6, audit_fraction=0), TRAIN)
    assert meta.n_items == 6 and meta.champion_version == "3"
