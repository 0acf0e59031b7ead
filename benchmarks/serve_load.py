"""Load test of `labelloop.apps.serving` on 127.0.0.1: throughput, latency, and that no prediction is lost.

Creates a fresh workspace (shipped satellite data), trains + promotes version 1, trains version 2 as a
challenger, starts the server in a subprocess on a free loopback port, sends `--requests` POST /predict
with `--concurrency` clients (bounded by `--max-seconds`), promotes version 2 when half the requests
are done, stops the server with SIGTERM (graceful: in-flight requests finish, the buffer is flushed),
then checks every answered prediction_id is in the prediction log exactly once and that capture reads
every part. Exits 1 if any request failed or any row was lost.

`--mode durable|buffered|both` picks the serving mode; `both` runs the same load against each mode in
turn on the same workspace (buffered first, then durable; a fresh server and log each time) and prints a
comparison (requests/s, p99) with the load average at the start of each run.

    .venv/bin/python benchmarks/serve_load.py --requests 3000 --concurrency 8
    .venv/bin/python benchmarks/serve_load.py --mode both --requests 2000 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_workspace(root: Path):
    from labelloop.apps.init import init_workspace
    from labelloop.config import Params
    from labelloop.stages import gate
    from labelloop.stages import train as train_stage

    ws = init_workspace(root, Params())
    train = ws.params().train  # the workspace's own model name
    first = train_stage.train_challenger(ws, train.model_copy(update={"n_estimators": 60, "max_depth": 4}))
    gate.promote(ws, model_name_of(ws), first.version, reason="benchmark: first champion")
    second = train_stage.train_challenger(ws, train.model_copy(update={"n_estimators": 100, "max_depth": 5}))
    return ws, first.version, second.version


def model_name_of(ws) -> str:
    return ws.params().train.model_name


def wait_healthy(base: str, server: subprocess.Popen, seconds: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server did not become healthy")


async def load(base: str, bodies: list[dict], concurrency: int, max_seconds: float, on_half) -> dict:
    import httpx

    latencies: list[float] = []
    ids: list[str] = []
    versions: list[tuple[int, str]] = []
    errors: list[str] = []
    next_index = 0
    half_done = asyncio.Event()
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        async def worker() -> None:
            nonlocal next_index
            while next_index < len(bodies) and time.monotonic() < deadline:
                index = next_index
                next_index += 1
                started = time.perf_counter()
                try:
                    response = await client.post("/predict", json=bodies[index])
                except httpx.HTTPError as error:
                    errors.append(f"{type(error).__name__}: {error}")
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                body = response.json()
                ids.extend(p["prediction_id"] for p in body["predictions"])
                versions.append((index, body["model_version"]))
                if len(latencies) >= len(bodies) // 2 and not half_done.is_set():
                    half_done.set()

        async def promoter() -> None:
            await half_done.wait()
            await asyncio.to_thread(on_half)

        started = time.perf_counter()
        promote_task = asyncio.create_task(promoter())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        if not promote_task.done():
            promote_task.cancel()
    return {"latencies": latencies, "ids": ids, "versions": versions, "errors": errors, "elapsed": elapsed,
            "attempted": next_index}


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rows-per-request", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=300, help="stop sending after this long")
    parser.add_argument("--flush-rows", type=int, default=500)
    parser.add_argument("--flush-seconds", type=float, default=2.0)
    parser.add_argument("--alias-ttl-seconds", type=float, default=2.0)
    parser.add_argument("--mode", choices=["durable", "buffered", "both"], default="durable",
                        help="serving mode; both = buffered then durable on the same workspace, then a comparison")
    parser.add_argument("--commit-wait-ms", type=float, default=None,
                        help="durable mode: group commit wait (server default if unset)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the workspace goes (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    if not 0 < args.requests <= 100_000 or not 0 < args.concurrency <= 64 or not 0 < args.rows_per_request <= 1000:
        parser.error("bounded load only: 0 < requests <= 100000, 0 < concurrency <= 64, 0 < rows-per-request <= 1000")
    for key, value in {"GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1", "MLFLOW_LOGGING_LEVEL": "WARNING",
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_ENABLE_TELEMETRY": "false"}.items():
        os.environ.setdefault(key, value)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the workspace's own SQLite registry

    import pandas as pd

    from labelloop.stages import gate

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="serve-load-"))
    t0 = time.perf_counter()
    ws, v_first, v_second = make_workspace(workdir / "ws")
    name = model_name_of(ws)
    print(f"workspace {ws.root}: champion v{v_first}, challenger v{v_second} ({time.perf_counter() - t0:.0f} s)", flush=True)

    features = ws.schema().feature_columns
    traffic = pd.read_parquet(ws.simulator_dir / "traffic.parquet")[features]
    records = traffic.to_dict(orient="records")
    k = args.rows_per_request
    bodies = [{"rows": [records[(i * k + j) % len(records)] for j in range(k)]} for i in range(args.requests)]

    modes = ["buffered", "durable"] if args.mode == "both" else [args.mode]
    summaries = []
    for index, mode in enumerate(modes):
        if index:
            gate.promote(ws, name, v_first, reason="benchmark: same alias switch for the next mode")
        summaries.append(run_mode(args, argv, ws, name, v_first, v_second, bodies, workdir, mode))
    if len(summaries) > 1:
        print("\ncomparison (same workspace, same requests, loopback):")
        print(f"{'mode':<9} {'req/s':>8} {'rows/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'rows/fsync':>10} {'lost':>5} "
              f"{'load avg (1/5/15 min)':>24}")
        for summary in summaries:
            print(f"{summary['mode']:<9} {summary['requests_per_s']:>8} {summary['rows_per_s']:>8} "
                  f"{summary['latency_ms']['p50']:>8} {summary['latency_ms']['p99']:>8} "
                  f"{summary.get('rows_per_group_commit') or '-':>10} {summary['lost_rows']:>5} {summary['load_average']:>24}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=2) + "\n")
    return 0 if all(s["ok"] for s in summaries) else 1


def run_mode(args, argv, ws, name, v_first, v_second, bodies, workdir: Path, mode: str) -> dict:
    import httpx
    import pandas as pd

    from labelloop.config import CaptureParams
    from labelloop.stages import gate
    from labelloop.stages.capture import capture
    from labelloop.stages.production import list_log_parts

    parts_before = set(list_log_parts(ws))
    load_average = " ".join(f"{x:.2f}" for x in os.getloadavg())
    port = free_port()
    server_cmd = [sys.executable, "-m", "labelloop.flows.cli", "serve", "--workspace", str(ws.root),
                  "--host", "127.0.0.1", "--port", str(port),
                  "--flush-rows", str(args.flush_rows), "--flush-seconds", str(args.flush_seconds),
                  "--alias-ttl-seconds", str(args.alias_ttl_seconds), "--log-level", "warning", "--mode", mode]
    if args.commit_wait_ms is not None:
        server_cmd += ["--commit-wait-ms", str(args.commit_wait_ms)]
    server_log = workdir / f"server-{mode}.log"
    with open(server_log, "w") as log_handle:
        server = subprocess.Popen(server_cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                  stdout=log_handle, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    promoted_at: dict[str, float] = {}
    health: dict = {}
    try:
        wait_healthy(base, server)

        def promote_second() -> None:
            promoted_at["t"] = time.perf_counter()
            gate.promote(ws, name, v_second, reason="benchmark: alias moved mid-load")

        result = asyncio.run(load(base, bodies, args.concurrency, args.max_seconds, promote_second))
        health = httpx.get(f"{base}/health", timeout=30).json()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    # uvicorn re-raises the SIGTERM it caught once its graceful shutdown (lifespan included) is done.
    clean_exit = server.returncode in (0, -signal.SIGTERM)

    parts = [p for p in list_log_parts(ws) if p not in parts_before]
    log = pd.concat([pd.read_parquet(p, columns=["prediction_id", "model_version"]) for p in parts], ignore_index=True) \
        if parts else pd.DataFrame({"prediction_id": [], "model_version": []})
    logged = set(log["prediction_id"])
    answered = result["ids"]
    lost = [i for i in answered if i not in logged]
    extra = len(logged - set(answered))
    duplicates = int(log["prediction_id"].duplicated().sum())
    report = capture(ws, CaptureParams(confidence_threshold=1.0))

    versions = result["versions"]
    by_version = {v: sum(1 for _, x in versions if x == v) for v in sorted({x for _, x in versions})}
    first_new = min((i for i, v in versions if v == v_second), default=None)
    last_old = max((i for i, v in versions if v == v_first), default=None)
    n_ok = len(versions)
    groups = health.get("wal_groups_committed")
    summary = {
        "mode": mode,
        "requests_sent": result["attempted"],
        "requests_ok": n_ok,
        "errors": len(result["errors"]),
        "error_samples": result["errors"][:5],
        "rows_answered": len(answered),
        "rows_logged": len(log),
        "lost_rows": len(lost),
        "unexpected_logged_rows": extra,
        "duplicate_logged_ids": duplicates,
        "log_parts": len(parts),
        "group_commits": groups,
        "rows_per_group_commit": round(len(answered) / groups, 2) if groups else None,
        "capture_rows_read": report.rows_read,
        "capture_rows_quarantined": report.rows_quarantined,
        "requests_per_version": by_version,
        "alias_switch": {"first_request_on_new": first_new, "last_request_on_old": last_old},
        "elapsed_s": round(result["elapsed"], 2),
        "requests_per_s": round(n_ok / result["elapsed"], 1) if result["elapsed"] else None,
        "rows_per_s": round(len(answered) / result["elapsed"], 1) if result["elapsed"] else None,
        "latency_ms": {"p50": round(percentile(result["latencies"], 50) * 1000, 2),
                       "p90": round(percentile(result["latencies"], 90) * 1000, 2),
                       "p99": round(percentile(result["latencies"], 99) * 1000, 2),
                       "max": round(max(result["latencies"], default=float("nan")) * 1000, 2)},
        "load_average": load_average,
        "server_clean_exit": clean_exit,
        "server_returncode": server.returncode,
        "settings": {"requests": args.requests, "concurrency": args.concurrency, "rows_per_request": len(bodies[0]["rows"]),
                     "flush_rows": args.flush_rows, "flush_seconds": args.flush_seconds,
                     "alias_ttl_seconds": args.alias_ttl_seconds, "cpus": os.cpu_count()},
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/serve_load.py", *(argv or sys.argv[1:])]),
        "server_command": " ".join(shlex.quote(a) for a in server_cmd),
    }
    summary["ok"] = summary["errors"] == 0 and not lost and clean_exit and n_ok == args.requests and v_second in by_version
    print(json.dumps(summary, indent=2), flush=True)
    if not summary["ok"]:
        print(f"FAILED ({mode}; server log: {server_log})", file=sys.stderr)
    return summary


if __name__ == "__main__":
    sys.exit(main())
