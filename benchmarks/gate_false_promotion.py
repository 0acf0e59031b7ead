"""The gate's false-promotion rate: retrains on identical data with different seeds, promoted how often?

Issue 16's target: at most 1 - `gate.min_confidence`. For each dataset and pair p, one seeded split gives a
holdout (20% of the rows, as `labelloop init`) and a labelled set (`--labels` rows of the rest); a
"champion" and a "challenger" are fitted on that SAME labelled set with two different `random_state`s
(labelloop.model.LabelloopClassifier, the train stage's model), and the gate's paired test
(labelloop.domain.gate.paired_evidence, exactly what `labelloop gate` runs on the holdout rows) judges the
challenger. Neither retrain is better by construction, so every promotion is a false one. Counted per
primary metric (accuracy: McNemar exact mid-p; macro_f1, neg_log_loss: paired bootstrap, 2,000 resamples)
at each `--confidence`, beside the old rule (point difference >= min_delta 0.0, no test), and the share a
non_inferiority gate (margin 0.01) lets through (these are not false: the retrain is not worse).

Two sources of difference between two retrains: the holdout's sampling noise, which the paired test
accounts for, and the seed's own luck, which makes one retrain really (on the population) better than the
other, which no test on the holdout can tell from a real gain. "swapped rows" isolates the first: each
pair's two predictions are swapped row by row at random (`--swaps` times per pair), which makes the two
models exactly exchangeable on those rows; the share promoted there is the test's own error rate.

Models (`--models`): the default XGBoost settings are deterministic (subsample 1.0: the seed changes
nothing, both retrains predict the same), so two seeded ones are measured too:
  xgboost            train defaults (200 trees, depth 6, subsample 1.0)
  xgboost-sampled    subsample 0.8, colsample_bytree 0.8 (the seed changes the trees)
  random_forest      100 trees (bootstrap rows and random feature splits per seed)

    .venv/bin/python benchmarks/gate_false_promotion.py                       # satellite, spam, churn x 100 pairs
    .venv/bin/python benchmarks/gate_false_promotion.py --datasets satellite --pairs 20 --models xgboost-sampled

Writes benchmarks/results/gate_false_promotion.json and prints a markdown table. The rate's own 95%
interval (Clopper-Pearson over the pairs) is printed beside it: with 100 pairs a true 10% reads 4.9-17.6%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labelloop.config import GateParams, TrainParams  # noqa: E402
from labelloop.core.io import write_json  # noqa: E402
from labelloop.domain.gate import PairedRows, paired_evidence  # noqa: E402
from labelloop.model import LabelloopClassifier  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "benchmarks" / "results" / "gate_false_promotion.json"
METRICS = ("accuracy", "macro_f1", "neg_log_loss")
MODELS = {
    "xgboost": {},
    "xgboost-sampled": {"estimator": "xgboost", "subsample": 0.8, "estimator_params": {"colsample_bytree": 0.8}},
    "random_forest": {"estimator": "random_forest", "estimator_params": {"n_estimators": 100}},
}


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import beta

    tail = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def load(name: str):
    from labelloop.apps.simulate import load_table

    path = DATASETS / f"{name}.parquet"
    if not path.exists() and name == "satellite":
        path = ROOT / "labelloop" / "resources" / "satellite.parquet"
    return load_table(path, "label")


def run_pair(table, model: str, pair: int, labels: int, confidences: list[float], swaps: int) -> dict:
    rng = np.random.default_rng(10_000 + pair)
    order = rng.permutation(len(table.labels))
    n_holdout = round(0.2 * len(order))
    holdout, labelled = order[:n_holdout], order[n_holdout:n_holdout + labels]
    params = TrainParams(n_jobs=1, **MODELS[model])
    probas = []
    for seed in (2 * pair, 2 * pair + 1):  # champion, challenger: same rows, another seed
        fitted = LabelloopClassifier.from_params(params.model_copy(update={"random_state": seed}), table.schema)
        fitted.fit(table.rows(labelled), table.labels[labelled])
        probas.append(np.asarray(fitted.predict_proba(table.rows(holdout)), dtype=np.float64))
    index = {c: i for i, c in enumerate(table.schema.class_names)}
    y = np.array([index[v] for v in table.labels[holdout]])
    rows = PairedRows("holdout", y, probas[1], probas[0])
    outcome: dict = {"pair": pair, "n_holdout": len(holdout),
                     "identical_predictions": bool(np.array_equal(probas[0].argmax(1), probas[1].argmax(1)))}
    for metric in METRICS:
        for confidence in confidences:
            evidence = paired_evidence(rows, GateParams(primary_metric=metric, min_confidence=confidence))
            outcome[f"{metric}@{confidence}"] = evidence.passed
            outcome[f"{metric}.difference"] = evidence.difference
        outcome[f"{metric}@point"] = outcome[f"{metric}.difference"] >= 0.0
        ni = paired_evidence(rows, GateParams(primary_metric=metric, mode="non_inferiority", min_confidence=confidences[0]))
        outcome[f"{metric}@non_inferiority"] = ni.passed
        # The exact null of the test itself: each row's two predictions swapped at random (a coin per row), so
        # the two "models" are exchangeable on these rows; what the test promotes here is its own error rate.
        outcome[f"{metric}@swapped"] = 0
        for swap_seed in range(swaps):
            swap = np.random.default_rng([pair, swap_seed]).random(len(y)) < 0.5
            swapped = PairedRows("holdout", y, np.where(swap[:, None], probas[0], probas[1]),
                                 np.where(swap[:, None], probas[1], probas[0]))
            rules = GateParams(primary_metric=metric, min_confidence=confidences[0])
            outcome[f"{metric}@swapped"] += paired_evidence(swapped, rules, seed=swap_seed + 1).passed
    return outcome


def summarise(outcomes: list[dict], confidences: list[float], swaps: int) -> dict:
    n = len(outcomes)
    summary: dict = {"pairs": n, "identical_predictions": sum(o["identical_predictions"] for o in outcomes)}
    for metric in METRICS:
        for rule in [*(str(c) for c in confidences), "point", "non_inferiority"]:
            k = sum(bool(o[f"{metric}@{rule}"]) for o in outcomes)
            summary[f"{metric}@{rule}"] = {"promoted": k, "rate": k / n, "ci95": clopper_pearson(k, n)}
        k = sum(o[f"{metric}@swapped"] for o in outcomes)
        trials = n * swaps
        summary[f"{metric}@swapped"] = {"promoted": k, "trials": trials, "rate": k / max(trials, 1),
                                        "ci95": clopper_pearson(k, trials) if trials else (0.0, 1.0)}
    return summary


def rate(summary: dict, key: str) -> str:
    cell = summary[key]
    if cell.get("trials") == 0:
        return "-"
    return f"{cell['rate']:.1%} [{cell['ci95'][0]:.1%}, {cell['ci95'][1]:.1%}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="satellite,spam,churn")
    parser.add_argument("--models", default="xgboost-sampled,random_forest,xgboost")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--labels", type=int, default=550, help="labelled rows both retrains fit on")
    parser.add_argument("--confidence", default="0.9,0.95", help="gate.min_confidence values to count")
    parser.add_argument("--swaps", type=int, default=3, help="row-swapped (exactly equal) pairs tested per pair")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    confidences = [float(c) for c in args.confidence.split(",")]
    command = "python benchmarks/gate_false_promotion.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict = {"command": command.strip(), "labels": args.labels, "confidences": confidences, "cells": []}
    lines = ["| dataset | model | pairs | identical | metric | old rule (Δ ≥ 0) | "
             + " | ".join(f"test @ {c}" for c in confidences)
             + f" | swapped rows @ {confidences[0]:.2g} | non-inferior @ {confidences[0]:.2g} |",
             "|---|---|---|---|---|---|" + "---|" * len(confidences) + "---|---|"]
    for dataset in args.datasets.split(","):
        table = load(dataset)
        for model in args.models.split(","):
            started = time.perf_counter()
            outcomes = [run_pair(table, model, pair, args.labels, confidences, args.swaps) for pair in range(args.pairs)]
            summary = summarise(outcomes, confidences, args.swaps)
            seconds = time.perf_counter() - started
            results["cells"].append({"dataset": dataset, "model": model, "seconds": seconds, "summary": summary,
                                     "outcomes": outcomes})
            write_json(args.out, results)

            for metric in METRICS:
                lines.append(f"| {dataset} | {model} | {summary['pairs']} | {summary['identical_predictions']} | {metric} | "
                             f"{rate(summary, f'{metric}@point')} | "
                             + " | ".join(rate(summary, f"{metric}@{c}") for c in confidences)
                             + f" | {rate(summary, f'{metric}@swapped')} | {rate(summary, f'{metric}@non_inferiority')} |")
            print(f"{dataset} {model}: {args.pairs} pairs in {seconds:.0f} s", file=sys.stderr, flush=True)
    print(f"\n{command.strip()}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
