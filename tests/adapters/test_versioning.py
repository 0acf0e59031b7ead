"""What a run killed inside git or DVC leaves in the registry, and how the next run under the workspace
lock clears it and completes the version (the kills themselves: tests/reliability/test_crash_matrix.py)."""

import fcntl
import json
import os
import subprocess
import sys

import pytest

from labelloop.adapters import versioning
from labelloop.batches import BatchStore
from labelloop.core.lock import workspace_lock
from labelloop.stages import dataset
from tests.stages.test_dataset import _fake_imported_batch


def test_a_stale_index_lock_is_one_clear_error_and_under_the_workspace_lock_the_rerun_completes(workspace):
    """The issue's wedge: an empty `.git/index.lock` from a kill inside `dvc add` made every rerun fail
    with dulwich's bare `FileLocked('.../index', '.../index.lock')`."""
    repo = workspace.registry_dir
    _fake_imported_batch(workspace, "batch-0001-aaaaaa")
    (repo / ".git" / "index.lock").write_bytes(b"")

    with pytest.raises(versioning.VersioningError) as failure:
        dataset.update_dataset(workspace)  # no workspace lock held: nothing may be cleared
    message = str(failure.value)
    assert "dvc add labeled.parquet" in message and f"{repo / '.git' / 'index.lock'} exists" in message, message
    assert "FileLocked(" not in message and "('" not in message
    assert (repo / ".git" / "index.lock").exists()

    with workspace_lock(workspace):
        version = dataset.update_dataset(workspace)
    assert (version.tag, version.created, version.n_new) == ("data-v2", True, 10)
    assert versioning.version_of(repo, workspace.labeled_path) == "data-v2"
    assert BatchStore(workspace).get("batch-0001-aaaaaa").versioned_in == "data-v2"
    assert not (repo / ".git" / "index.lock").exists()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_recover_registry_clears_a_dead_runs_leftovers_and_keeps_everything_else(workspace):
    repo = workspace.registry_dir
    git_dir, dvc_tmp = repo / ".git", repo / ".dvc" / "tmp"
    dvc_tmp.mkdir(exist_ok=True)
    (git_dir / "refs" / "tags").mkdir(exist_ok=True)
    leftovers = {
        ".git/index.lock": b"", ".git/HEAD.lock": b"", ".git/packed-refs.lock": b"",
        ".git/refs/heads/main.lock": b"0" * 40 + b"\n", ".git/refs/tags/data-v2.lock": b"",
        ".git/objects/ab/tmp_obj_Xy12ab": b"partial", ".git/objects/pack/tmp_pack_Q1w2e3": b"partial",
        "data/.labeled.parquet.k2j4_x9a.tmp": b"half a parquet",  # labelloop's atomic write
        ".dvc/cache/files/md5/12/.Rk3x0Q1m2n3b4v5c6x7z8A.tmp": b"half a copy",  # DVC's partial copy
        ".dvc/tmp/0123456789abcdef0123456789abcdef.lock": b"claim",  # a hardlink lock's claim ...
    }
    for name, content in leftovers.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(content)
    (dvc_tmp / "lock").unlink(missing_ok=True)
    os.link(repo / ".dvc/tmp/0123456789abcdef0123456789abcdef.lock", dvc_tmp / "lock")  # ... and its lock
    (dvc_tmp / "rwlock").write_text(json.dumps({"write": {str(repo / "data"): {"pid": _dead_pid(), "cmd": "dvc add"}}}))
    pointer = repo / "data" / "labeled.parquet.dvc"
    whole_pointer = pointer.read_text()
    pointer.write_text(whole_pointer[: len(whole_pointer) // 2])  # DVC killed while rewriting it in place
    kept = {"notes.tmp": b"a user's file", "data/.keep.tmp.txt": b"not a temp file"}
    for name, content in kept.items():
        (repo / name).write_bytes(content)
    rwlock_guard = dvc_tmp / "rwlock.lock"
    rwlock_guard.write_text(" 12345\n")  # DVC's default flock'ed file, left after every run: harmless

    done = versioning.recover_registry(repo)

    assert not [name for name in leftovers if (repo / name).exists()]
    assert not (dvc_tmp / "lock").exists() and not (dvc_tmp / "rwlock").exists()
    assert pointer.read_text() == whole_pointer  # restored from HEAD
    assert all((repo / name).read_bytes() == content for name, content in kept.items())
    assert rwlock_guard.exists()
    assert ".git/index.lock" in done and any("labeled.parquet.dvc" in d for d in done)
    assert versioning.recover_registry(repo) == []  # nothing left the second time

    # The registry works again: the next version is made and tagged.
    (repo / "notes.tmp").unlink()
    (repo / "data" / ".keep.tmp.txt").unlink()
    _fake_imported_batch(workspace, "batch-0001-aaaaaa")
    assert dataset.update_dataset(workspace).tag == "data-v2"


def test_recover_registry_leaves_locks_a_live_process_holds(workspace):
    repo = workspace.registry_dir
    dvc_tmp = repo / ".dvc" / "tmp"
    dvc_tmp.mkdir(exist_ok=True)
    held = dvc_tmp / "lock"
    held.write_text(" 1\n")
    os.link(held, dvc_tmp / "held-elsewhere")  # a hardlink lock ...
    with open(held) as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # ... that a live process flocks
        alive = {"pid": os.getpid(), "cmd": "dvc repro"}
        (dvc_tmp / "rwlock").write_text(json.dumps({"read": {"data/x": [alive, {"pid": _dead_pid(), "cmd": "dvc add"}]}}))
        versioning.recover_registry(repo)
        assert held.exists()
    assert json.loads((dvc_tmp / "rwlock").read_text()) == {"read": {"data/x": [alive]}, "write": {}}

    # A pid reused by a process that started after the entry was written is not its owner.
    os.utime(dvc_tmp / "rwlock", (1_000_000, 1_000_000))
    versioning.recover_registry(repo)
    assert not (dvc_tmp / "rwlock").exists()


def test_a_torn_rwlock_is_removed(workspace):
    dvc_tmp = workspace.registry_dir / ".dvc" / "tmp"
    dvc_tmp.mkdir(exist_ok=True)
    (dvc_tmp / "rwlock").write_text('{"write": {"data/labeled.parquet": {"pid": 4')  # DVC writes it in place
    assert versioning.recover_registry(workspace.registry_dir) == [".dvc/tmp/rwlock (torn)"]
    assert not (dvc_tmp / "rwlock").exists()
