"""Capture + scoring throughput (rows/s) over a partitioned prediction log: single process vs Dask.

    .venv/bin/python benchmarks/dask_throughput.py --rows 10000000 [--parts 50] [--workers 2] [--address tcp://host:8786]

Writes a synthetic log shaped like the shipped satellite set (36 features, 6 classes; a Dirichlet
mix of confident and unsure predictions) as date-partitioned parquet parts under --data (reused when
it already holds the same rows/parts), trains a small champion, then runs the same capture + scoring
(GX validation, low-confidence filter, champion rescoring, margin utility, per-part top-k + merge)
in one process and on Dask, checks both give the same batch, and prints rows/s for each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labelloop.adapters import dask as distributed

N_FEATURES, CLASSES = 36, ["1", "2", "3", "4", "5", "7"]
FEATURES = [f"f{i:02d}" for i in range(N_FEATURES)]
PROBAS = [f"proba_{c}" for c in CLASSES]


def make_part(rng: np.random.Generator, start: int, rows: int, day: str) -> pd.DataFrame:
    x = rng.normal(size=(rows, N_FEATURES)).astype(np.float64)
    concentration = np.where(rng.random(rows) < 0.5, 0.3, 3.0)[:, None]  # half sure, half unsure
    p = rng.gamma(np.broadcast_to(concentration, (rows, len(CLASSES))))
    p /= p.sum(axis=1, keepdims=True)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame.insert(0, "prediction_id", np.char.add("p", np.arange(start, start + rows).astype(str)).astype(object))
    frame.insert(1, "ts", pd.Timestamp(day, tz="UTC"))
    frame.insert(2, "model_version", "1")
    for i, column in enumerate(PROBAS):
        frame[column] = p[:, i]
    frame["predicted"] = np.asarray(CLASSES, dtype=object)[p.argmax(axis=1)]
    frame["confidence"] = p.max(axis=1)
    return frame


def ensure_log(root: Path, rows: int, parts: int) -> list[str]:
    stamp = root / "log.json"
    wanted = {"rows": rows, "parts": parts, "features": N_FEATURES}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return distributed.list_parts(root / "predictions")
    rng = np.random.default_rng(0)
    per_part = rows // parts
    started = time.perf_counter()
    for i in range(parts):
        n = per_part if i < parts - 1 else rows - per_part * (parts - 1)
        day = f"2026-01-{1 + i * 28 // parts:02d}"
        path = root / "predictions" / f"date={day}" / f"part-{i:04d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_part(rng, i * per_part, n, day).to_parquet(path, index=False)
    stamp.write_text(json.dumps(wanted))
    seconds = time.perf_counter() - started
    print(f"wrote {rows:,} rows in {parts} parts under {root / 'predictions'} in {seconds:.0f} s", flush=True)
    return distributed.list_parts(root / "predictions")


def champion():
    from labelloop.config import TrainParams
    from labelloop.model import LabelloopClassifier

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, N_FEATURES))
    y = np.asarray(CLASSES)[(np.abs(x[:, :6]).argmax(axis=1))]
    params = TrainParams(n_estimators=50, max_depth=4, n_jobs=1)
    return LabelloopClassifier.from_params(params, CLASSES).fit(pd.DataFrame(x, columns=FEATURES), y)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--parts", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--address", default=None, help="an existing Dask scheduler instead of a LocalCluster")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--no-rescore", action="store_true", help="score the logged probabilities instead of rescoring")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent / "results" / "dask_pool")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "dask_throughput.json")
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

    parts = ensure_log(args.data, args.rows, args.parts)
    model = None if args.no_rescore else champion()
    kwargs = dict(threshold=args.threshold, strategy="margin", top_k=args.batch, model=model)
    distributed.scan_pool(parts[:1], FEATURES, PROBAS, **kwargs)  # warm GX and XGBoost in this process

    single = distributed.scan_pool(parts, FEATURES, PROBAS, **kwargs)
    print(f"single process: {single.rows_read:,} rows in {single.seconds:.1f} s = {single.rows_per_second:,.0f} rows/s",
          flush=True)
    with distributed.dask_client(args.address, n_workers=args.workers, threads_per_worker=1) as client:
        client.run(lambda: __import__("labelloop.adapters.validation") and None)  # worker imports outside the timing
        distributed.scan_pool(parts[:args.workers], FEATURES, PROBAS, client=client, **kwargs)  # warm GX per worker
        on_dask = distributed.scan_pool(parts, FEATURES, PROBAS, client=client, **kwargs)
    print(f"{on_dask.mode}: {on_dask.rows_read:,} rows in {on_dask.seconds:.1f} s = {on_dask.rows_per_second:,.0f} rows/s",
          flush=True)
    same = single.top["prediction_id"].tolist() == on_dask.top["prediction_id"].tolist()
    print(f"same batch of {len(single.top)}: {same}; low-confidence rows {single.rows_low_confidence:,}; "
          f"speed-up x{single.seconds / on_dask.seconds:.2f} on {os.cpu_count()} cores")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "rows": single.rows_read, "parts": len(parts), "rescore": model is not None, "cpu_count": os.cpu_count(),
        "single": {"seconds": single.seconds, "rows_per_s": single.rows_per_second},
        "dask": {"mode": on_dask.mode, "seconds": on_dask.seconds, "rows_per_s": on_dask.rows_per_second},
        "same_batch": same,
    }, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
