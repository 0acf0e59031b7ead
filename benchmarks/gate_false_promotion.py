"""The gate's false-promotion rate: retrains on identical data with different seeds, promoted how often?

Issue 16's target: at most 1 - `gate.min_confidence`. For each dataset and pair p, one seeded split gives a
holdout (20% of the rows, as `labelloop init`) and a labelled set (`--labels` rows of the rest); a
"champion" and a "challenger" are fitted on that SAME labelled set with two different `random_state`s
(labelloop.model.LabelloopClassifier, the train stage's model), and the gate's paired test
(labelloop.domain.gate.paired_evidence, exactly what `labelloop gate` runs on the holdout rows) judges the
challenger. Neither retrain is better by construction, so every promotion is a false one. Counted per
primary metric (accuracy: McNemar exact; macro_f1, neg_log_loss: paired bootstrap, 2,000 resamples)
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

The seed-aware gate (`gate.seed_twins`, issue 16): the challenger's seed twins, fitted on the same rows with
`labelloop.model.twin_seeds` of its random_state (`--twins`, k = twins + 1 fits; `auto` as the train stage: none
for a deterministic estimator), feed `seed_evidence`, and a promotion needs both it and the paired test
(`decide`). Counted at each `--confidence` beside the paired test alone, with the first twin alone (k = 2) too.
Power (`--power-labels`, 0 = off): the challenger is fitted on that many MORE labelled rows (the next rows of the
same shuffle; its twins too) against the same champion, so it really is better: the share promoted with and
without the seed term is what the seed term costs.

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
from labelloop.domain.gate import PairedRows, SeedTwins, metric_value, paired_evidence, seed_evidence  # noqa: E402
from labelloop.model import LabelloopClassifier, twin_seeds  # noqa: E402
from labelloop.stages.train import planned_twins  # noqa: E402

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


def fit_predict(table, params: TrainParams, seed: int, rows: np.ndarray, holdout: np.ndarray) -> np.ndarray:
    fitted = LabelloopClassifier.from_params(params.model_copy(update={"random_state": seed}), table.schema)
    fitted.fit(table.rows(rows), table.labels[rows])
    return np.asarray(fitted.predict_proba(table.rows(holdout)), dtype=np.float64)


def seed_passes(rows: PairedRows, twins: list[np.ndarray], seeds: list[int], rules: GateParams) -> bool:
    """The seed-aware t over the challenger + `twins` (True without twins: `decide` adds no seed term then)."""
    return not twins or seed_evidence(rows, SeedTwins(tuple(seeds), (rows.challenger_proba, *twins)), rules).passed


def run_pair(table, model: str, pair: int, labels: int, confidences: list[float], swaps: int, twins: int,
             power_labels: int) -> dict:
    rng = np.random.default_rng(10_000 + pair)
    order = rng.permutation(len(table.labels))
    n_holdout = round(0.2 * len(order))
    holdout, labelled = order[:n_holdout], order[n_holdout:n_holdout + labels]
    params = TrainParams(n_jobs=1, **MODELS[model])
    probas = [fit_predict(table, params, seed, labelled, holdout)
              for seed in (2 * pair, 2 * pair + 1)]  # champion, challenger: same rows, another seed
    index = {c: i for i, c in enumerate(table.schema.class_names)}
    y = np.array([index[v] for v in table.labels[holdout]])
    rows = PairedRows("holdout", y, probas[1], probas[0])
    seeds = [2 * pair + 1, *twin_seeds(2 * pair + 1, twins)]
    twin_probas = [fit_predict(table, params, seed, labelled, holdout) for seed in seeds[1:]]
    outcome: dict = {"pair": pair, "n_holdout": len(holdout), "twins": twins,
                     "identical_predictions": bool(np.array_equal(probas[0].argmax(1), probas[1].argmax(1)))}
    more = order[n_holdout:n_holdout + labels + power_labels] if power_labels else None
    better = [fit_predict(table, params, seed, more, holdout) for seed in seeds] if more is not None else []
    power_rows = PairedRows("holdout", y, better[0], probas[0]) if better else None
    for metric in METRICS:
        for confidence in confidences:
            rules = GateParams(primary_metric=metric, min_confidence=confidence)
            evidence = paired_evidence(rows, rules)
            outcome[f"{metric}@{confidence}"] = evidence.passed
            outcome[f"{metric}.difference"] = evidence.difference
            # decide(): the paired test and the seed-aware t must both pass.
            outcome[f"{metric}@seed{confidence}"] = evidence.passed and seed_passes(rows, twin_probas, seeds, rules)
            outcome[f"{metric}@seed_k2_{confidence}"] = evidence.passed and seed_passes(rows, twin_probas[:1], seeds[:2], rules)
            if power_rows is not None:
                paired = outcome[f"{metric}@power{confidence}"] = paired_evidence(power_rows, rules).passed
                outcome[f"{metric}@power_seed{confidence}"] = paired and seed_passes(power_rows, better[1:], seeds, rules)
                outcome[f"{metric}@power_seed_k2_{confidence}"] = paired and seed_passes(power_rows, better[1:2], seeds[:2],
                                                                                         rules)
        outcome[f"{metric}@point"] = outcome[f"{metric}.difference"] >= 0.0
        # The k fits' metric values (challenger first), same data and power, for other variance formulas offline.
        outcome[f"{metric}.seed_values"] = [metric_value(metric, y, p) for p in [probas[1], *twin_probas]]
        outcome[f"{metric}.champion_value"] = metric_value(metric, y, probas[0])
        if better:
            outcome[f"{metric}.power_values"] = [metric_value(metric, y, p) for p in better]
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
    extra = [f"{kind}{c}" for kind in ("seed", "seed_k2_", "power", "power_seed", "power_seed_k2_") for c in confidences]
    for metric in METRICS:
        for rule in [*(str(c) for c in confidences), "point", "non_inferiority", *extra]:
            if f"{metric}@{rule}" not in outcomes[0]:
                continue
            k = sum(bool(o[f"{metric}@{rule}"]) for o in outcomes)
            summary[f"{metric}@{rule}"] = {"promoted": k, "rate": k / n, "ci95": clopper_pearson(k, n)}
        k = sum(o[f"{metric}@swapped"] for o in outcomes)
        trials = n * swaps
        summary[f"{metric}@swapped"] = {"promoted": k, "trials": trials, "rate": k / max(trials, 1),
                                        "ci95": clopper_pearson(k, trials) if trials else (0.0, 1.0)}
    return summary


def rate(summary: dict, key: str) -> str:
    cell = summary.get(key)
    if cell is None:
        return "-"
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
    parser.add_argument("--twins", default="auto", help="seed twins per challenger: auto (2 if the estimator's fit "
                        "depends on the seed, else 0, as gate.seed_twins) or a number")
    parser.add_argument("--power-labels", type=int, default=300,
                        help="power: the challenger trains on this many more labelled rows (0 = not measured)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    confidences = [float(c) for c in args.confidence.split(",")]
    command = "python benchmarks/gate_false_promotion.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict = {"command": command.strip(), "labels": args.labels, "confidences": confidences, "cells": []}
    lines = ["| dataset | model | pairs | identical | metric | old rule (Δ ≥ 0) | "
             + " | ".join(f"test @ {c}" for c in confidences)
             + f" | swapped rows @ {confidences[0]:.2g} | non-inferior @ {confidences[0]:.2g} |",
             "|---|---|---|---|---|---|" + "---|" * len(confidences) + "---|---|"]
    seed_lines = ["| dataset | model | twins | metric | "
                  + " | ".join(f"false: paired @ {c} | false: + seed @ {c}" for c in confidences)
                  + f" | false: + seed k=2 @ {confidences[0]} | "
                  + " | ".join(f"power: paired @ {c} | power: + seed @ {c}" for c in confidences)
                  + f" | power: + seed k=2 @ {confidences[0]} |",
                  "|---|---|---|---|" + "---|---|" * len(confidences) + "---|" + "---|---|" * len(confidences) + "---|"]
    for dataset in args.datasets.split(","):
        table = load(dataset)
        for model in args.models.split(","):
            started = time.perf_counter()
            params = TrainParams(**MODELS[model])
            # auto: what the train stage fits (planned_twins; the probe of an unknown estimator is not simulated)
            twins = planned_twins(GateParams(), params, table.schema)[0] if args.twins == "auto" else int(args.twins)
            outcomes = []
            for pair in range(args.pairs):
                outcomes.append(run_pair(table, model, pair, args.labels, confidences, args.swaps, twins, args.power_labels))
                if (pair + 1) % 10 == 0 and pair + 1 < args.pairs:  # a checkpoint: the pairs so far, if time runs out
                    write_json(args.out, {**results, "cells": [*results["cells"], {
                        "dataset": dataset, "model": model, "partial": True, "seconds": time.perf_counter() - started,
                        "summary": summarise(outcomes, confidences, args.swaps), "outcomes": outcomes}]})
            summary = summarise(outcomes, confidences, args.swaps)
            seconds = time.perf_counter() - started
            results["cells"].append({"dataset": dataset, "model": model, "seconds": seconds, "summary": summary,
                                     "outcomes": outcomes})
            write_json(args.out, results)

            for metric in METRICS:
                seed_lines.append(f"| {dataset} | {model} | {twins} | {metric} | "
                                  + " | ".join(f"{rate(summary, f'{metric}@{c}')} | {rate(summary, f'{metric}@seed{c}')}"
                                               for c in confidences)
                                  + f" | {rate(summary, f'{metric}@seed_k2_{confidences[0]}')} | "
                                  + " | ".join(f"{rate(summary, f'{metric}@power{c}')} | "
                                               f"{rate(summary, f'{metric}@power_seed{c}')}" for c in confidences)
                                  + f" | {rate(summary, f'{metric}@power_seed_k2_{confidences[0]}')} |")
                lines.append(f"| {dataset} | {model} | {summary['pairs']} | {summary['identical_predictions']} | {metric} | "
                             f"{rate(summary, f'{metric}@point')} | "
                             + " | ".join(rate(summary, f"{metric}@{c}") for c in confidences)
                             + f" | {rate(summary, f'{metric}@swapped')} | {rate(summary, f'{metric}@non_inferiority')} |")
            print(f"{dataset} {model}: {args.pairs} pairs in {seconds:.0f} s", file=sys.stderr, flush=True)
    print(f"\n{command.strip()}\n")
    print("\n".join(lines))
    print("\nSeed-aware gate: false promotions (same data, other seed) and power (+"
          f"{args.power_labels} labels), paired test alone vs with the seed term (k = twins + 1 fits)\n")
    print("\n".join(seed_lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
