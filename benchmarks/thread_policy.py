"""One XGBoost fit (train's settings) on ~2,000 rows: n_jobs 1 / 2 / auto, OpenMP's default wait vs PASSIVE.

Each configuration runs in its own process, because OpenMP reads OMP_WAIT_POLICY once, when it loads;
the configurations are interleaved round by round so a change in machine load hits all of them alike.

    .venv/bin/python benchmarks/thread_policy.py --data /work/shared/datasets/letter.parquet --rows 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# xgboost (and with it the OpenMP runtime) loads before labelloop, so "default" really is OpenMP's default
# wait policy: importing labelloop first would set PASSIVE (labelloop/__init__.py).
CHILD = """
import json, sys, time
import numpy as np, pandas as pd, xgboost
from labelloop.config import TrainParams
from labelloop.model import LabelloopClassifier
from labelloop.core.threads import resolve_n_jobs
data, rows, n_jobs, fits = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
n_jobs = n_jobs if n_jobs == "auto" else int(n_jobs)
frame = pd.read_parquet(data).sample(rows, random_state=0)
y = frame.pop("label").astype(str).to_numpy()
X = frame.select_dtypes("number").to_numpy(dtype=np.float32)
params = TrainParams(n_jobs=n_jobs)
seconds = []
for _ in range(fits):
    started = time.perf_counter()
    LabelloopClassifier.from_params(params, sorted(set(y))).fit(X, y)
    seconds.append(time.perf_counter() - started)
print(json.dumps({"threads": resolve_n_jobs(n_jobs), "seconds": seconds}))
"""


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()  # context only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/work/shared/datasets/letter.parquet")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="processes per configuration (one fit timed in each)")
    parser.add_argument("--n-jobs", nargs="+", default=["1", "2", "auto"])
    parser.add_argument("--policies", nargs="+", default=["PASSIVE", "default"])
    args = parser.parse_args()

    print("#", " ".join([sys.executable, *sys.argv]))
    print("# before:", uptime(), flush=True)
    base_env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    base_env["PYTHONPATH"] = str(REPO)
    results: dict[tuple[str, str], list[float]] = {}
    threads: dict[tuple[str, str], int] = {}
    for _ in range(args.rounds):
        for policy in args.policies:
            for n_jobs in args.n_jobs:
                env = dict(base_env, **({} if policy == "default" else {"OMP_WAIT_POLICY": policy}))
                out = subprocess.run([sys.executable, "-c", CHILD, args.data, str(args.rows), n_jobs, "1"],
                                     env=env, capture_output=True, text=True, check=True, timeout=900)
                record = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((policy, n_jobs), []).extend(record["seconds"])
                threads[(policy, n_jobs)] = record["threads"]
                print(f"# {policy} n_jobs={n_jobs}: {record}", flush=True)  # a long run still leaves its data
    print("# after:", uptime())
    print(f"| OMP_WAIT_POLICY | n_jobs | threads | fit seconds, median of {args.rounds} | all |")
    print("|---|---|---|---|---|")
    for (policy, n_jobs), seconds in results.items():
        print(f"| {policy} | {n_jobs} | {threads[(policy, n_jobs)]} | {statistics.median(seconds):.2f} | "
              f"{', '.join(f'{s:.2f}' for s in seconds)} |")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"# wall {time.perf_counter() - started:.0f} s")
