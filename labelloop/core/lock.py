"""An exclusive, per-workspace lock so two labelloop runs never interleave their writes.

`fcntl.flock` is released by the kernel when the holder dies (even on SIGKILL), so a crashed run
never leaves a stale lock behind. Holding it also proves that no other labelloop process works in the
workspace, which is what lets the registry clear git/DVC lock files a killed run left behind.

The lock is re-entrant within one thread: the cycle holds it and calls the stage flows, which take it
too (a stage run alone, from the CLI or the Prefect UI, must hold it as well). Another thread or
process is refused, as before.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

WORKSPACE_LOCK = "cycle"  # the one lock every state-changing run takes (file name kept for old workspaces)

_held = threading.local()  # per thread: lock path -> depth


class WorkspaceBusyError(RuntimeError):
    """Another run holds this workspace's lock."""


class LockableWorkspace(Protocol):
    """What the lock needs of a `labelloop.workspace.Workspace` (core sits below it and does not import it)."""

    @property
    def state_dir(self) -> Path: ...


def _depths() -> dict[Path, int]:
    if not hasattr(_held, "depths"):
        _held.depths = {}
    return _held.depths


def holds_lock(workspace: LockableWorkspace, name: str = WORKSPACE_LOCK) -> bool:
    """True when this thread holds the workspace's lock."""
    return _depths().get(workspace.state_dir / f"{name}.lock", 0) > 0


@contextmanager
def workspace_lock(workspace: LockableWorkspace, name: str = WORKSPACE_LOCK, wait_seconds: float = 0.0) -> Iterator[None]:
    path = workspace.state_dir / f"{name}.lock"
    depths = _depths()
    if depths.get(path, 0) > 0:  # this thread already holds it: the cycle calling a stage flow
        depths[path] += 1
        try:
            yield
        finally:
            depths[path] -= 1
        return
    workspace.state_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    with open(path, "a+") as handle:  # closing it releases the flock
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    raise WorkspaceBusyError(
                        f"another {name} run holds {path} ({holder}); it was not started twice — wait for it or rerun later"
                    ) from None
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}")
        handle.flush()
        depths[path] = 1
        try:
            yield
        finally:
            depths.pop(path, None)
