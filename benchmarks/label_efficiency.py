"""Label efficiency: the simulator on a labelled dataset, strategies vs random (benchmark, not a test).

    .venv/bin/python benchmarks/label_efficiency.py --data /work/shared/datasets/spam.parquet \
        --strategies random,margin,hybrid --seed-size 50 --batch-size 100 --rounds 20 --repeats 3 \
        --out benchmarks/results/spam

Any table: the columns' roles are inferred as at `labelloop init` and printed (override them with
--id-col/--numeric-col/--categorical-col/--text-col/--drop-col); the model is `train`'s pipeline with
--estimator (default auto: XGBoost, or logistic regression when there is text).

Prints labels-to-target, savings vs random and minority recall per strategy, and the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from labelloop.apps.simulate import SimulationConfig, run_simulation
from labelloop.config import TrainParams


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def register_variants(specs: list[str]) -> dict[str, dict[str, object]]:
    """`NAME=key:value,key:value` → NAME becomes a preset (margin utilities + hybrid selector with those params).

    Lets one run compare hybrid mixes on the same seeds/holdout as random and margin. The names join the
    strategy table of this benchmark process only.
    """
    from dataclasses import replace

    from labelloop.domain.acquisition.registry import STRATEGIES

    params: dict[str, dict[str, object]] = {}
    for spec in specs:
        name, _, body = spec.partition("=")
        params[name] = {k: _value(v) for k, v in (item.split(":", 1) for item in body.split(",") if item)}
        STRATEGIES[name] = replace(STRATEGIES["hybrid"], cost="benchmark variant of the hybrid preset")  # type: ignore[index]
    return params


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--label-col", default="label")
    parser.add_argument("--strategies", default="random,margin,hybrid")
    parser.add_argument("--selector", default=None)
    parser.add_argument("--seed-size", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--test-size", type=float, default=0.2)
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs of background runs)")
    parser.add_argument("--n-jobs", type=int, default=None,
                        help="XGBoost threads (default: train's). On a loaded machine 1 is far faster: "
                             "two OpenMP threads that get descheduled spin-wait on each other")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=key:value,...",
                        help="register NAME as a hybrid-selector preset with these selector params (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="the simulation's seed (holdout split, seed set, picks)")
    parser.add_argument("--estimator", default=None, help="train.estimator (default: train's, auto)")
    parser.add_argument("--estimator-params", default=None, help="train.estimator_params as JSON")
    parser.add_argument("--text-params", default=None,
                        help='train.text as JSON, e.g. \'{"char_ngrams": null}\' for word n-grams only')
    for role in ("id", "numeric", "categorical", "text", "drop"):
        parser.add_argument(f"--{role}-col", action="append", default=[], metavar="COLUMN",
                            help=f"force the role {role} (repeatable; comma-separated lists too)")
    args = parser.parse_args(argv)
    selector_params = register_variants(args.variant)
    train: dict[str, object] = {}
    if args.n_jobs is not None:
        train["n_jobs"] = args.n_jobs
    if args.estimator is not None:
        train["estimator"] = args.estimator
    if args.estimator_params is not None:
        train["estimator_params"] = json.loads(args.estimator_params)
    if args.text_params is not None:
        train["text"] = json.loads(args.text_params)

    def names(values: list[str]) -> list[str]:
        return [n.strip() for v in values for n in v.split(",") if n.strip()]

    summary = run_simulation(SimulationConfig(
        data=args.data, label_col=args.label_col, strategies=args.strategies.split(","), selector=args.selector,
        seed_size=args.seed_size, batch_size=args.batch_size, rounds=args.rounds, repeats=args.repeats,
        test_size=args.test_size, metric=args.metric, out=args.out, log_mlflow=not args.no_mlflow,
        progress=not args.no_progress, selector_params=selector_params, seed=args.seed,
        train_params=TrainParams(**train) if train else None,
        id_columns=names(args.id_col), numeric_columns=names(args.numeric_col),
        categorical_columns=names(args.categorical_col), text_columns=names(args.text_col),
        drop_columns=names(args.drop_col),
    ))
    print(f"\n{args.data}: {summary['n_rows']} rows, {summary['n_features']} features "
          f"({', '.join(f'{r} {n}' for r, n in _role_counts(summary).items())}), estimator {summary['estimator']}")
    print(f"full-pool {summary['metric']} {summary['full_pool_value']:.4f} (repeats "
          f"{', '.join(f'{v:.4f}' for v in summary['full_pool_values'])}), target {summary['target']:.4f}, "
          f"budget {summary['budget']} labels, {summary['seconds_total']:.0f} s")
    print(f"{'strategy':<24}{'labels→target':>14}{'per repeat':>22}{'savings %':>11}{'AULC':>8}{'final':>8}{'min.recall':>11}"
          f"{'select s':>10}")
    for name, s in summary["strategies"].items():
        savings = s.get("savings_vs_random_pct")
        sv = "—" if savings is None else f"{'≥' if s.get('savings_is_lower_bound') else ''}{savings:.0f}"
        print(f"{name:<24}{s['labels_to_target']!s:>14}{s['labels_to_target_per_repeat']!s:>22}{sv:>11}"
              f"{s['aulc']:>8.4f}{s['final_value']:>8.4f}{s['mean_minority_recall']:>11.3f}{s['seconds_selecting']:>10.2f}")
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith(".py") else "label_efficiency.py"
    print(f"\nreproduce: {sys.executable} benchmarks/{script} " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    return summary


def _role_counts(summary: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for role in summary["roles"].values():
        counts[role] = counts.get(role, 0) + 1
    return counts


if __name__ == "__main__":
    main()
