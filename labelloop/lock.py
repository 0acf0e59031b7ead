"""An exclusive, per-workspace lock so two cycles never interleave their writes.

`fcntl.flock` is released by the kernel when the holder dies (even on SIGKILL), so a crashed run
never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from labelloop.workspace import Workspace


class WorkspaceBusyError(RuntimeError):
    """Another run holds this workspace's lock."""


@contextmanager
def workspace_lock(workspace: Workspace, name: str = "cycle", wait_seconds: float = 0.0) -> Iterator[None]:
    workspace.state_dir.mkdir(parents=True, exist_ok=True)
    path = workspace.state_dir / f"{name}.lock"
    handle = open(path, "a+")
    deadline = time.monotonic() + wait_seconds
    try:
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
        yield
    finally:
        handle.close()
