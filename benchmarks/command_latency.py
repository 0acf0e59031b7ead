"""How long a person waits for the read-only commands, against importing the libraries a command may use.

Each command runs as a whole process (what a shell does), round by round interleaved with the baseline
`python -c "import pandas, pyarrow, xgboost"`, so a change in machine load hits both alike; the figure
is the median over rounds and the ratio to the baseline's median (issue 15's target for `status`: ≤ 1.5×).

    .venv/bin/python benchmarks/command_latency.py --workspace ./workspace --rounds 5

Without --workspace (or when it does not exist) a small workspace is made in a temporary directory:
`labelloop init`, then `labelloop train` and `labelloop gate`, so there is a champion to read.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
BASELINE = [sys.executable, "-c", "import pandas, pyarrow, xgboost"]
# What `status` did before issue 15 on top of reading files: the three aliases through MLflow's client.
MLFLOW_ALIASES = ("import sys; from labelloop.workspace import Workspace; from labelloop.adapters import tracking; "
                  "ws = Workspace.at(sys.argv[1]); name = ws.params().train.model_name; "
                  "[tracking.alias_version(ws, name, a) for a in (tracking.CHAMPION, tracking.CHALLENGER, tracking.PREVIOUS)]")
TARGET = 1.5  # issue 15: `status` ≤ 1.5× the baseline


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()  # context only


def labelloop(*args: str) -> list[str]:
    return [str(BIN / "labelloop"), *args]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def make_workspace(root: Path) -> Path:
    """A small workspace with a champion (init, train, gate)."""
    for command in (labelloop("init", str(root), "--set", "train.n_estimators=40"), labelloop("train", "-w", str(root)),
                    labelloop("gate", "-w", str(root))):
        print(f"# setup: {shlex.join(command)}", flush=True)
        timed(command)
    return root


def stage_commands(workspace: Path, rounds: int, base: float) -> None:
    """`labelloop dataset` with a temporary Prefect server in each process vs the workspace's background one."""
    os.environ.pop("PREFECT_API_URL", None)  # the workspace's own servers, not a configured API
    env = {k: v for k, v in os.environ.items() if k != "LABELLOOP_PREFECT_SERVER"}
    command = labelloop("dataset", "-w", str(workspace))
    started = time.perf_counter()
    subprocess.run(labelloop("server", "start", "-w", str(workspace)), env=env, capture_output=True, check=True)
    print(f"\n# labelloop server start (cold): {time.perf_counter() - started:.1f} s; {uptime()}")
    seconds: dict[str, list[float]] = {"ephemeral": [], "background": []}
    for _ in range(rounds):
        for mode in seconds:
            os.environ.update(env | {"LABELLOOP_PREFECT_SERVER": mode})
            seconds[mode].append(timed(command))
    for mode, values in seconds.items():
        median = statistics.median(values)
        print(f"dataset ({mode:<10}) {median:>6.2f} s {median / base:>5.2f}×   "
              f"{' '.join(f'{v:.1f}' for v in values)}   LABELLOOP_PREFECT_SERVER={mode} {shlex.join(command)}")
    subprocess.run(labelloop("server", "stop", "-w", str(workspace)), env=env, capture_output=True, check=False)
    print(f"# after: {uptime()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=None, help="a workspace with a champion (the demo's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--commands", nargs="+", default=["status", "lineage", "data versions", "strategies", "--help"])
    parser.add_argument("--stage-rounds", type=int, default=3,
                        help="also time a stage command (`labelloop dataset`, nothing to version) with Prefect's temporary "
                             "server per process vs the workspace's background server (0: skip)")
    args = parser.parse_args()

    print("#", shlex.join([sys.executable, *sys.argv]))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    workspace = args.workspace
    scratch = None
    if workspace is None or not workspace.exists():
        scratch = tempfile.TemporaryDirectory(prefix="labelloop-latency-")
        workspace = make_workspace(Path(scratch.name) / "ws")
    takes_workspace = {"status", "lineage", "data versions"}
    commands = {"baseline": BASELINE}
    for name in args.commands:
        commands[name] = labelloop(*name.split(), *(["-w", str(workspace)] if name in takes_workspace else []))
    commands["old alias path"] = [sys.executable, "-c", MLFLOW_ALIASES, str(workspace)]  # the part `status` no longer pays
    for command in commands.values():  # warm the page cache once; not timed
        timed(command)
    print("# before:", uptime(), flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, command in commands.items():
            seconds[name].append(timed(command))
    print("# after: ", uptime())
    base = statistics.median(seconds["baseline"])
    print(f"{'command':<16} {'median s':>9} {'ratio':>6}   runs (s)   command line")
    for name, values in seconds.items():
        median = statistics.median(values)
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:<16} {median:>9.2f} {median / base:>5.2f}×   {runs}   {shlex.join(commands[name])}")
    ratio = statistics.median(seconds["status"]) / base if "status" in seconds else None
    if ratio is not None:
        print(f"\nstatus / baseline = {ratio:.2f}× (target ≤ {TARGET}×: {'met' if ratio <= TARGET else 'NOT met'})")
    try:
        if args.stage_rounds:
            stage_commands(workspace, args.stage_rounds, base)
    finally:
        if scratch is not None:  # its Prefect server (started by the setup's train) goes with it
            subprocess.run(labelloop("server", "stop", "-w", str(workspace)), capture_output=True, check=False)
            scratch.cleanup()


if __name__ == "__main__":
    main()
