"""How long a run started from the Prefect UI takes on the embedded default (issue 15: under a minute).

`labelloop ui -w WS` (the workspace's background server, its deployments served by Prefect's runner), then
N runs of the cycle's deployment created through the API, as the UI's "Run → Custom run" creates them, each
waited for. Printed per run: created → started (the runner noticing the run and starting its process) and
started → ended (the cycle in that process), from the run's own timestamps on the server.

    .venv/bin/python benchmarks/ui_custom_run.py --workspace WS --runs 2

WS must be an initialised workspace (e.g. the demo's); each run buys a batch. The served process and the
server are left running (`labelloop server stop -w WS` stops both).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()  # context only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True, help="an initialised workspace (changed: runs buy batches)")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    workspace = str(args.workspace.resolve())
    print("#", shlex.join([sys.executable, *sys.argv]), "|", uptime(), flush=True)
    started = time.monotonic()
    served = subprocess.run([str(BIN / "labelloop"), "ui", "-w", workspace], capture_output=True, text=True, check=True)
    url = re.search(r"http://127\.0\.0\.1:\d+", served.stdout + served.stderr)
    if url is None:
        raise SystemExit(f"`labelloop ui` printed no URL:\n{served.stdout}\n{served.stderr}")
    print(f"labelloop ui: {time.monotonic() - started:.1f} s to a served UI at {url.group(0)}", flush=True)
    os.environ["PREFECT_API_URL"] = url.group(0) + "/api"
    from prefect.deployments import run_deployment

    for number in range(args.runs):
        started = time.monotonic()
        run = run_deployment("active_learning_cycle/local", parameters={"workspace": workspace}, timeout=900,
                             poll_interval=1)
        if run.start_time is None or run.end_time is None:
            raise SystemExit(f"run {number} did not finish: {run.state}")
        print(f"run {number}: {time.monotonic() - started:.1f} s {run.state.type.value}; created → started "
              f"{(run.start_time - run.created).total_seconds():.1f} s, started → ended "
              f"{(run.end_time - run.start_time).total_seconds():.1f} s", flush=True)
    print("# end:", uptime())


if __name__ == "__main__":
    main()
