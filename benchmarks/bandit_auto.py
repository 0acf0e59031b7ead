"""`select.strategy: auto` against fixed strategies: labels to reach 99% of the full-pool metric (benchmark, not a test).

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/bandit_auto.py \
        --data /work/shared/datasets/spam.parquet --data /work/shared/datasets/satellite.parquet \
        --strategies random,margin,hybrid,auto --seed-size 50 --batch-size 100 --rounds 20 --repeats 5 --seed 50 \
        --n-jobs 1 --out benchmarks/results/bandit_auto

Each dataset runs the simulator (`labelloop.apps.simulate.run_simulation`; auto's reward measured on `--audit-size`
pool rows drawn uniformly per repeat). Prints per dataset: labels-to-target on the mean curve per strategy; auto
against random (target: at most 10% more labels) and against the best single strategy (target: within 10%); the
arms' shares overall and per block of rounds; and the command. A strategy that never reaches the target counts
as the budget (a lower bound, marked ≥).

`--reference DIR` reuses the fixed strategies' curves of an earlier run (DIR/<dataset>/curves.csv, same seed, sizes,
rounds, repeats and metric; the simulator is deterministic given them): run `--strategies auto` alone for a variant of
the bandit and it is compared with the reference's strategies, summarised together.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, get_args

import pandas as pd

from labelloop.apps.simulate import AUTO, SimulationConfig, arm_report, run_simulation, summarize
from labelloop.config import BanditParams, ConfigError, GainMeasure, TrainParams, parse_params

# The reference run must match on these (its curves are then what this run would have drawn for its strategies).
SAME = ("seed", "seed_size", "batch_size", "rounds", "repeats", "metric", "test_size")


def compare(summary: dict[str, Any]) -> dict[str, Any]:
    """auto against random and against the best single strategy, on labels-to-target (the budget when not reached)."""
    budget = summary["budget"]
    ltt = {name: entry["labels_to_target"] for name, entry in summary["strategies"].items()}
    counted = {name: (budget if value is None else value) for name, value in ltt.items()}
    singles = {name: value for name, value in counted.items() if name != AUTO}
    best = min(singles, key=lambda n: singles[n]) if singles else None
    out: dict[str, Any] = {"labels_to_target": ltt, "best_single": best}
    if AUTO in counted and "random" in counted:
        out["auto_vs_random_pct"] = 100.0 * (counted[AUTO] / counted["random"] - 1.0)
        out["auto_vs_random_ok"] = counted[AUTO] <= 1.10 * counted["random"]
    if AUTO in counted and best is not None:
        out["auto_vs_best_pct"] = 100.0 * (counted[AUTO] / counted[best] - 1.0)
        out["auto_vs_best_ok"] = counted[AUTO] <= 1.10 * counted[best]
    return out


def with_reference(summary: dict[str, Any], out: Path, reference: Path) -> dict[str, Any]:
    """`summary` (of the run written to `out`) summarised again with the strategies of the run in `reference` that
    it did not run (same settings, checked), from their curves."""
    ref_summary = json.loads((reference / "summary.json").read_text())
    mismatched = [k for k in SAME if ref_summary["config"].get(k) != summary["config"].get(k)]
    if mismatched or ref_summary["full_pool_values"] != summary["full_pool_values"]:
        raise SystemExit(f"--reference {reference} differs from this run in {mismatched or ['full-pool values']}")
    curves = pd.read_csv(out / "curves.csv")
    ref = pd.read_csv(reference / "curves.csv")
    ref = ref[~ref["strategy"].isin(curves["strategy"].unique())]
    both = pd.concat([ref, curves], ignore_index=True)
    merged = summarize(both, summary["full_pool_values"], summary["metric"])
    if AUTO in merged["strategies"]:
        merged["strategies"][AUTO]["arms"] = arm_report(both[both["strategy"] == AUTO])
    merged["seconds_total"] = summary["seconds_total"]
    merged["reference"] = str(reference)
    (out / "summary_with_reference.json").write_text(json.dumps(merged, indent=2, default=str))
    return merged


def shares_by_block(arms: dict[str, Any], block: int) -> list[tuple[str, dict[str, float]]]:
    """The arms' shares per block of `block` rounds (over repeats): how the choice moves over time."""
    rows = arms.get("by_round", [])
    out = []
    for start in range(0, len(rows), block):
        chunk = rows[start:start + block]
        names = sorted({a for r in chunk for a in r["shares"]})
        shares = {a: sum(r["shares"].get(a, 0.0) for r in chunk) / len(chunk) for a in names}
        out.append((f"rounds {chunk[0]['round']}-{chunk[-1]['round']} ({chunk[0]['n_labels']}-{chunk[-1]['n_labels']} labels)",
                    shares))
    return out


