"""Two `labelloop cycle` processes started at the same instant on one workspace, through the real
console entry point: exactly one runs; the other exits non-zero while the first is still running,
with one line naming the lock; afterwards the workspace holds exactly one cycle's worth of state."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from labelloop.adapters import versioning
from labelloop.batches import BatchStore
from labelloop.history import load_history

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_two_cli_cycles_at_once_one_runs_the_other_exits_at_once_naming_the_lock(workspace):
    # Each process on its own, as a user's shell would start it: no test Prefect API, Prefect kept in the workspace.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LABELLOOP_", "MLFLOW_HTTP"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false")
    command = [str(REPO / ".venv" / "bin" / "labelloop"), "cycle", "--workspace", str(workspace.root)]
    processes = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    try:
        while all(p.poll() is None for p in processes):  # the first process to finish...
            time.sleep(0.1)
        first = next(p for p in processes if p.poll() is not None)
        other = next(p for p in processes if p is not first)
        still_running = other.poll() is None  # ...must be the loser, while the winner still works
        outputs = {id(p): p.communicate(timeout=900) for p in (first, other)}
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
        # The winner started the workspace's background Prefect server, as a user's first command does: stop it.
        subprocess.run([*command[:1], "server", "stop", "--workspace", str(workspace.root)], cwd=REPO, env=env,
                       capture_output=True, timeout=120, check=False)
    loser_out, loser_err = outputs[id(first)]
    winner_out, winner_err = outputs[id(other)]
    assert first.returncode == 2, f"the first process to end was not refused:\n{loser_out}\n{loser_err[-3000:]}"
    assert still_running, "the refused process did not exit before the running cycle finished"
    assert other.returncode == 0, f"the running cycle failed:\n{winner_out}\n{winner_err[-3000:]}"
    message = loser_err.strip().splitlines()[-1]
    assert message.startswith("error: another cycle-command run holds") and str(workspace.state_dir) in message
    assert "| data data-v2" in winner_out  # the winner printed its cycle line

    # Exactly one cycle: one batch, one new data version, the seed record and one cycle record.
    assert len(BatchStore(workspace).list()) == 1
    assert versioning.data_tags(workspace.registry_dir) == ["data-v1", "data-v2"]
    assert [r.cycle for r in load_history(workspace)] == [0, 1]
