"""Label quality under annotator noise: does gold + overlap + aggregation beat single raw labels?

For each dataset, noise level and seed, the same margin active-learning loop runs with the simulated
vendor (labelloop.adapters.vendors.simulated, the one the demo uses). Every arm selects the SAME number of new
items per round (`--batch-size`); what QC adds is bought on top of that budget:

  raw            every new item is labelled once; the answer goes straight into training.
  qc-majority    the same new items, plus (outside the budget, as the export stage does it with
                 `labelloop.domain.quality.plan_quality_items`): 10% gold questions from the seed set, the review
                 queue's pending items re-sent to 3 annotators (each at most twice), and 30% of the new items
                 labelled by 3 annotators. Import: `labelloop.stages.importing.process_import` as the import stage
                 runs it (gold tracker with threshold 0.7 after 5 answers, exclusion + requeue, majority
                 vote, model-contradiction flags at p >= 0.9, review queue).
  qc-dawid-skene the same with Dawid-Skene aggregation (parameters fitted on overlap + gold items only).
  raw-same-cost  (with --same-cost) as raw, but each round buys as many labels as qc-majority did
                 (more new items, single labels): the comparison at equal annotation cost.

The crowd: 5 simulated annotators whose error rates average the noise level p but differ
(p x [0.25, 0.5, 0.75, 1.0, 2.5]), with confusion-matrix noise (each annotator's mistakes on a class
mostly go to one favourite wrong class). Seed labels and gold answers are true labels. The model is
labelloop.model.LabelloopClassifier (the train stage's XGBoost) with `--n-estimators` trees (default
100, half the `train` default, to keep 3 seeds affordable on 2 cores). The seed changes the holdout /
seed split, the crowd's answers and the gold draw.

    .venv/bin/python benchmarks/label_quality.py                 # 3 datasets x {10%, 20%} x 3 seeds
    .venv/bin/python benchmarks/label_quality.py --datasets spam --noise 0.2 --rounds 4 --seeds 0

Writes benchmarks/results/label_quality.json (after every cell) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labelloop.adapters.vendors.base import ExportBatch  # noqa: E402
from labelloop.adapters.vendors.simulated import SimulatedVendor  # noqa: E402
from labelloop.batches import ReviewQueue  # noqa: E402
from labelloop.config import (  # noqa: E402
    ImportParams,
    SimulatedVendorParams,
    TrainParams,
)
from labelloop.core.io import write_json, write_parquet  # noqa: E402
from labelloop.domain.acquisition import get_strategy  # noqa: E402
from labelloop.domain.quality import batch_cost, cost_per_point, plan_quality_items  # noqa: E402
from labelloop.model import LabelloopClassifier  # noqa: E402
from labelloop.stages.importing import process_import  # noqa: E402

DATASETS = Path("/work/shared/datasets")
RATE_SPREAD = np.array([0.25, 0.5, 0.75, 1.0, 2.5])


@dataclass
class Setup:
    name: str
    X: pd.DataFrame
    y: pd.Series  # true labels, index = item_id
    classes: list[str]
    holdout: pd.Index
    seed_ids: pd.Index
    pool_ids: pd.Index


def load(name: str, path: Path, label_column: str, seed: int) -> Setup:
    frame = pd.read_parquet(path)
    y = frame.pop(label_column).astype(str)
    X = frame.astype("float32")
    ids = pd.Index([f"r{i}" for i in range(len(frame))], name="item_id")
    X.index, y.index = ids, ids
    classes = sorted(y.unique())
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    n_holdout = int(0.2 * len(ids))
    holdout = ids[order[:n_holdout]]
    rest = ids[order[n_holdout:]]
    # Seed set: a few true labels per class (the curated start every run has).
    per_class = max(3, 60 // len(classes))
    seed_ids = pd.Index(
        pd.Series(rest, index=rest).groupby(y[rest].to_numpy()).head(per_class).to_numpy(), name="item_id"
    )
    pool_ids = rest.difference(seed_ids)
    return Setup(name, X, y, classes, holdout, seed_ids, pool_ids)


def fit(setup: Setup, ids: list[str], labels: list[str], train: TrainParams) -> LabelloopClassifier:
    model = LabelloopClassifier.from_params(train, setup.classes)
    return model.fit(setup.X.loc[ids], np.asarray(labels))


def holdout_accuracy(model: LabelloopClassifier, setup: Setup) -> float:
    return float((model.predict(setup.X.loc[setup.holdout]) == setup.y.loc[setup.holdout].to_numpy()).mean())


def run_arm(setup: Setup, arm: str, noise: float, *, rounds: int, batch_size: int, seed: int, work: Path,
            train: TrainParams, budget: list[int] | None = None, contradiction: float = 0.9) -> dict:
    rates = [float(min(r, 0.95)) for r in noise * RATE_SPREAD]
    params = SimulatedVendorParams(annotators=5, error_rates=rates, noise="confusion", seed=seed)
    oracle = work / "oracle.parquet"
    if not oracle.exists():
        write_parquet(oracle, pd.DataFrame({"item_id": setup.y.index.astype(str), "label": setup.y.to_numpy()}))
    state = work / arm
    vendor = SimulatedVendor(state / "vendor", oracle, params)
    qc = arm.startswith("qc")
    qparams = ImportParams(aggregation="dawid_skene" if arm == "qc-dawid-skene" else "majority", min_agreement=0.5,
                           min_gold_accuracy=0.7, min_gold_answers=5, contradiction_confidence=contradiction)
    queue = ReviewQueue(state / "qc" / "review_queue.json")
    train_ids = list(setup.seed_ids)
    train_labels = list(setup.y.loc[setup.seed_ids])
    labelled = set(train_ids)
    pool = set(setup.pool_ids)  # never-selected items; review items come back through the queue
    gold_pool = pd.DataFrame({"item_id": setup.seed_ids, "label": setup.y.loc[setup.seed_ids].to_numpy()})
    model = fit(setup, train_ids, train_labels, train)
    start_acc = holdout_accuracy(model, setup)
    strategy = get_strategy("margin").fn
    history = []
    for r in range(rounds):
        n_new = budget[r] if budget is not None else batch_size
        candidates = sorted(pool)
        probas = model.predict_proba(setup.X.loc[candidates])
        utilities = strategy(probas)
        order = np.argsort(-np.nan_to_num(utilities, nan=-np.inf), kind="stable")[:n_new]
        picked = [candidates[i] for i in order]
        items = pd.DataFrame({"item_id": picked, "utility": np.nan_to_num(utilities[order])})
        batch_id = f"{arm}-r{r}"
        if qc:
            queue = ReviewQueue(state / "qc" / "review_queue.json")  # re-read: process_import wrote it
            resend = pd.DataFrame({"item_id": [i for i in queue.pending(max_sends=2) if i not in labelled]})
            items = plan_quality_items(items, gold_pool=gold_pool, gold_share=0.1, overlap_share=0.3,
                                       overlap_annotators=3, review_items=resend, seed=seed * 1000 + r)
            queue.mark_sent(items.loc[items["is_review"], "item_id"], batch_id)
        pool -= set(picked)
        vendor.export_batch(ExportBatch(batch_id, items.drop(columns=["gold_label"], errors="ignore"), setup.classes, []))
        fetched = vendor.fetch_labels(batch_id)
        bought = int(batch_cost(len(fetched.annotations), 1.0)["labels_bought"])
        if qc:
            batch_probas = pd.DataFrame(model.predict_proba(setup.X.loc[items["item_id"]]),
                                        columns=[f"proba_{c}" for c in setup.classes])
            batch_probas.insert(0, "item_id", items["item_id"].to_numpy())
            outcome = process_import(fetched.annotations, items, setup.classes, batch_id=batch_id, params=qparams,
                                     state_dir=state / "qc", probas=batch_probas)
            new = outcome.labels
            excluded = outcome.report.excluded_annotators
        else:
            new = fetched.annotations[["item_id", "label"]]
            excluded = []
        new = new[~new["item_id"].isin(labelled)]
        train_ids += new["item_id"].tolist()
        train_labels += new["label"].tolist()
        labelled |= set(new["item_id"])
        model = fit(setup, train_ids, train_labels, train)
        noisy = np.mean(np.asarray(train_labels) != setup.y.loc[train_ids].to_numpy())
        history.append({"round": r, "n_new_items": len(picked), "labels_bought": bought,
                        "n_gold": int(items["is_gold"].sum()) if qc else 0,
                        "n_review_resent": int(items["is_review"].sum()) if qc else 0,
                        "n_train": len(train_ids), "holdout_accuracy": holdout_accuracy(model, setup),
                        "train_label_error": float(noisy), "excluded": excluded})
    final = history[-1]["holdout_accuracy"]
    bought = [h["labels_bought"] for h in history]
    return {"arm": arm, "noise": noise, "start_accuracy": start_acc, "final_accuracy": final,
            "labels_bought": int(sum(bought)), "bought_per_round": bought,
            "new_items": int(sum(h["n_new_items"] for h in history)), "n_train": len(train_ids),
            "review_pending_at_end": len(ReviewQueue(queue.path).pending()) if qc else 0,
            "train_label_error": history[-1]["train_label_error"],
            "cost_per_point": cost_per_point(float(sum(bought)), final - start_acc), "history": history}


ARMS = ("raw", "qc-majority", "qc-dawid-skene")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["satellite", "letter", "spam"])
    parser.add_argument("--data-dir", type=Path, default=DATASETS)
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.2])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=60, help="new items per round, the same in every arm")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-estimators", type=int, default=100, help="XGBoost trees (train default: 200)")
    parser.add_argument("--same-cost", action="store_true", help="also run raw-same-cost")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--contradiction", type=float, default=0.9,
                        help="import.contradiction_confidence of the QC arms (0 = off: gold + overlap + aggregation only)")
    parser.add_argument("--n-jobs", type=int, default=2, help="XGBoost threads (1 is far faster on a loaded machine)")
    parser.add_argument("--same-cost-from", type=Path, default=None,
                        help="run only raw-same-cost, with qc-majority's labels per round read from this results file")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "label_quality.json")
    parser.add_argument("--table", type=Path, nargs="+", default=None,
                        help="print the markdown table of these results files (merged) and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table([r for f in args.table for r in json.loads(f.read_text())["results"]]))
        return 0
    train = TrainParams(n_estimators=args.n_estimators, n_jobs=args.n_jobs)
    results = []
    budgets = {}
    if args.same_cost_from is not None:
        earlier = json.loads(args.same_cost_from.read_text())["results"]
        budgets = {(r["dataset"], r["noise"], r["seed"]): r["bought_per_round"] for r in earlier if r["arm"] == "qc-majority"}
    started = time.perf_counter()
    for seed in args.seeds:  # seed-major: an interrupted run still has whole seeds for every cell
        for name in args.datasets:
            setup = load(name, args.data_dir / f"{name}.parquet", args.label_column, seed)
            for noise in args.noise:
                with tempfile.TemporaryDirectory() as tmp:
                    work = Path(tmp)
                    t0 = time.perf_counter()
                    runs = {}
                    if budgets:
                        runs["raw-same-cost"] = run_arm(
                            setup, "raw-same-cost", noise, rounds=args.rounds, batch_size=args.batch_size, seed=seed,
                            work=work, train=train, budget=budgets[(name, noise, seed)])
                    for arm in args.arms if not budgets else ():
                        runs[arm] = run_arm(setup, arm, noise, rounds=args.rounds, batch_size=args.batch_size,
                                            seed=seed, work=work, train=train, contradiction=args.contradiction)
                    if args.same_cost:
                        runs["raw-same-cost"] = run_arm(
                            setup, "raw-same-cost", noise, rounds=args.rounds, batch_size=args.batch_size, seed=seed,
                            work=work, train=train, budget=runs["qc-majority"]["bought_per_round"])
                    for run in runs.values():
                        run.update(dataset=name, seed=seed)
                        results.append(run)
                    print(f"{name} noise={noise:.0%} seed={seed}: " + ", ".join(
                        f"{a} {r['final_accuracy']:.4f} ({r['labels_bought']} labels)" for a, r in runs.items())
                        + f"  [{time.perf_counter() - t0:.0f} s]", flush=True)
                write_json(args.out, {"params": vars(args) | {"data_dir": str(args.data_dir), "out": str(args.out)},
                                      "seconds": time.perf_counter() - started, "results": results})
    print(f"\nwall time {time.perf_counter() - started:.0f} s\n")
    print(markdown_table(results))
    return 0


def markdown_table(results: list[dict]) -> str:
    """Mean ± std over seeds per cell; Δ = paired (same seed) difference to raw, mean ± std."""
    frame = pd.DataFrame(results)
    arms = [a for a in ("raw", "raw-same-cost", "qc-majority", "qc-dawid-skene") if a in set(frame["arm"])]
    qc_arms = [a for a in arms if a != "raw"]
    lines = ["| dataset | noise | seeds | seed acc. | " + " | ".join(f"{a}: acc. (labels, train-label err.)" for a in arms)
             + " | " + " | ".join(f"Δ {a} − raw" for a in qc_arms) + " |",
             "|---|---|---|---|" + "---|" * (len(arms) + len(qc_arms))]
    for (name, noise), group in frame.groupby(["dataset", "noise"], sort=False):
        acc = group.pivot(index="seed", columns="arm", values="final_accuracy")
        cells = []
        for arm in arms:
            g = group[group["arm"] == arm]
            cells.append(f"{g['final_accuracy'].mean():.4f} ± {g['final_accuracy'].std(ddof=1):.4f} "
                         f"({g['labels_bought'].mean():.0f}, {g['train_label_error'].mean():.1%})" if len(g) else "—")
        for arm in qc_arms:
            if arm not in acc.columns or "raw" not in acc.columns:
                cells.append("—")
                continue
            diff = (acc[arm] - acc["raw"]).dropna()
            cells.append(f"{diff.mean() * 100:+.2f} ± {diff.std(ddof=1) * 100:.2f} pt")
        lines.append(f"| {name} | {noise:.0%} | {acc.shape[0]} | {group['start_accuracy'].mean():.4f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
