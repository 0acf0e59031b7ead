"""Where a cycle's time goes, and how far a cycle is from its bare work (issue 15: both ≤ 3×).

Side by side in one run on one workspace, round by round interleaved (the order rotating), medians:

(a) In one process, steady state: `active_learning_cycle` (after a warm-up cycle, so every module is
    loaded) against `plain_work` — the same work in numpy/pandas/xgboost with those modules already
    imported: score the next `production.rows_per_cycle` traffic rows with the champion, pick the
    `select.batch_size` least certain (smallest margin), look up their labels, refit XGBoost with the
    train params on the labelled set plus them, score challenger and champion on the holdout (accuracy,
    macro-F1), keep the better. Every cycle is sampled (the main thread's stack every 5 ms) into the
    table "where a cycle's time goes": each sample goes to the innermost frame that names a category.
(b) Whole processes: `labelloop cycle --cycles 1 -w WS` (the workspace's background Prefect server already
    up, as after the first command) against this file run as the plain script (`--plain-process`:
    imports numpy, pandas and xgboost, does `plain_work`, exits).

With --before, each round also runs the cycle as it was before the stages became tasks of the cycle's run:
every stage a subflow (a flow run of its own, without a heartbeat thread; in (b) through `--labelloop`, which
is `labelloop` with that replacement).

    .venv/bin/python benchmarks/cycle_overhead.py --rounds 3 --before

Without --workspace a workspace is made in a temporary directory with `labelloop init` (the demo's defaults)
and removed at the end, its background Prefect server stopped. A workspace given is changed: each cycle
buys a batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

BIN = Path(sys.executable).parent
TARGET = 3.0  # issue 15: the cycle ≤ 3× the plain script, in one process and as a whole process
SAMPLE_SECONDS = 0.005

# Innermost frame first; the first category whose test a frame passes takes the sample.
CATEGORIES = (
    ("XGBoost fit and predict", ("/xgboost/",)),
    ("Great Expectations", ("/great_expectations/",)),
    ("MLflow logging, model files, plots", ("/mlflow/", "/matplotlib/", "/skops/", "labelloop/adapters/tracking")),
    ("DVC and git", ("/dvc/", "/dvc_data/", "/dvc_objects/", "/scmrepo/", "/dulwich/", "/pygit2/",
                     "labelloop/adapters/versioning")),
    ("scikit-learn (features, metrics)", ("/sklearn/",)),
    ("Prefect: joining flow-run heartbeat threads", ("_send_heartbeats",)),
    ("Prefect: flow/task runs, states, API calls", ("/prefect/",)),
    ("labelloop's own code (pandas, numpy, files)", ("/labelloop/", "/flows/", "/tasks/")),
)
OTHER = "other (imports, interpreter)"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()  # context only


# ---------------------------------------------------------------- the plain script


def macro_f1(truth, predicted, n_classes: int) -> float:
    import numpy as np

    scores = []
    for k in range(n_classes):
        tp = np.sum((predicted == k) & (truth == k))
        denominator = np.sum(predicted == k) + np.sum(truth == k)
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def plain_work(workspace: Path, state: Path, train: dict, rows: int, batch: int) -> dict:
    """One turn of the loop in plain numpy/pandas/xgboost, reading the workspace's files (never writing them);
    its champion and traffic cursor live in `state`."""
    import numpy as np
    import pandas as pd
    import xgboost as xgb

    traffic = pd.read_parquet(workspace / "simulator" / "traffic.parquet")
    oracle = pd.read_parquet(workspace / "simulator" / "oracle.parquet")
    labeled = pd.read_parquet(workspace / "registry" / "data" / "labeled.parquet")
    holdout = pd.read_parquet(workspace / "registry" / "data" / "holdout.parquet")
    features = [c for c in holdout.columns if c not in ("item_id", "label")]
    meta_path = state / "state.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"cursor": 0, "champion": None}

    def fit(frame: pd.DataFrame):
        classes = np.unique(frame["label"].to_numpy())
        y = np.searchsorted(classes, frame["label"].to_numpy())
        model = xgb.XGBClassifier(n_estimators=train["n_estimators"], max_depth=train["max_depth"],
                                  learning_rate=train["learning_rate"], subsample=train["subsample"],
                                  n_jobs=train["n_jobs"], random_state=train["random_state"])
        return model.fit(frame[features], y), classes

    if meta["champion"] is None:  # setup: a first champion on the labelled set
        champion, champion_classes = fit(labeled)
    else:
        champion = xgb.XGBClassifier()
        champion.load_model(state / "champion.json")
        champion_classes = np.array(meta["champion"])
    start = meta["cursor"] % max(1, len(traffic) - rows)
    scored = traffic.iloc[start:start + rows]
    proba = np.sort(champion.predict_proba(scored[features]), axis=1)
    picked = scored.iloc[np.argsort(proba[:, -1] - proba[:, -2])[:batch]].merge(oracle, on="item_id")
    challenger, challenger_classes = fit(pd.concat([labeled[[*features, "label"]], picked[[*features, "label"]]]))

    def score(model, classes) -> tuple[float, float]:
        truth = holdout["label"].to_numpy()
        predicted = classes[model.predict(holdout[features])]
        every = np.unique(np.concatenate([truth, classes]))
        return float(np.mean(predicted == truth)), macro_f1(np.searchsorted(every, truth),
                                                             np.searchsorted(every, predicted), len(every))

    old, new = score(champion, champion_classes), score(challenger, challenger_classes)
    if meta["champion"] is None or new[0] >= old[0]:
        challenger.save_model(state / "champion.json")
        meta["champion"] = challenger_classes.tolist()
    meta["cursor"] = start + rows
    meta_path.write_text(json.dumps(meta))
    return {"champion": old, "challenger": new, "labels": len(labeled) + len(picked)}


# ---------------------------------------------------------------- sampling


class StackSampler:
    """Samples the main thread's stack every SAMPLE_SECONDS; `seconds` per category (weighted by the real
    interval, so the total is the wall time)."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._main = threading.main_thread().ident

    def __enter__(self) -> StackSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(SAMPLE_SECONDS):
            frame = sys._current_frames().get(self._main)
            now = time.perf_counter()
            self.seconds[category(frame)] += now - last
            last = now


