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
