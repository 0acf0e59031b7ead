"""Does the audit estimate's 90% interval hold the accuracy on live traffic? Checked in the simulator, where the
hidden truth is known (issue 16's target: in at least 90% of cycles).

Each simulated round (labelloop/apps/simulate_audit.py) mirrors the production loop: the round's live traffic is
the unlabelled pool, capture keeps a uniform sample of it (`capture.audit_sample_rows`, 1,000), select draws
round(audit_fraction × batch) audit items from those before the strategy picks its batch, and the round's model —
never trained on them — is estimated on them (labelloop/domain/audit.py: weighted accuracy, Clopper-Pearson on the
effective counts); the truth is the same model's accuracy on every row of the window. The audit items then join
training. Coverage = share of (dataset, strategy, repeat, round) cycles whose truth lies in the interval; its own
95% interval (Clopper-Pearson over the cycles) is printed beside it.

    .venv/bin/python benchmarks/audit_coverage.py                                  # satellite, spam; 5 repeats
    .venv/bin/python benchmarks/audit_coverage.py --datasets satellite --repeats 2 --fractions 0.1,0.3

Writes benchmarks/results/audit_coverage.json (or --out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "benchmarks" / "results"


def clopper_pearson(hits: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    from scipy.stats import beta

    alpha = 1 - confidence
    low = 0.0 if hits == 0 else float(beta.ppf(alpha / 2, hits, n - hits + 1))
    high = 1.0 if hits == n else float(beta.ppf(1 - alpha / 2, hits + 1, n - hits))
    return low, high


def run(dataset: str, fraction: float, args: argparse.Namespace) -> dict:
    from labelloop.apps.simulate import SimulationConfig, run_simulation
    from labelloop.config import TrainParams

    with tempfile.TemporaryDirectory() as out:
        config = SimulationConfig(
            data=str(args.data_dir / f"{dataset}.parquet"), strategies=args.strategies.split(","), seed=args.seed,
            batch_size=args.batch_size, rounds=args.rounds, repeats=args.repeats, out=out, log_mlflow=False,
            progress=False, audit_fraction=fraction, train_params=TrainParams(n_jobs=args.n_jobs),
        )
        started = time.perf_counter()
        summary = run_simulation(config, echo=None)
        import pandas as pd

        curves = pd.read_csv(Path(out) / "curves.csv")
    audit = summary["audit"]
    hits = int(curves["audit_covered"].dropna().astype(bool).sum())
    low, high = clopper_pearson(hits, audit["rounds"])
    return {"dataset": dataset, "audit_fraction": fraction, "audit_items": int(curves["audit_n"].dropna().iloc[0]),
            **audit, "covered": hits, "coverage_low95": low, "coverage_high95": high,
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="satellite,spam")
    parser.add_argument("--data-dir", type=Path, default=DATASETS)
    parser.add_argument("--strategies", default="random,margin")
    parser.add_argument("--fractions", default="0.1", help="select.audit_fraction values, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=50)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "audit_coverage.json")
    args = parser.parse_args()
    rows = [run(d, float(f), args) for d in args.datasets.split(",") for f in args.fractions.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                             "results": rows}, indent=2))
    print("| dataset | audit items / batch | cycles | coverage of the 90% interval (95% CI) | mean width | "
          "mean error (audit − truth) | per strategy | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        per = ", ".join(f"{s} {v:.0%}" for s, v in r["per_strategy"].items())
        print(f"| {r['dataset']} | {r['audit_items']} | {r['rounds']} | {r['coverage']:.1%} "
              f"({r['coverage_low95']:.1%}–{r['coverage_high95']:.1%}) | {r['mean_width']:.3f} | {r['mean_error']:+.4f} | "
              f"{per} | {r['seconds']} |")
    covered = sum(r["covered"] for r in rows)
    total = sum(r["rounds"] for r in rows)
    print(f"\noverall: {covered}/{total} cycles = {covered / total:.1%} (target ≥ 90%); "
          f"seed {args.seed}, {args.repeats} repeats, batch {args.batch_size}, {args.rounds} rounds")


if __name__ == "__main__":
    main()