def _fmt(value: int | None, budget: int) -> str:
    return f"≥{budget:,}" if value is None else f"{value:,}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", required=True, help="a labelled table (repeatable)")
    parser.add_argument("--label-col", default="label")
    parser.add_argument("--strategies", default="random,margin,hybrid,auto")
    parser.add_argument("--seed-size", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=50)
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--audit-size", type=int, default=500)
    parser.add_argument("--arms", default=None, help="select.bandit.arms, comma-separated (default: random,margin,hybrid)")
    defaults = BanditParams()
    parser.add_argument("--gamma", type=float, default=defaults.gamma)
    parser.add_argument("--eta", type=float, default=defaults.eta)
    parser.add_argument("--reward-scale", type=float, default=defaults.reward_scale)
    parser.add_argument("--random-start", type=float, default=defaults.random_start,
                        help="select.bandit.random_start: the random arm's starting log-weight (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup,
                        help="select.bandit.warmup: measured batches left out of the baseline (default: %(default)s)")
    parser.add_argument("--random-decay", type=float, default=defaults.random_decay,
                        help="select.bandit.random_decay: random's floor times this per batch of its paid after the "
                        "warm-up (1 = off; default: %(default)s)")
    parser.add_argument("--gain-measure", choices=get_args(GainMeasure), default=defaults.gain_measure,
                        help="select.bandit.gain_measure: what a batch is paid on (default: %(default)s)")
    parser.add_argument("--reference", default=None,
                        help="an earlier run's --out: reuse its curves for the strategies this run leaves out")
    parser.add_argument("--n-jobs", type=int, default=1, help="XGBoost threads (1 on a shared machine)")
    parser.add_argument("--block", type=int, default=5, help="rounds per block in the arms' shares over time")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    bandit: dict[str, Any] = {"gamma": args.gamma, "eta": args.eta, "reward_scale": args.reward_scale,
                              "random_start": args.random_start, "warmup": args.warmup, "gain_measure": args.gain_measure,
                              "random_decay": args.random_decay}
    if args.arms:
        bandit["arms"] = args.arms.split(",")
    try:  # checked like params.yaml's select.bandit, so a bad flag names the key and what is allowed
        bandit_params = parse_params({"select": {"bandit": bandit}}, "the flags").select.bandit
    except ConfigError as error:
        parser.error(str(error))
    train = TrainParams(n_jobs=args.n_jobs)
    results: dict[str, Any] = {}
    for data in args.data:
        name = Path(data).stem
        config = SimulationConfig(
            data=data, label_col=args.label_col, strategies=args.strategies.split(","), seed_size=args.seed_size,
            batch_size=args.batch_size, rounds=args.rounds, repeats=args.repeats, metric=args.metric,
            out=str(Path(args.out) / name), seed=args.seed, train_params=train, bandit=bandit_params,
            audit_size=args.audit_size, log_mlflow=False, progress=False,
        )
        summary = run_simulation(config, echo=None)
        if args.reference:
            summary = with_reference(summary, Path(args.out) / name, Path(args.reference) / name)
        verdict = compare(summary)
        budget = summary["budget"]
        print(f"\n{name}: full-pool {summary['metric']} {summary['full_pool_value']:.4f}, target {summary['target']:.4f}, "
              f"budget {budget:,} labels, {summary['seconds_total']:.0f} s")
        for strategy, entry in summary["strategies"].items():
            per = ", ".join(_fmt(v, budget) for v in entry["labels_to_target_per_repeat"])
            print(f"  {strategy:8s} labels→target {_fmt(entry['labels_to_target'], budget):>7s}  per repeat [{per}]  "
                  f"AULC {entry['aulc']:.4f}")
        if "auto_vs_random_pct" in verdict:
            print(f"  auto vs random: {verdict['auto_vs_random_pct']:+.0f}% labels "
                  f"({'met' if verdict['auto_vs_random_ok'] else 'MISSED'}: ≤ +10%)")
        if "auto_vs_best_pct" in verdict:
            print(f"  auto vs best single ({verdict['best_single']}): {verdict['auto_vs_best_pct']:+.0f}% labels "
                  f"({'met' if verdict['auto_vs_best_ok'] else 'MISSED'}: ≤ +10%)")
        arms = summary["strategies"].get(AUTO, {}).get("arms")
        if arms:
            print("  arms' shares overall: " + ", ".join(f"{a} {s:.0%}" for a, s in arms["shares"].items()))
            for label, shares in shares_by_block(arms, args.block):
                print(f"    {label}: " + ", ".join(f"{a} {s:.0%}" for a, s in shares.items()))
            print("  mean accuracy gain per batch by arm: " + ", ".join(
                f"{a} {g:+.4f}" for a, g in arms["mean_gain"].items() if g is not None))
        results[name] = {"summary_path": str(Path(args.out) / name / "summary.json"), **verdict,
                         "arms": arms, "budget": budget}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bandit_auto.json").write_text(json.dumps(results, indent=2, default=str))
    print("\nreproduce: OMP_NUM_THREADS=1 " + shlex.join([sys.executable, *sys.argv]))
    return results


if __name__ == "__main__":
    main()
