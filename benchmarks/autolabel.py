"""Auto-labelling: human labels to reach 99% of the full-pool accuracy with and without auto-labels, and the
auto-labels' true precision per active cycle against the target (benchmark, not a test).

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/autolabel.py \
        --data /work/shared/datasets/satellite.parquet --rounds 15 --repeats 5 --n-jobs 1 \
        --arm defaults={} --arm holdout='{"check_holdout": true, "holdback_share": 0}' \
        --out benchmarks/results/autolabel_satellite

Both arms run the same strategy on the same seeds, holdout and seed set (`labelloop.apps.simulate`); with
auto-labels, `holdback_share` of every batch goes to check items and the rest to the strategy's picks, so both arms
buy the same human labels per round. The simulator labels check items with the hidden truth (perfect annotators)
and measures each round's auto-labels against it. Prints labels-to-target per arm and repeat, the reduction, the
true precision of every active round, and the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.apps.simulate import SimulationConfig, labels_to_target, run_simulation
from labelloop.config import AutolabelParams, TrainParams


def loop_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    """The simulated loop's flags (also benchmarks/autolabel_bound.py's)."""
    parser.add_argument("--data", required=True)
    parser.add_argument("--label-col", default="label")
    parser.add_argument("--strategy", default="hybrid")
    parser.add_argument("--seed-size", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="the simulation's seed (holdout split, seed set, picks)")
    parser.add_argument("--n-jobs", type=int, default=1)


def loop_config(args: argparse.Namespace, out: Path, **extra) -> SimulationConfig:
    """The simulation of `loop_arguments`' flags, writing to `out`; `extra`: further SimulationConfig fields."""
    return SimulationConfig(
        data=args.data, label_col=args.label_col, strategies=[args.strategy], seed_size=args.seed_size,
        batch_size=args.batch_size, rounds=args.rounds, repeats=args.repeats, seed=args.seed, out=str(out),
        train_params=TrainParams(n_jobs=args.n_jobs), log_mlflow=False, progress=False, **extra,
    )


def command_line() -> str:
    """This process's command, quoted for a shell."""
    return " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    loop_arguments(parser, rounds=15)
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=JSON",
                        help="an auto-labelling arm: AutolabelParams as JSON (enabled is set; repeatable); "
                             "default: one arm `autolabel` with params.yaml's defaults")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    arms = {"human_only": None}
    for spec in args.arm or ["autolabel={}"]:
        name, _, body = spec.partition("=")
        arms[name] = AutolabelParams(**{**json.loads(body or "{}"), "enabled": True})
    out = Path(args.out)
    summaries, curves = {}, {}
    for arm, params in arms.items():
        summaries[arm] = run_simulation(loop_config(args, out / arm, autolabel=params), echo=None)
        curves[arm] = pd.read_csv(out / arm / "curves.csv")
    target = summaries["human_only"]["target"]
    result: dict = {"data": args.data, "strategy": args.strategy, "target": target,
                    "full_pool_value": summaries["human_only"]["full_pool_value"], "arms": {}}
    for arm, frame in curves.items():
        mean = frame.groupby("n_labels")["accuracy"].mean()
        per_repeat = [labels_to_target(g["n_labels"].to_numpy(), g["accuracy"].to_numpy(), target)
                      for _, g in frame.groupby("repeat")]
        result["arms"][arm] = {"labels_to_target": labels_to_target(mean.index.to_numpy(), mean.to_numpy(), target),
                               "per_repeat": per_repeat, "final_accuracy": float(mean.iloc[-1]),
                               "seconds": summaries[arm]["seconds_total"]}
    base = result["arms"]["human_only"]["labels_to_target"]
    for arm, params in arms.items():
        entry = result["arms"][arm]
        if params is None:
            continue
        entry["autolabel"] = params.model_dump()
        auto = entry["labels_to_target"]
        entry["reduction_pct"] = None if base is None or auto is None else 100.0 * (1 - auto / base)
        frame = curves[arm]
        # A round's row shows the auto-labels its model was trained with (made in the round before).
        active = frame[frame["auto_added"] > 0]
        entry["active_rounds"] = len(active)
        entry["active_rounds_per_repeat"] = [int((g["auto_added"] > 0).sum()) for _, g in frame.groupby("repeat")]
        entry["auto_total_final_mean"] = float(frame.groupby("repeat")["auto_total"].max().mean())
        entry["true_precision_min"] = float(active["auto_true_precision"].min()) if len(active) else None
        entry["true_precision_mean"] = float(np.average(active["auto_true_precision"], weights=active["auto_added"])) \
            if len(active) else None
        entry["rounds_below_target"] = int((active["auto_true_precision"] < params.min_precision).sum())
        entry["per_round"] = active[["repeat", "round", "n_labels", "auto_added", "auto_total", "auto_true_precision",
                                     "auto_bound", "auto_classes"]].to_dict(orient="records")
    result["command"] = command_line()
    (out / "autolabel_summary.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"{args.data}: full-pool {result['full_pool_value']:.4f}, target {target:.4f}")
    for arm, entry in result["arms"].items():
        line = (f"{arm}: labels to target {entry['labels_to_target']} (per repeat {entry['per_repeat']}), "
                f"final accuracy {entry['final_accuracy']:.4f}, {entry['seconds']:.0f} s")
        if arm != "human_only":
            line += (f"; reduction {entry['reduction_pct']}%; active rounds {entry['active_rounds']}, auto-labels "
                     f"{entry['auto_total_final_mean']:.0f}/repeat, true precision min {entry['true_precision_min']} "
                     f"mean {entry['true_precision_mean']}, rounds below target {entry['rounds_below_target']}")
        print(line)
    print("command:", result["command"])
    return result


if __name__ == "__main__":
    main()