def category(frame) -> str:
    while frame is not None:
        where = f"{frame.f_code.co_filename}:{frame.f_code.co_name}"
        for name, marks in CATEGORIES:
            if any(mark in where for mark in marks):
                return name
        frame = frame.f_back
    return OTHER


STAGE_NAMES = ("production", "capture", "select", "export", "import", "dataset", "train", "gate")


def stage_subflows(stages_module) -> dict:
    """The cycle's stages as they were before they became tasks: each stage flow called as a subflow of the
    cycle's run, without a heartbeat thread of its own (the previous `stages_as_subflows`)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    def as_subflow(stage_flow):
        def call(*args, **kwargs):
            with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                return stage_flow(*args, **kwargs)
        return call

    return {f"{name}_stage": as_subflow(getattr(stages_module, f"{name}_flow")) for name in STAGE_NAMES}


@contextlib.contextmanager
def subflows(on: bool):
    """With `on`, the cycle as before: every stage a flow run of its own under the cycle's run."""
    import labelloop.flows.cycle as cycle_module
    import labelloop.flows.stages as stages

    kept = {name: getattr(cycle_module, name) for name in stage_subflows(stages)}
    if on:
        for name, call in stage_subflows(stages).items():
            setattr(cycle_module, name, call)
    try:
        yield
    finally:
        for name, call in kept.items():
            setattr(cycle_module, name, call)


# ---------------------------------------------------------------- the two comparisons


def in_process(workspace: Path, state: Path, plain_args: tuple, rounds: int, warmup: int, before: bool) -> dict:
    from labelloop.flows import cli

    cli._quiet_environment(workspace)
    ws = cli._workspace(workspace)
    cli._use_prefect_server(ws)
    from labelloop.flows.cycle import active_learning_cycle

    for _ in range(warmup):
        started = time.perf_counter()
        record = active_learning_cycle(str(workspace))
        print(f"# warm-up cycle: {record.line()} | {time.perf_counter() - started:.1f} s", flush=True)
    plain_work(workspace, state, *plain_args)  # its warm-up: imports, first champion
    variants = ["cycle (before)", "cycle", "plain work"] if before else ["cycle", "plain work"]
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    where: dict[str, Counter[str]] = {name: Counter() for name in variants if name != "plain work"}
    for r in range(rounds):
        for name in variants[r % len(variants):] + variants[:r % len(variants)]:
            started = time.perf_counter()
            if name == "plain work":
                plain_work(workspace, state, *plain_args)
                line = "plain work"
            else:
                with subflows(name == "cycle (before)"), StackSampler() as sampler:
                    line = active_learning_cycle(str(workspace)).line()
                where[name].update(sampler.seconds)
            seconds[name].append(time.perf_counter() - started)
            print(f"# round {r + 1}: {name:<15} {seconds[name][-1]:6.2f} s   {line}", flush=True)
    return {"seconds": seconds, "where": {name: {k: v / rounds for k, v in c.items()} for name, c in where.items()}}


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def whole_process(workspace: Path, state: Path, plain_args: tuple, rounds: int, before: bool, env: dict[str, str]) -> dict:
    train, rows, batch = plain_args
    commands = {
        "cycle (before)": [sys.executable, __file__, "--labelloop", "cycle", "--cycles", "1", "-w", str(workspace)],
        "cycle": [str(BIN / "labelloop"), "cycle", "--cycles", "1", "-w", str(workspace)],
        "plain script": [sys.executable, __file__, "--plain-process", str(workspace), str(state), json.dumps(train),
                         str(rows), str(batch)],
    }
    if not before:
        commands.pop("cycle (before)")
    names = list(commands)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds[name].append(timed(commands[name], env))
            print(f"# round {r + 1}: {name:<15} {seconds[name][-1]:6.2f} s", flush=True)
    return {"seconds": seconds, "commands": {name: shlex.join(c) for name, c in commands.items()}}


