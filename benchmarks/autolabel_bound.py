"""Upper bound of auto-labelling the confident rows of each selected batch: how many human labels to 99% of the
full-pool accuracy it could save at most (benchmark, not a test).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/autolabel_bound.py \
        --data /work/shared/datasets/spam.parquet --rounds 12 --repeats 5 --out benchmarks/results/autolabel_bound_spam

Runs the human-only loop (`labelloop.apps.simulate`, `record_batches`) and records, for every selected batch row,
the model's confidence and whether its guess is the true label. In each round before the target, rows that an
auto-labeller had taken from the batch would have cost no human label; the bound assumes they teach exactly what the
human labels did (same training set, so the accuracy per round is unchanged and only the human count falls):
- oracle: the largest confidence-ordered prefix of each batch whose true precision is ≥ --min-precision (no auto
  rule with measured precision can do better at that precision);
- no precision limit: every batch row at confidence ≥ --min-confidence (any thresholds at or above it label a
  subset of these rows).
Prints labels to target on the mean curve without auto-labels and under both bounds (labels and % saving), the
same per repeat, the confident share of the batch per round, and the command.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from autolabel import command_line, loop_arguments, loop_config  # benchmarks/autolabel.py

from labelloop.apps.simulate import labels_to_target, run_simulation


def oracle_prefix(confidence: np.ndarray, correct: np.ndarray, min_precision: float) -> int:
    """Size of the largest prefix of the rows in decreasing confidence whose share of correct guesses is at least
    `min_precision` (0 if none)."""
    order = np.argsort(-np.asarray(confidence), kind="stable")
    precision = np.cumsum(np.asarray(correct, dtype=float)[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(precision >= min_precision)
    return int(ok[-1] + 1) if len(ok) else 0


def saved_rows(batches: pd.DataFrame, rule: Callable[[pd.DataFrame], int]) -> pd.Series:
    """Rows `rule` would auto-label in each batch, indexed by (repeat, round)."""
    return batches.groupby(["repeat", "round"]).apply(rule, include_groups=False)


def bound(curves: pd.DataFrame, saved: pd.Series, target: float) -> dict:
    """Labels to target without and with the saved rows: a round's human count falls by the rows saved in the
    rounds before it (its model trained on them); on the mean curve and per repeat."""
    rounds = np.sort(curves["round"].unique())
    cumulative = {}
    for repeat in np.sort(curves["repeat"].unique()):
        per_round = saved.get(repeat, pd.Series(dtype=float)).reindex(rounds, fill_value=0).to_numpy()
        cumulative[repeat] = np.r_[0, np.cumsum(per_round[:-1])]
    per_repeat = []
    for repeat, group in curves.groupby("repeat"):
        ordered = group.sort_values("round")
        human, accuracy = ordered["n_labels"].to_numpy(), ordered["accuracy"].to_numpy()
        per_repeat.append((labels_to_target(human, accuracy, target),
                           labels_to_target(human - cumulative[repeat][: len(human)], accuracy, target)))
    mean = curves.groupby("round")[["n_labels", "accuracy"]].mean()
    without = labels_to_target(mean["n_labels"].to_numpy(), mean["accuracy"].to_numpy(), target)
    with_auto = labels_to_target(mean["n_labels"].to_numpy() - np.mean(list(cumulative.values()), axis=0),
                                 mean["accuracy"].to_numpy(), target)
    reached = [100.0 * (1 - a / b) for b, a in per_repeat if b is not None and a is not None]
    return {"without": without, "with": with_auto, "saving_pct": _saving(without, with_auto),
            "per_repeat": [{"without": b, "with": a, "saving_pct": _saving(b, a)} for b, a in per_repeat],
            "mean_saving_pct_of_repeats": round(float(np.mean(reached)), 1) if reached else None}


def _saving(without: float | None, with_auto: float | None) -> float | None:
    return None if without is None or with_auto is None else round(100.0 * (1 - with_auto / without), 1)


def confident_share(batches: pd.DataFrame, min_confidence: float, min_precision: float) -> list[dict]:
    """Per round, means over repeats: batch rows at confidence ≥ min_confidence, their true accuracy (pooled), and
    the oracle prefix."""
    out = []
    for round_, group in batches.groupby("round"):
        sure = group[group["confidence"] >= min_confidence]
        per_repeat = group.groupby("repeat")
        out.append({"round": int(round_), "batch_rows": float(per_repeat.size().mean()),
                    "confident_rows": float(sure.groupby("repeat").size().reindex(per_repeat.size().index,
                                                                                   fill_value=0).mean()),
                    "confident_accuracy": float(sure["correct"].mean()) if len(sure) else None,
                    "oracle_rows": float(per_repeat.apply(
                        lambda b: oracle_prefix(b["confidence"], b["correct"], min_precision),
                        include_groups=False).mean())})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    loop_arguments(parser, rounds=12)
    parser.add_argument("--min-precision", type=float, default=0.98, help="true precision of the oracle prefix")
    parser.add_argument("--min-confidence", type=float, default=0.9,
                        help="confidence floor of the no-precision-limit bound (autolabel.min_confidence)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    summary = run_simulation(loop_config(args, out, record_batches=True), echo=None)
    curves, batches = pd.read_csv(out / "curves.csv"), pd.read_csv(out / "batches.csv")
    target = summary["target"]
    rules = {
        f"oracle prefix, true precision >= {args.min_precision}":
            lambda b: oracle_prefix(b["confidence"], b["correct"], args.min_precision),
        f"all rows at confidence >= {args.min_confidence}": lambda b: int((b["confidence"] >= args.min_confidence).sum()),
    }
    result = {"data": args.data, "strategy": args.strategy, "rounds": args.rounds, "repeats": args.repeats,
              "full_pool_value": summary["full_pool_value"], "target": target,
              "seconds": summary["seconds_total"],
              "bounds": {name: bound(curves, saved_rows(batches, rule), target) for name, rule in rules.items()},
              "per_round": confident_share(batches, args.min_confidence, args.min_precision),
              "command": command_line()}
    (out / "bound_summary.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"{args.data}: full-pool {result['full_pool_value']:.4f}, target {target:.4f}, {args.strategy}, "
          f"{args.repeats} repeats × {args.rounds} rounds, {result['seconds']:.0f} s")
    first = next(iter(result["bounds"].values()))
    print(f"human labels to target (mean curve), no auto-labels: {first['without']} "
          f"(per repeat {[r['without'] for r in first['per_repeat']]})")
    for name, entry in result["bounds"].items():
        print(f"{name}: {entry['with']} ({_signed(entry['saving_pct'])}); per repeat "
              f"{[r['with'] for r in entry['per_repeat']]} ({', '.join(_signed(r['saving_pct']) for r in entry['per_repeat'])}; "
              f"mean of the repeats that reach the target {_signed(entry['mean_saving_pct_of_repeats'])})")
    print(f"round: mean batch rows at confidence >= {args.min_confidence} | their accuracy | oracle prefix rows")
    for row in result["per_round"]:
        accuracy = "–" if row["confident_accuracy"] is None else f"{row['confident_accuracy']:.3f}"
        print(f"{row['round']:>3}: {row['confident_rows']:5.1f} of {row['batch_rows']:.0f} | {accuracy} | "
              f"{row['oracle_rows']:5.1f}")
    print("command:", result["command"])
    return result


def _signed(saving: float | None) -> str:
    return "target not reached" if saving is None else f"{-saving:+.1f}%"


if __name__ == "__main__":
    main()
