"""Data versions in a real git + DVC registry."""

import hashlib

import pandas as pd
import pytest

from labelloop.adapters import versioning
from labelloop.batches import BatchMeta, BatchStore
from labelloop.core.io import write_parquet
from labelloop.stages import dataset


def _fake_imported_batch(ws, batch_id, n=10, offset=0):
    """A batch whose labels are final, built from traffic rows and their true labels."""
    schema = ws.schema()
    traffic = pd.read_parquet(ws.simulator_dir / "traffic.parquet").iloc[offset:offset + n]
    oracle = pd.read_parquet(ws.simulator_dir / "oracle.parquet").set_index("item_id")
    items = traffic.copy()
    for column in schema.proba_columns:
        items[column] = 1.0 / len(schema.proba_columns)
    items["predicted"], items["confidence"], items["utility"] = schema.class_names[0], 0.2, 0.5
    write_parquet(ws.batch_dir(batch_id) / "batch.parquet", items)
    write_parquet(ws.final_labels_dir / f"{batch_id}.parquet",
                  pd.DataFrame({"item_id": items.item_id, "label": oracle.loc[items.item_id, "label"].to_numpy()}))
    BatchStore(ws).put(BatchMeta(batch_id, batch_id, "imported", "margin", "topk", 0, {}, n, "now", vendor="simulated"))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_each_import_makes_one_tagged_version_pushed_to_the_remote(workspace):
    _fake_imported_batch(workspace, "batch-0001-aaaaaa")
    version = dataset.update_dataset(workspace)
    assert (version.tag, version.created, version.n_new, version.n_rows) == ("data-v2", True, 10, 60)
    assert "batch-0001-aaaaaa" in versioning.tag_message(workspace.registry_dir, "data-v2")
    assert BatchStore(workspace).get("batch-0001-aaaaaa").versioned_in == "data-v2"
    # The remote holds the content: a fresh clone of the registry can pull it.
    remote_files = [p for p in workspace.dvc_remote_dir.rglob("*") if p.is_file()]
    assert len(remote_files) >= 3  # holdout, data-v1, data-v2


def test_rerun_without_new_labels_makes_no_new_version(workspace):
    _fake_imported_batch(workspace, "batch-0001-aaaaaa")
    dataset.update_dataset(workspace)
    again = dataset.update_dataset(workspace)
    assert (again.tag, again.created, again.n_new) == ("data-v2", False, 0)
    assert versioning.data_tags(workspace.registry_dir) == ["data-v1", "data-v2"]


def test_crash_after_dvc_add_before_tag_is_completed_by_a_rerun(workspace, monkeypatch):
    _fake_imported_batch(workspace, "batch-0001-aaaaaa")
    real_git = versioning.git

    def git_that_dies_at_tag(repo, *args, **kwargs):
        if args and args[0] == "tag" and "-a" in args:
            raise RuntimeError("killed between commit and tag")
        return real_git(repo, *args, **kwargs)

    monkeypatch.setattr(versioning, "git", git_that_dies_at_tag)
    with pytest.raises(RuntimeError, match="killed"):
        dataset.update_dataset(workspace)
    monkeypatch.setattr(versioning, "git", real_git)
    version = dataset.update_dataset(workspace)
    assert version.tag == "data-v2" and version.n_rows == 60
    assert versioning.data_tags(workspace.registry_dir) == ["data-v1", "data-v2"]
    assert len(pd.read_parquet(workspace.labeled_path)) == 60  # nothing appended twice
    assert "batch-0001-aaaaaa" in versioning.tag_message(workspace.registry_dir, "data-v2")


def test_rollback_restores_the_older_set_byte_for_byte_as_a_new_version(workspace):
    v1_bytes = versioning.read_at(workspace.registry_dir, workspace.labeled_path, "data-v1")
    first_sha = _sha(workspace.labeled_path)
    _fake_imported_batch(workspace, "batch-0001-aaaaaa")
    dataset.update_dataset(workspace)
    assert _sha(workspace.labeled_path) != first_sha
    restored = dataset.rollback(workspace, "data-v1")
    assert restored.tag == "data-v3"
    assert _sha(workspace.labeled_path) == first_sha
    assert workspace.labeled_path.read_bytes() == v1_bytes
    assert versioning.data_tags(workspace.registry_dir) == ["data-v1", "data-v2", "data-v3"]  # history kept


def test_rollback_to_an_unknown_tag_names_the_known_ones(workspace):
    with pytest.raises(ValueError, match="data-v1"):
        dataset.rollback(workspace, "data-v99")


def test_a_labelled_item_from_the_holdout_is_refused(workspace):
    holdout_id = pd.read_parquet(workspace.holdout_path).item_id.iloc[0]
    with pytest.raises(dataset.HoldoutLeakError, match=holdout_id):
        dataset.check_no_holdout_leak(workspace, pd.Series([holdout_id, "r-other"]))