def report(title: str, seconds: dict[str, list[float]], base_name: str, commands: dict[str, str] | None = None) -> None:
    base = statistics.median(seconds[base_name])
    print(f"\n{title}\n{'':<16} {'median s':>9} {'ratio':>7}   runs (s)")
    for name, values in seconds.items():
        median = statistics.median(values)
        verdict = "" if name == base_name or "before" in name else \
            f"   (target ≤ {TARGET:.0f}×: {'met' if median / base <= TARGET else 'NOT met'})"
        print(f"{name:<16} {median:>9.2f} {median / base:>6.2f}×   {' '.join(f'{v:.1f}' for v in values)}{verdict}")
        if commands:
            print(f"{'':<16} {commands[name]}")


def where_table(where: dict[str, dict[str, float]]) -> None:
    names = list(where)
    print("\nWhere a cycle's time goes (in-process, mean s per cycle, sampled every "
          f"{SAMPLE_SECONDS * 1000:.0f} ms)\n{'':<46}" + "".join(f"{n:>22}" for n in names))
    totals = {n: sum(where[n].values()) for n in names}
    for cat in [c for c, _ in CATEGORIES] + [OTHER]:
        cells = "".join(f"{where[n].get(cat, 0.0):>12.2f} s {100 * where[n].get(cat, 0.0) / totals[n]:>5.0f}%"
                        for n in names)
        print(f"{cat:<46}{cells}")
    print(f"{'total':<46}" + "".join(f"{totals[n]:>12.2f} s {100:>5.0f}%" for n in names))


def labelloop_before(argv: list[str]) -> None:
    """`labelloop ARGV` with every stage of the cycle a subflow, as before the stages became tasks."""
    from labelloop.flows import cli

    use_server = cli._use_prefect_server

    def use_server_then_replace(ws) -> None:  # Prefect must not load before the server's URL is set
        use_server(ws)
        import labelloop.flows.stages as stages  # replaced before the cycle module imports the names

        for name, call in stage_subflows(stages).items():
            setattr(stages, name, call)

    cli._use_prefect_server = use_server_then_replace
    sys.argv = ["labelloop", *argv]
    cli.app()


def main() -> None:
    from labelloop.core.threads import apply_thread_environment

    apply_thread_environment()  # as `labelloop` does first thing: the cycle and the plain script alike
    if sys.argv[1:2] == ["--plain-process"]:  # the plain script, as a process of its own
        workspace, state, train, rows, batch = sys.argv[2:7]
        plain_work(Path(workspace), Path(state), json.loads(train), int(rows), int(batch))
        return
    if sys.argv[1:2] == ["--labelloop"]:
        labelloop_before(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=None, help="a workspace to run cycles on (changed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="in-process cycles before the timed ones")
    parser.add_argument("--before", action="store_true",
                        help="also time the cycle with every stage a subflow (before the stages became tasks)")
    parser.add_argument("--skip-process", action="store_true", help="only (a), the in-process comparison")
    args = parser.parse_args()

    print("#", shlex.join([sys.executable, *sys.argv]), flush=True)
    print("# start:", uptime(), "| threads:", {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
          flush=True)
    scratch = tempfile.TemporaryDirectory(prefix="labelloop-cycle-overhead-")
    workspace = args.workspace
    made = workspace is None
    if made:
        workspace = Path(scratch.name) / "ws"
        timed([str(BIN / "labelloop"), "init", str(workspace)])
    workspace = workspace.resolve()
    state = Path(scratch.name) / "plain"
    state.mkdir()
    from labelloop.core.threads import resolve_n_jobs
    from labelloop.workspace import Workspace

    p = Workspace.at(workspace).params()
    train = {"n_estimators": p.train.n_estimators, "max_depth": p.train.max_depth, "learning_rate": p.train.learning_rate,
             "subsample": p.train.subsample, "n_jobs": resolve_n_jobs(p.train.n_jobs), "random_state": p.train.random_state}
    plain_args = (train, p.production.rows_per_cycle, p.select.batch_size)
    print(f"# workspace {workspace}; plain work: {p.production.rows_per_cycle} rows scored, {p.select.batch_size} "
          f"picked, XGBoost {train}", flush=True)
    env = dict(os.environ)  # as a shell would start them: without what (a) sets for its own process (PREFECT_API_URL…)
    try:
        a = in_process(workspace, state, plain_args, args.rounds, args.warmup, args.before)
        print("# after (a):", uptime(), flush=True)
        b = None if args.skip_process else whole_process(workspace, state, plain_args, args.rounds, args.before, env)
        print("# end:", uptime(), flush=True)
    finally:
        if made:
            subprocess.run([str(BIN / "labelloop"), "server", "stop", "-w", str(workspace)], capture_output=True,
                           check=False)
        scratch.cleanup()
    report("(a) one process, steady state: the cycle vs the plain work (modules loaded)", a["seconds"], "plain work")
    where_table(a["where"])
    if b is not None:
        report("(b) whole processes: `labelloop cycle --cycles 1` vs the plain script", b["seconds"], "plain script",
               b["commands"])


if __name__ == "__main__":
    main()
