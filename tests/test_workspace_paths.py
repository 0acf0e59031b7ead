"""Any path works: spaces, `?`, `#`, `%` and non-ASCII in a workspace path, for init, MLflow, DVC and git;
a failed init leaves nothing behind; each workspace registers its own model name."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from labelloop.adapters import tracking, versioning
from labelloop.apps.init import init_workspace
from labelloop.config import DEFAULT_MODEL_NAME, Params, TrainParams
from labelloop.stages import dataset, train
from labelloop.workspace import Workspace, WorkspaceError, sqlite_uri
from tests.stages.test_dataset import _fake_imported_batch

SMALL = {"seed_size": 30}


def _init(root: Path, **dataset) -> Workspace:
    params = Params().with_overrides(dataset=SMALL | dataset, train={"n_estimators": 10, "max_depth": 2, "n_jobs": 1})
    return init_workspace(root, params)


def _store_file(ws: Workspace) -> Path:
    """The SQLite file MLflow's engine really opened for this workspace's tracking URI."""
    from sqlalchemy import create_engine, text

    engine = create_engine(ws.tracking_uri)
    try:
        with engine.connect() as connection:
            return Path(connection.execute(text("PRAGMA database_list")).fetchone()[2])
    finally:
        engine.dispose()


@pytest.mark.parametrize("directory", ["with space#and%41percent", "what?now", "naïve-données-данные"])
def test_init_train_version_and_read_back_under_an_odd_path(tmp_path, monkeypatch, directory):
    monkeypatch.chdir(tmp_path)
    ws = _init(tmp_path / directory / "ws")
    trained = train.train_challenger(ws, ws.params().train)
    _fake_imported_batch(ws, "batch-0001-aaaaaa", n=10)
    version = dataset.update_dataset(ws)
    assert version.tag == "data-v2" and version.created

    # The MLflow store is the workspace's own file, holding the model just registered.
    assert _store_file(ws) == ws.root / "mlflow.db"
    assert tracking.alias_version(ws, ws.params().train.model_name, tracking.CHALLENGER) == trained.version
    assert list(ws.artifacts_dir.rglob("MLmodel"))  # and its artifacts are in the workspace too
    assert sorted(p.name for p in tmp_path.iterdir()) == [directory]  # nothing made outside it (e.g. in the cwd)
    # The version round-trips through DVC and git: its bytes at data-v2 are the labelled set now,
    # data-v1 still reads back as the seed, and the version reached the workspace's own remote.
    registry = ws.registry_dir
    assert versioning.read_at(registry, ws.labeled_path, "data-v2") == ws.labeled_path.read_bytes()
    seed = pd.read_parquet(io.BytesIO(versioning.read_at(registry, ws.labeled_path, "data-v1")))
    assert len(seed) == 30 and len(pd.read_parquet(ws.labeled_path)) == 40
    assert any((ws.dvc_remote_dir / "files").rglob("*"))
    assert not versioning.ensure_pushed(registry)  # already pushed: the remote resolves inside the workspace


def test_two_workspaces_whose_paths_differ_after_a_question_mark_share_nothing(tmp_path):
    first, second = _init(tmp_path / "ws?1"), _init(tmp_path / "ws?2")
    for ws in (first, second):
        train.train_challenger(ws, ws.params().train)
    assert _store_file(first) == first.root / "mlflow.db" and _store_file(second) == second.root / "mlflow.db"
    assert not (tmp_path / "ws").exists()  # no store next to them, shared by both
    names = [ws.params().train.model_name for ws in (first, second)]
    assert names[0] != names[1]  # and on a shared tracking server their models would not collide either
    for ws, name in zip((first, second), names):
        registered = {m.name for m in tracking.client(ws).search_registered_models()}
        assert registered == {name}


def test_the_sqlite_uri_of_a_plain_path_keeps_its_plain_form(tmp_path):
    assert sqlite_uri(tmp_path / "mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sqlite_uri(Path("/data/ws?1/mlflow.db")) == "sqlite+pysqlite:///file:/data/ws%3F1/mlflow.db?uri=true"


def test_the_default_model_name_becomes_the_workspaces_own_and_an_explicit_one_is_kept(tmp_path):
    ws = _init(tmp_path / "a")
    assert TrainParams().model_name == DEFAULT_MODEL_NAME
    assert ws.params().train.model_name == f"labelloop-{ws.workspace_id}"
    named = init_workspace(tmp_path / "b", Params().with_overrides(dataset=SMALL, train={"model_name": "churn-model"}))
    assert named.params().train.model_name == "churn-model"


def test_a_failed_init_removes_everything_it_created(tmp_path):
    # DVC writes its config as ASCII: a remote under another non-ASCII directory cannot be written.
    with pytest.raises(versioning.VersioningError, match="ASCII"):
        _init(tmp_path / "new" / "ws", remote_url=str(tmp_path / "dépôt"))
    assert not (tmp_path / "new").exists()
    _init(tmp_path / "new" / "ws")  # the next attempt starts clean


def test_init_refuses_a_non_empty_directory_and_leaves_it_as_it_was(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(WorkspaceError, match="not an empty directory"):
        _init(root)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]
    assert (root / "notes.txt").read_text() == "keep me"


def test_a_failed_init_into_an_existing_empty_directory_keeps_the_directory(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(versioning.VersioningError):
        _init(root, remote_url=str(tmp_path / "dépôt"))
    assert root.is_dir() and not any(root.iterdir())
