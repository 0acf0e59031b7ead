"""Crash-and-rerun matrix: SIGKILL the worker at every durable write, rerun, check nothing was lost
or doubled. The rerun goes through the same stages; the last one through the real Prefect flow."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from labelloop.adapters import tracking, versioning
from labelloop.batches import BatchStore
from labelloop.config import dump_params
from labelloop.core.faults import CRASH_POINTS
from labelloop.core.io import write_text
from labelloop.stages import gate, train
from labelloop.stages.production import list_log_parts
from tests.reliability.crash_driver import REGISTRY_CRASH_POINTS, run_cycle_stages

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


class CrashDriver:
    """The crash driver's fork server (`crash_driver --serve`), started once: each crash runs in a new
    child process of it, killed by SIGKILL at its point, without paying a cycle's imports again."""

    def __init__(self, logs: Path):
        self.logs = logs
        with open(logs / "driver.log", "wb") as driver_log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.reliability.crash_driver", "--serve"], cwd=REPO,
                env=dict(os.environ, PYTHONPATH=str(REPO)), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=driver_log, text=True)

    def crash(self, ws, point: str, timeout: float = 600) -> tuple[int, str]:
        """Run the stages on `ws` with `point` armed; the child's exit code and the tail of its output."""
        log = self.logs / f"{point}-{ws.root.name}.log"
        self.process.stdin.write(json.dumps({"point": point, "root": str(ws.root), "log": str(log)}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        answer = self.process.stdout.readline() if ready else ""
        if not answer:
            self.process.kill()
            raise AssertionError(f"the crash driver gave no answer for {point} within {timeout:.0f} s (exit "
                                 f"{self.process.poll()}): {(self.logs / 'driver.log').read_text()[-2000:]}")
        output = log.read_text(errors="replace") if log.exists() else ""
        return json.loads(answer)["returncode"], output[-2000:]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def crash_driver(tmp_path_factory):
    driver = CrashDriver(tmp_path_factory.mktemp("crash-logs"))
    yield driver
    driver.close()


def check_invariants(ws) -> dict:
    """Every promise of the loop about durable state; returns figures for the report."""
    traffic = pd.read_parquet(ws.simulator_dir / "traffic.parquet")
    cursor = json.loads((ws.state_dir / "traffic_cursor.json").read_text())["next_row"]
    log = pd.concat([pd.read_parquet(p, columns=["prediction_id"]) for p in list_log_parts(ws)], ignore_index=True)
    # No prediction lost or doubled: exactly the traffic rows before the cursor, once each.
    assert log.prediction_id.is_unique, "a prediction was logged twice"
    assert set(log.prediction_id) == set(traffic.item_id.iloc[:cursor]), "log and traffic cursor disagree"

    store = BatchStore(ws)
    metas = store.list()
    batched = [i for m in metas for i in store.items(m.batch_id).item_id]
    assert len(batched) == len(set(batched)), "an item is in two batches"
    tasks_dir = ws.root / "vendor" / "simulated"
    exported = [i for p in tasks_dir.glob("*/tasks.parquet") for i in pd.read_parquet(p).item_id] if tasks_dir.exists() else []
    assert len(exported) == len(set(exported)), "an item was exported twice"
    pool = pd.read_parquet(ws.pool_path).item_id if ws.pool_path.exists() else pd.Series([], dtype=str)
    assert not set(pool) & set(batched), "a batched item is still in the pool"

    labeled = pd.read_parquet(ws.labeled_path)
    assert labeled.item_id.is_unique, "a label was counted twice"
    finals = sum(len(store.final_labels(m.batch_id)) for m in metas if m.versioned_in)
    assert len(labeled) == ws.params().dataset.seed_size + finals

    # The data tag and the dataset agree.
    current = versioning.version_of(ws.registry_dir, ws.labeled_path)
    assert current == versioning.data_tags(ws.registry_dir)[-1], "labelled set differs from its newest tag"
    for meta in metas:
        assert meta.versioned_in is None or meta.versioned_in in versioning.data_tags(ws.registry_dir)

    # The aliases agree with the gate decisions.
    name = ws.params().train.model_name
    client = tracking.client(ws)
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    promoted = [str(v.version) for v in versions if v.tags.get("gate.decision") == "promote"]
    assert tracking.alias_version(ws, name, tracking.CHAMPION) == promoted[-1]
    if len(promoted) > 1:
        assert tracking.alias_version(ws, name, tracking.PREVIOUS) == promoted[-2]
    per_tag = {}
    for v in versions:
        per_tag.setdefault(v.tags.get("data_tag"), []).append(v.version)
    assert all(len(vs) == 1 for vs in per_tag.values()), f"two models for one data version: {per_tag}"
    return {"predictions": len(log), "labelled": len(labeled), "tags": len(versioning.data_tags(ws.registry_dir)),
            "champion": promoted[-1]}


@pytest.fixture(scope="module")
def crash_workspace(workspace_template, tmp_path_factory):
    from tests.conftest import clone_workspace

    ws = clone_workspace(workspace_template, tmp_path_factory.mktemp("crash") / "ws")
    # Every challenger is promoted, so every cycle passes every gate write (a rejected challenger
    # would skip the alias moves and the gate's crash points would never be reached).
    params = ws.params().with_overrides(gate={"min_delta": -1.0})
    write_text(ws.params_path, dump_params(params))
    train.train_challenger(ws, params.train)
    decision = gate.evaluate_gate(ws, params.train.model_name, params.gate)
    gate.record_decision(ws, params.train.model_name, decision)
    gate.promote(ws, params.train.model_name, decision.challenger_version)
    return ws


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_each_durable_write_then_rerun_loses_and_duplicates_nothing(crash_driver, crash_workspace, point):
    ws = crash_workspace
    code, stderr = crash_driver.crash(ws, point)
    assert code == -signal.SIGKILL, f"the worker was not killed at {point} (exit {code}): {stderr}"
    run_cycle_stages(str(ws.root))  # the rerun finishes what the killed run started
    check_invariants(ws)


def _pointer(repo: Path) -> dict | None:
    import yaml

    try:
        loaded = yaml.safe_load((repo / "data" / "labeled.parquet.dvc").read_text())
    except yaml.YAMLError:
        return None
    outs = loaded.get("outs") if isinstance(loaded, dict) else None
    whole = isinstance(outs, list) and outs and all(isinstance(o, dict) and o.get("path") and o.get("md5") for o in outs)
    return loaded if whole else None


def _left_behind(repo: Path, point: str) -> list[str]:
    """What the kill at `point` left in the registry: proof it struck inside DVC/git where meant."""
    git_dir = repo / ".git"
    if point == "dvc.add.mid_copy":
        found = list((repo / ".dvc" / "cache").rglob("*.tmp"))
    elif point == "dvc.add.mid_pointer":
        found = [] if _pointer(repo) else ["data/labeled.parquet.dvc (torn)"]
    elif point in ("dvc.add.index_locked", "git.add.index_locked"):
        found = [git_dir / "index.lock"]
    elif point == "git.commit.ref_locked":
        found = [git_dir / "HEAD.lock", git_dir / "refs" / "heads" / "main.lock"]
    else:
        found = list((git_dir / "refs" / "tags").glob("*.lock"))
    return [str(f) for f in found if not isinstance(f, Path) or f.exists()]


def _stale_locks(repo: Path) -> list[Path]:
    return list((repo / ".git").rglob("*.lock")) + [p for p in repo.rglob("*.tmp") if ".git" not in p.parts]


@pytest.mark.parametrize("point", list(REGISTRY_CRASH_POINTS))
def test_sigkill_inside_dvc_and_git_then_rerun_completes_the_version(crash_driver, crash_workspace, point):
    """Killed inside `dvc add`, `git commit` or `git tag` (not at labelloop's own writes): the rerun
    clears the dead run's locks and temp files under the workspace lock and completes the version."""
    ws, repo = crash_workspace, crash_workspace.registry_dir
    tags_before = versioning.data_tags(repo)
    code, stderr = crash_driver.crash(ws, point)
    assert code == -signal.SIGKILL, f"the worker was not killed at {point} (exit {code}): {stderr}"
    assert versioning.data_tags(repo) == tags_before, f"{point}: the killed run must not have tagged"
    assert _left_behind(repo, point), f"the kill at {point} did not leave what {REGISTRY_CRASH_POINTS[point]!r} says"
    run_cycle_stages(str(ws.root))
    check_invariants(ws)
    assert len(versioning.data_tags(repo)) == len(tags_before) + 1, "the interrupted version was not completed once"
    assert _stale_locks(repo) == [], "a lock or temp file of the killed run is still there"


def _mount_small_fs(directory: Path, size_kb: int) -> None:
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(directory)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"the disk-full run needs to mount a small tmpfs (root or CAP_SYS_ADMIN): "
                    f"`mount -t tmpfs` failed: {result.stderr.strip() or result.returncode}")


def _unmount(directory: Path) -> None:
    # The test process may still hold the MLflow SQLite file open: detach lazily if busy.
    if subprocess.run(["umount", str(directory)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def _fill(directory: Path, leave_bytes: int) -> Path:
    """A filler file that leaves `leave_bytes` free on the filesystem of `directory`."""
    filler = directory / "filler"
    with open(filler, "wb") as handle:
        while True:
            stats = os.statvfs(directory)
            excess = stats.f_bavail * stats.f_frsize - leave_bytes
            if excess <= 0:
                break
            handle.write(b"\0" * min(excess, 1 << 20))
            handle.flush()
    return filler


def test_disk_full_inside_dvc_add_fails_clearly_then_the_rerun_completes_the_version(crash_driver, crash_workspace, tmp_path):
    """The workspace on a small filesystem, full when `dvc add` copies the labelled set into the DVC
    cache: one clear VersioningError, nothing versioned, no git lock, the labelled set and its pointer
    whole; space freed, the rerun clears DVC's partial copies and completes the version."""
    from labelloop.core.lock import workspace_lock
    from labelloop.stages import dataset
    from tests.conftest import clone_workspace

    mount = tmp_path / "small-fs"
    mount.mkdir()
    used_kb = int(subprocess.run(["du", "-sk", str(crash_workspace.root)], capture_output=True, text=True,
                                 check=True).stdout.split()[0])
    _mount_small_fs(mount, 2 * used_kb + 16 * 1024)
    try:
        ws = clone_workspace(crash_workspace, mount / "ws")
        repo = ws.registry_dir
        tags_before, head_before = versioning.data_tags(repo), versioning.head_sha(repo)
        code, stderr = crash_driver.crash(ws, "dataset.after_write")  # the labelled set written, not yet `dvc add`-ed
        assert code == -signal.SIGKILL, f"the worker was not killed at dataset.after_write (exit {code}): {stderr}"
        labeled_bytes = ws.labeled_path.read_bytes()
        # Room for the small files written first (the dataset card), not for DVC's copy into its cache.
        filler = _fill(mount, leave_bytes=len(labeled_bytes) // 2)

        with workspace_lock(ws), pytest.raises(versioning.VersioningError) as failure:
            dataset.update_dataset(ws)
        message = str(failure.value)
        assert "dvc add labeled.parquet" in message and "no space left on device" in message, message
        assert versioning.data_tags(repo) == tags_before and versioning.head_sha(repo) == head_before
        assert ws.labeled_path.read_bytes() == labeled_bytes, "the labelled set changed on a failed version"
        assert not list((repo / ".git").rglob("*.lock")), "the failed `dvc add` left a git lock"
        assert _pointer(repo) is not None, "the `.dvc` pointer was torn"
        # DVC does not remove its partial cache copies when the copy fails: the next run clears them.
        assert all(".dvc" in p.parts for p in _stale_locks(repo)), _stale_locks(repo)

        filler.unlink()
        run_cycle_stages(str(ws.root))
        check_invariants(ws)
        assert len(versioning.data_tags(repo)) == len(tags_before) + 1, "the interrupted version was not completed"
        assert _stale_locks(repo) == [], "a lock or temp file of the failed run is still there"
    finally:
        _unmount(mount)


def test_after_the_matrix_a_real_prefect_cycle_still_runs_clean(prefect_api, crash_workspace):
    from labelloop.flows.cycle import active_learning_cycle

    before = len(versioning.data_tags(crash_workspace.registry_dir))
    record = active_learning_cycle(str(crash_workspace.root))
    figures = check_invariants(crash_workspace)
    assert figures["tags"] == before + 1 and record.data_tag == versioning.data_tags(crash_workspace.registry_dir)[-1]
