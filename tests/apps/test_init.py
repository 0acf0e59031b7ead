import pandas as pd
import pytest

from labelloop.adapters import versioning
from labelloop.apps.init import init_workspace
from labelloop.config import Params
from labelloop.workspace import Workspace, WorkspaceError


def test_workspace_has_disjoint_holdout_seed_and_traffic(workspace_template):
    ws = workspace_template
    holdout = pd.read_parquet(ws.holdout_path)
    seed = pd.read_parquet(ws.labeled_path)
    traffic = pd.read_parquet(ws.simulator_dir / "traffic.parquet")
    assert len(seed) == ws.params().dataset.seed_size
    ids = [set(holdout.item_id), set(seed.item_id), set(traffic.item_id)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert "label" not in traffic.columns  # production traffic carries no truth
    assert versioning.data_tags(ws.registry_dir) == ["data-v1"]
    assert versioning.HOLDOUT_TAG in versioning.git(ws.registry_dir, "tag").split()
    assert ws.schema().class_names == sorted(holdout.label.unique())


def test_workspace_is_not_committed_into_the_users_checkout(workspace_template):
    assert (workspace_template.root / ".gitignore").read_text().strip() == "*"


def test_init_refuses_an_existing_workspace(workspace_template):
    with pytest.raises(WorkspaceError, match="already holds"):
        init_workspace(workspace_template.root)


def test_init_from_any_table_with_a_label_column(tmp_path):
    from labelloop.apps.init import shipped_dataset_path

    source = pd.read_parquet(shipped_dataset_path())
    source = source.rename(columns={"label": "soil"}).head(600)
    path = tmp_path / "data.csv"
    source.to_csv(path, index=False)
    params = Params().with_overrides(dataset={"source": str(path), "label_column": "soil", "seed_size": 20})
    ws = init_workspace(tmp_path / "ws", params)
    assert len(pd.read_parquet(ws.labeled_path)) == 20


def test_init_names_a_missing_label_column(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"a": [1.0, 2.0], "b": [0.0, 1.0]}).to_parquet(path)
    params = Params().with_overrides(dataset={"source": str(path), "label_column": "target"})
    with pytest.raises(ValueError, match="label column 'target'"):
        init_workspace(tmp_path / "ws", params)
    assert not Workspace.at(tmp_path / "ws").exists()


def _mixed_source(n=400, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    label = rng.choice(["ok", "bad"], n)
    return pd.DataFrame({
        "sample.id": [f"S-{i:05d}" for i in range(n)],
        "dose": np.where(rng.random(n) < 0.15, np.nan, rng.normal(5, 1, n) + (label == "bad")),
        "ward": rng.choice(["a", "b", "c", None], n),
        "note": [f"the patient said it was {w} today" for w in rng.choice(["fine", "awful", "odd"], n)],
        "outcome": label,
    })


def test_init_keeps_ids_missing_values_categories_and_text_with_their_roles(tmp_path):
    path = tmp_path / "mixed.parquet"
    _mixed_source().to_parquet(path)
    params = Params().with_overrides(dataset={"source": str(path), "label_column": "outcome", "seed_size": 30})
    ws = init_workspace(tmp_path / "ws", params)
    schema = ws.schema()
    assert {c.name: c.role for c in schema.columns} == {"sample.id": "id", "dose": "numeric", "ward": "categorical",
                                                        "note": "text"}
    assert schema.feature_columns == ["dose", "ward", "note"]
    holdout = pd.read_parquet(ws.holdout_path)
    assert {"sample.id", "dose", "ward", "note", "label"} <= set(holdout.columns)
    assert holdout["dose"].isna().any() and holdout["ward"].isna().any()
    assert holdout["sample.id"].str.startswith("S-").all()
    # auto is written out as what it resolved to: text present, so logistic regression.
    assert ws.params().train.estimator == "logistic_regression"
    from labelloop.apps.init import schema_warnings

    assert any("'sample.id' looks like an id" in w for w in schema_warnings(ws))


def test_init_records_overrides_from_the_schema_section(tmp_path):
    path = tmp_path / "mixed.parquet"
    _mixed_source().to_parquet(path)
    params = Params().with_overrides(dataset={"source": str(path), "label_column": "outcome", "seed_size": 30},
                                     schema={"drop_columns": ["note"], "categorical_columns": ["dose"]})
    ws = init_workspace(tmp_path / "ws", params)
    assert ws.schema().feature_columns == ["dose", "ward"]
    assert ws.schema().column("dose").role == "categorical"
    assert "note" not in pd.read_parquet(ws.labeled_path).columns
    assert ws.params().schema_.drop_columns == ["note"]
    assert ws.params().train.estimator == "xgboost"


def test_init_refuses_rows_without_a_label_and_leaves_nothing(tmp_path):
    path = tmp_path / "mixed.parquet"
    source = _mixed_source()
    source.loc[[1, 2], "outcome"] = None
    source.to_parquet(path)
    params = Params().with_overrides(dataset={"source": str(path), "label_column": "outcome"})
    with pytest.raises(ValueError, match="2 of 400 rows have no label in 'outcome'"):
        init_workspace(tmp_path / "ws", params)
    assert not (tmp_path / "ws").exists()
