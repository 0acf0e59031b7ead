"""Runs one cycle's stages in order, through the Prefect tasks' own functions (`.fn`), in a process
that a test kills with SIGKILL at a named crash point (LABELLOOP_CRASH_AT). No Prefect engine is
needed for that: durable state is written by the same `labelloop` calls the flow makes.

    python -m tests.reliability.crash_driver WORKSPACE     # one run, killed at $LABELLOOP_CRASH_AT
    python -m tests.reliability.crash_driver --serve       # what the crash matrix starts: a fork server

The fork server pays the imports of a cycle (about 70% of a fresh worker's CPU time) once: for each
request line on stdin, {"point": ..., "root": ..., "log": ...}, it forks a child that arms the point and
runs the stages, waits for it, and answers {"returncode": ...} (negative: killed by that signal). Each
child is a process of its own that the OS kills with SIGKILL, exactly as before; only its imports are
inherited.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from labelloop.core.faults import ENV
from labelloop.core.lock import workspace_lock
from labelloop.stages import gate as gate_stage
from labelloop.stages import train as train_stage
from labelloop.workspace import Workspace

# Kill points INSIDE DVC and git, which labelloop's own crash points cannot reach. The driver arms the
# one named in LABELLOOP_CRASH_AT before running the stages: DVC's steps by wrapping the DVC / dulwich
# function at that step (in this process only), git's by a hook git runs while it holds its locks.
# Each kill leaves exactly what a worker killed there by the OS leaves.
REGISTRY_CRASH_POINTS = {
    "dvc.add.mid_copy": "DVC copying the labelled set into its cache: half a `.tmp` copy in .dvc/cache",
    "dvc.add.mid_pointer": "DVC rewriting the `.dvc` pointer in place: a torn pointer file",
    "dvc.add.index_locked": "DVC (dulwich) staging the pointer: an empty `.git/index.lock`",
    "git.add.index_locked": "`git add -A` holding `.git/index.lock` while it reads and rewrites the index",
    "git.commit.ref_locked": "`git commit`: commit object written, `HEAD.lock` and `refs/heads/main.lock` held",
    "git.tag.ref_locked": "`git tag`: tag object written, `refs/tags/data-vN.lock` held",
}

# Run by git with the driver's pid in its environment: kills git (its parent) while it holds its lock
# files, and the driver with it, both by SIGKILL. `git add` takes `index.lock` before it reads the index,
# and reading it runs the fsmonitor hook; `reference-transaction prepared` runs with the ref locks taken
# (`git commit` has already renamed its index into place by then, and runs pre-commit with no lock).
_HOOK = """#!/bin/sh
[ "$LABELLOOP_CRASH_AT" = "{point}" ] || exit {skip}
{condition}
kill -KILL "$PPID" "$LABELLOOP_CRASH_DRIVER_PID"
exit 1
"""
_CONDITIONS = {
    "git.add.index_locked": 'tr "\\0" " " < /proc/$PPID/cmdline | grep -q " add " || exit 1',
    "git.commit.ref_locked": '[ "$1" = prepared ] || exit 0\ngrep -q " refs/tags/" && exit 0',
    "git.tag.ref_locked": '[ "$1" = prepared ] || exit 0\ngrep -q " refs/tags/" || exit 0',
}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm_registry_crash_point(point: str | None) -> None:
    """Make this process die by SIGKILL at `point` inside DVC or git (see REGISTRY_CRASH_POINTS)."""
    if point not in REGISTRY_CRASH_POINTS:
        return
    if point.startswith("git."):
        hooks = Path(tempfile.mkdtemp(prefix="labelloop-crash-hooks-"))
        hook = hooks / ("fsmonitor" if point == "git.add.index_locked" else "reference-transaction")
        # not killing: a failing fsmonitor makes git scan the tree itself; a failing ref hook would abort
        hook.write_text(_HOOK.format(point=point, condition=_CONDITIONS[point], skip=1 if hook.name == "fsmonitor" else 0))
        hook.chmod(0o755)
        key, value = ("core.fsmonitor", str(hook)) if hook.name == "fsmonitor" else ("core.hooksPath", str(hooks))
        count = int(os.environ.get("GIT_CONFIG_COUNT", "0"))  # git config from the environment (git >= 2.31)
        os.environ.update({"GIT_CONFIG_COUNT": str(count + 1), f"GIT_CONFIG_KEY_{count}": key,
                           f"GIT_CONFIG_VALUE_{count}": value, "LABELLOOP_CRASH_DRIVER_PID": str(os.getpid())})
    elif point == "dvc.add.mid_copy":
        import dvc_objects.fs.local as local

        def half_copy(src, dst, *args, **kwargs):
            data = Path(src).read_bytes()
            with open(dst, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            _die()

        local.copyfile = half_copy
    elif point == "dvc.add.mid_pointer":
        import dvc.dvcfile
        from dvc.utils.serialize import dumps_yaml

        def torn_dump(path, data, *args, **kwargs):
            text = dumps_yaml(data)
            with open(path, "w", encoding="utf-8") as handle:  # DVC's own mode: truncate, then write
                handle.write(text[: len(text) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            _die()

        dvc.dvcfile.dump_yaml = torn_dump
    elif point == "dvc.add.index_locked":
        import dulwich.index

        dulwich.index.write_index_dict = lambda *args, **kwargs: _die()


def run_cycle_stages(root: str) -> None:
    ws = Workspace.at(root)
    with workspace_lock(ws):  # as every stage flow holds it
        _run_stages(ws, root)


def _run_stages(ws: Workspace, root: str) -> None:
    from labelloop.tasks.capture import capture_predictions
    from labelloop.tasks.dataset import update_dataset
    from labelloop.tasks.export import export_batches
    from labelloop.tasks.gate import decide, promote, record
    from labelloop.tasks.importing import import_labels
    from labelloop.tasks.production import serve_traffic
    from labelloop.tasks.select import select_batch
    from labelloop.tasks.train import train_challenger

    p = ws.params()
    gate_stage.resume_gate(ws, p.train.model_name)  # as the cycle flow does first
    serve_traffic.fn(root, p.production, p.train.model_name)
    capture_predictions.fn(root, p.capture)
    select_batch.fn(root, p.select, p.train)
    export_batches.fn(root, p.export)
    import_labels.fn(root, p.import_, p.export)
    version = update_dataset.fn(root)
    if version.created or train_stage.needs_retrain(ws, p.train, version.tag):
        train_challenger.fn(root, p.train)
        decision = decide.fn(root, p.train.model_name, p.gate)
        if decision.challenger_version != decision.champion_version:
            record.fn(root, p.train.model_name, decision)
            if decision.promote:
                promote.fn(root, p.train.model_name, decision)


# What the stages import, their lazy imports included (found from sys.modules after one run).
PRELOAD = (
    "dulwich.index", "dvc.dvcfile", "dvc.repo", "dvc_objects.fs.local", "great_expectations", "matplotlib.pyplot",
    "mlflow.tracking", "scmrepo.git", "skops.io", "sklearn.metrics", "xgboost",
    "labelloop.tasks.capture", "labelloop.tasks.dataset", "labelloop.tasks.export", "labelloop.tasks.gate",
    "labelloop.tasks.importing", "labelloop.tasks.production", "labelloop.tasks.select", "labelloop.tasks.train",
)


def _run_forked(point: str, root: str, log: str) -> None:
    """In the forked child: output to `log`, arm `point`, run the stages, never return."""
    code = 0
    try:
        descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        os.environ[ENV] = point
        arm_registry_crash_point(point)
        run_cycle_stages(root)
    except BaseException:  # noqa: BLE001 - the child reports any failure by its exit code and log
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve_crashes() -> None:
    """The fork server (see the module docstring): one child per request line, one answer line each."""
    for name in PRELOAD:
        importlib.import_module(name)
    # fork() copies only the calling thread: a lock held by another thread would stay locked in the child.
    if threading.active_count() != 1:
        raise RuntimeError(f"the crash driver must fork from a single thread: {threading.enumerate()}")
    for line in sys.stdin:
        request = json.loads(line)
        child = os.fork()
        if child == 0:
            _run_forked(request["point"], request["root"], request["log"])
        _, status = os.waitpid(child, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"returncode": code}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve_crashes()
    else:
        arm_registry_crash_point(os.environ.get(ENV))
        run_cycle_stages(sys.argv[1])
