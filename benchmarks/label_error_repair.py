"""Label-error repair (import.error_scan) at injected label noise: wrong labels in the training set and accuracy,
with and without repair, at the same human-label cost.

For each dataset, noise level p and seed, the same margin active-learning loop runs twice, buying exactly
`--answers` answers per round for `--rounds` rounds:

  raw     every answer labels a new item (one annotator each).
  repair  before each round's selection, the import's error scan runs on the labelled set as the import stage
          runs it (`labelloop.stages.importing.out_of_fold_probas`: `--folds` folds of the pipeline with
          `--scan-estimators` trees; `labelloop.domain.quality.find_label_errors`: confident learning), seed
          labels never flagged and an item asked about at most once; the `--max-flags` most confidently wrong
          are asked again of 3 annotators (as the export re-sends a review item to `export.overlap_annotators`),
          3 answers each; majority vote (`labelloop.domain.quality.majority_vote`, min_agreement 0.5): an accepted
          label that differs replaces the old one (the dataset stage's relabel), a 1-1-1 split keeps it. The rest
          of the round's answers label new items.

Annotators are the simulated vendor's (`labelloop.adapters.vendors.simulated.simulate_answer`, `noise: uniform`,
`error_rate` p): a new item's one answer is the same in both arms (same item, same annotator), so the arms
differ only by what repair buys instead of new items. Seed set: `--seed-size` true labels; holdout 20%. Model:
`labelloop.model.LabelloopClassifier` (XGBoost, `--n-estimators` trees).

    .venv/bin/python benchmarks/label_error_repair.py --datasets satellite spam --seeds 0 1
    .venv/bin/python benchmarks/label_error_repair.py --table benchmarks/results/label_error_repair.json

Writes benchmarks/results/label_error_repair.json (after every cell) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labelloop.adapters.vendors.simulated import simulate_answer  # noqa: E402
from labelloop.config import SimulatedVendorParams, TrainParams  # noqa: E402
from labelloop.core.io import write_json  # noqa: E402
from labelloop.domain.acquisition import get_strategy  # noqa: E402
from labelloop.domain.quality import find_label_errors, majority_vote  # noqa: E402
from labelloop.model import LabelloopClassifier  # noqa: E402
from labelloop.schema import Schema  # noqa: E402
from labelloop.stages.importing import out_of_fold_probas  # noqa: E402

DATASETS = Path("/work/shared/datasets")
REASK_ANNOTATORS = 3


@dataclass
class Setup:
    name: str
    X: pd.DataFrame
    y: pd.Series  # true labels, index = item_id
    schema: Schema
    holdout: pd.Index
    seed_ids: pd.Index
    pool_ids: pd.Index


def load(name: str, path: Path, label_column: str, seed: int, seed_size: int) -> Setup:
    frame = pd.read_parquet(path)
    y = frame.pop(label_column).astype(str)
    X = frame.astype("float64")
    ids = pd.Index([f"r{i}" for i in range(len(frame))], name="item_id")
    X.index, y.index = ids, ids
    schema = Schema.numeric(list(X.columns), sorted(y.unique()))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    n_holdout = int(0.2 * len(ids))
    holdout, rest = ids[order[:n_holdout]], ids[order[n_holdout:]]
    seed_ids = rest[:seed_size]
    return Setup(name, X, y, schema, holdout, seed_ids, rest[seed_size:])


def fit(setup: Setup, labels: dict[str, str], train: TrainParams) -> LabelloopClassifier:
    ids = list(labels)
    return LabelloopClassifier.from_params(train, setup.schema).fit(setup.X.loc[ids], np.asarray([labels[i] for i in ids]))


def accuracy(model: LabelloopClassifier, setup: Setup) -> float:
    return float((model.predict(setup.X.loc[setup.holdout]) == setup.y.loc[setup.holdout].to_numpy()).mean())


def wrong_share(setup: Setup, labels: dict[str, str]) -> float:
    ids = list(labels)
    return float(np.mean(np.asarray([labels[i] for i in ids]) != setup.y.loc[ids].to_numpy()))


def answer(crowd: SimulatedVendorParams, setup: Setup, batch_id: str, item_id: str, annotator: int) -> str:
    return simulate_answer(crowd, setup.schema.class_names, batch_id, item_id, annotator, str(setup.y[item_id]))


def new_item_annotator(crowd: SimulatedVendorParams, item_id: str) -> int:
    """The one annotator a new item gets: fixed per item, so both arms get the same answer for it."""
    return int(hashlib.sha256(f"{crowd.seed}|{item_id}".encode()).hexdigest()[:8], 16) % crowd.annotators


def run_arm(setup: Setup, arm: str, noise: float, args: argparse.Namespace, seed: int) -> dict:
    train = TrainParams(n_estimators=args.n_estimators, n_jobs=args.n_jobs, random_state=seed)
    crowd = SimulatedVendorParams(annotators=REASK_ANNOTATORS, error_rate=noise, noise="uniform", seed=seed)
    labels = {i: str(setup.y[i]) for i in setup.seed_ids}  # curated seed: true labels
    seeds = set(setup.seed_ids)
    asked: set[str] = set()
    pool = list(setup.pool_ids)
    model = fit(setup, labels, train)
    start = accuracy(model, setup)
    strategy = get_strategy("margin").fn
    history = []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        reasked: list[str] = []
        changed = fixed = broken = flagged = flagged_wrong = 0
        if arm == "repair" and len(labels) >= args.min_rows:
            ids = list(labels)
            given = np.asarray([labels[i] for i in ids])
            probas = out_of_fold_probas(setup.X.loc[ids], given, setup.schema, train, args.folds, seed=seed,
                                        n_estimators=min(args.scan_estimators, args.n_estimators))
            index = {c: k for k, c in enumerate(setup.schema.class_names)}
            flags = find_label_errors(np.array([index[g] for g in given]), probas)
            candidate = np.array([i not in seeds and i not in asked for i in ids])
            hits = np.flatnonzero(flags.flagged & candidate)
            flagged = len(hits)
            flagged_wrong = int(sum(labels[ids[k]] != setup.y[ids[k]] for k in hits))
            chosen = hits[np.argsort(-flags.margin[hits], kind="stable")][:args.max_flags]
            reasked = [ids[k] for k in chosen]
            votes = pd.DataFrame([(i, f"sim-{a}", answer(crowd, setup, f"reask-r{r}", i, a))
                                  for i in reasked for a in range(REASK_ANNOTATORS)],
                                 columns=["item_id", "annotator_id", "label"])
            for row in majority_vote(votes, min_agreement=0.5).itertuples():
                if row.needs_review or row.label == labels[row.item_id]:
                    continue
                truth = str(setup.y[row.item_id])
                changed += 1
                fixed += int(row.label == truth)
                broken += int(labels[row.item_id] == truth)
                labels[row.item_id] = row.label
            asked |= set(reasked)
        n_new = args.answers - REASK_ANNOTATORS * len(reasked)
        utilities = strategy(model.predict_proba(setup.X.loc[pool]))
        order = np.argsort(-np.nan_to_num(utilities, nan=-np.inf), kind="stable")[:n_new]
        picked = [pool[k] for k in order]
        for item_id in picked:
            labels[item_id] = answer(crowd, setup, "new", item_id, new_item_annotator(crowd, item_id))
        taken = set(picked)
        pool = [i for i in pool if i not in taken]
        model = fit(setup, labels, train)
        history.append({"round": r, "answers": REASK_ANNOTATORS * len(reasked) + len(picked), "n_new": len(picked),
                        "flagged": flagged, "flagged_wrong": flagged_wrong, "reasked": len(reasked), "changed": changed,
                        "fixed": fixed, "broken": broken, "n_train": len(labels),
                        "train_label_error": wrong_share(setup, labels), "holdout_accuracy": accuracy(model, setup),
                        "seconds": round(time.perf_counter() - t0, 2)})
    total = {k: int(sum(h[k] for h in history)) for k in ("answers", "n_new", "reasked", "changed", "fixed", "broken")}
    return {"arm": arm, "noise": noise, "start_accuracy": start, "final_accuracy": history[-1]["holdout_accuracy"],
            "train_label_error": history[-1]["train_label_error"], **total, "history": history}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["satellite", "spam"])
    parser.add_argument("--data-dir", type=Path, default=DATASETS)
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--answers", type=int, default=60, help="answers bought per round, the same in both arms")
    parser.add_argument("--seed-size", type=int, default=50)
    parser.add_argument("--max-flags", type=int, default=5, help="import.error_scan.max_flags (re-asks per round)")
    parser.add_argument("--folds", type=int, default=5, help="import.error_scan.folds")
    parser.add_argument("--min-rows", type=int, default=100, help="import.error_scan.min_rows")
    parser.add_argument("--scan-estimators", type=int, default=50, help="import.error_scan.n_estimators")
    parser.add_argument("--n-estimators", type=int, default=100, help="XGBoost trees of the loop's model")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "label_error_repair.json")
    parser.add_argument("--table", type=Path, nargs="+", default=None, help="print the table of these results files")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table([r for f in args.table for r in json.loads(f.read_text())["results"]]))
        return 0
    if REASK_ANNOTATORS * args.max_flags > args.answers:
        parser.error(f"--max-flags {args.max_flags} x {REASK_ANNOTATORS} answers exceeds --answers {args.answers}")
    results: list[dict] = []
    started = time.perf_counter()
    settings = vars(args) | {"data_dir": str(args.data_dir), "out": str(args.out)}
    cells = [(seed, name, noise) for seed in args.seeds for name in args.datasets for noise in args.noise]
    for seed, name, noise in cells:  # seed-major: an interrupted run still has whole seeds
        setup = load(name, args.data_dir / f"{name}.parquet", args.label_column, seed, args.seed_size)
        cell_start = time.perf_counter()
        pair = [run_arm(setup, arm, noise, args, seed) | {"dataset": name, "seed": seed} for arm in ("raw", "repair")]
        results += pair
        shown = [f"{r['arm']} {r['final_accuracy']:.4f} (wrong {r['train_label_error']:.1%}, {r['answers']} answers)"
                 for r in pair]
        print(f"{name} p={noise:.0%} seed {seed}: {', '.join(shown)} [{time.perf_counter() - cell_start:.0f} s]", flush=True)
        write_json(args.out, {"params": settings, "seconds": time.perf_counter() - started, "results": results})
    print(f"\n{len(cells)} cells in {time.perf_counter() - started:.0f} s\n\n{markdown_table(results)}")
    return 0


def markdown_table(results: list[dict]) -> str:
    """Mean over seeds per cell; Δ = paired (same seed) difference repair − raw, mean ± std."""
    frame = pd.DataFrame(results)
    lines = [("| dataset | noise | seeds | answers | raw: acc. (wrong labels) | repair: acc. (wrong labels) | Δ acc. | "
              "re-asked (changed: fixed / broken) | flag precision |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for (name, noise), group in frame.groupby(["dataset", "noise"], sort=False):
        raw, repair = (group[group["arm"] == a].set_index("seed") for a in ("raw", "repair"))
        diff = (repair["final_accuracy"] - raw["final_accuracy"]).dropna()
        hist = [h for hs in repair["history"] for h in hs]
        flagged = sum(h["flagged"] for h in hist)
        precision = sum(h["flagged_wrong"] for h in hist) / flagged if flagged else float("nan")
        lines.append(
            f"| {name} | {noise:.0%} | {len(diff)} | {raw['answers'].mean():.0f} / {repair['answers'].mean():.0f} | "
            f"{raw['final_accuracy'].mean():.4f} ({raw['train_label_error'].mean():.1%}) | "
            f"{repair['final_accuracy'].mean():.4f} ({repair['train_label_error'].mean():.1%}) | "
            f"{diff.mean() * 100:+.2f} ± {diff.std(ddof=1) * 100 if len(diff) > 1 else 0:.2f} pt | "
            f"{repair['reasked'].mean():.0f} ({repair['changed'].mean():.0f}: {repair['fixed'].mean():.0f} / "
            f"{repair['broken'].mean():.0f}) | {precision:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
