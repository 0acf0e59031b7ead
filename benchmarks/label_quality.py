"""Label quality under annotator noise: does gold + overlap + aggregation beat single raw labels?

For each dataset and noise level, the same margin active-learning loop runs with the simulated vendor
(labelloop.vendors.simulated, the one the demo uses) in four arms:

  raw            every selected item is labelled once; the answer goes straight into training.
  raw-same-cost  as raw, but each round buys as many labels as the `qc-majority` arm did that round
                 (more items, single labels): the comparison at equal annotation cost.
  qc-majority    the same selected items per round as raw, plus 10% gold questions, 30% of items
                 labelled by 3 annotators, majority vote, review queue (re-sent with overlap, counted in
                 the next round's batch) and model-contradiction flags (labelloop.quality.process_import,
                 as the import stage runs it). It buys more labels than raw: see raw-same-cost.
  qc-dawid-skene the same with Dawid-Skene aggregation.

The crowd: 5 simulated annotators whose error rates average the noise level p but differ
(p x [0.25, 0.5, 0.75, 1.0, 2.5]), with confusion-matrix noise (each annotator's mistakes on a class
mostly go to one favourite wrong class). Seed labels and gold answers are true labels. The model is
labelloop.model.LabelloopClassifier with the `train` defaults (the same XGBoost as the train stage).

    .venv/bin/python benchmarks/label_quality.py                 # all three datasets, 10% and 20%
    .venv/bin/python benchmarks/label_quality.py --datasets spam --noise 0.2 --rounds 4

Writes benchmarks/results/label_quality.json and prints a markdown table (docs/benchmarks.md).
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

from labelloop.acquisition import get_strategy  # noqa: E402
from labelloop.config import SimulatedVendorParams, TrainParams  # noqa: E402
from labelloop.io import write_json, write_parquet  # noqa: E402
from labelloop.model import LabelloopClassifier  # noqa: E402
from labelloop.quality import QualityParams, ReviewQueue, batch_cost, cost_per_point, plan_quality_items, process_import  # noqa: E402
from labelloop.vendors.base import ExportBatch  # noqa: E402
from labelloop.vendors.simulated import SimulatedVendor  # noqa: E402

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
            train: TrainParams, budget: list[int] | None = None) -> dict:
    rates = [float(min(r, 0.95)) for r in noise * RATE_SPREAD]
    params = SimulatedVendorParams(annotators=5, error_rates=rates, noise="confusion", seed=seed)
    oracle = work / "oracle.parquet"
    if not oracle.exists():
        write_parquet(oracle, pd.DataFrame({"item_id": setup.y.index.astype(str), "label": setup.y.to_numpy()}))
    state = work / arm
    vendor = SimulatedVendor(state / "vendor", oracle, params)
    qc = arm.startswith("qc")
    qparams = QualityParams(aggregation="dawid_skene" if arm == "qc-dawid-skene" else "majority", min_agreement=0.5,
                            min_gold_accuracy=0.7, min_gold_answers=5, contradiction_confidence=0.9)
    queue = ReviewQueue(state / "qc" / "review_queue.json")
    train_ids = list(setup.seed_ids)
    train_labels = list(setup.y.loc[setup.seed_ids])
    labelled = set(train_ids)
    pool = set(setup.pool_ids)
    gold_pool = pd.DataFrame({"item_id": setup.seed_ids, "label": setup.y.loc[setup.seed_ids].to_numpy()})
    model = fit(setup, train_ids, train_labels, train)
    start_acc = holdout_accuracy(model, setup)
    strategy = get_strategy("margin").fn
    rng = np.random.default_rng(seed)
    bought, history = [], []
    for r in range(rounds):
        size = budget[r] if budget is not None else batch_size
        resend = [i for i in queue.pending() if i in pool][: size // 3] if qc else []
        candidates = sorted(pool - set(resend))
        probas = model.predict_proba(setup.X.loc[candidates])
        utilities = strategy(probas, rng=rng)
        n_new = max(size - len(resend), 1)  # the same number of selected items per round in every arm
        order = np.argsort(-np.nan_to_num(utilities, nan=-np.inf), kind="stable")[:n_new]
        picked = [candidates[i] for i in order] + resend
        items = pd.DataFrame({"item_id": picked, "utility": 0.0})
        if qc:
            items = plan_quality_items(items, gold_pool=gold_pool, gold_share=0.1, overlap_share=0.3,
                                       overlap_annotators=3, seed=seed + r)
            items.loc[items["item_id"].isin(resend), "annotators_wanted"] = 3  # review items get more eyes
            queue.mark_sent(resend, f"{arm}-r{r}")
        batch_id = f"{arm}-r{r}"
        vendor.export_batch(ExportBatch(batch_id, items.drop(columns=["gold_label"], errors="ignore"), setup.classes, []))
        fetched = vendor.fetch_labels(batch_id)
        bought.append(int(batch_cost(len(fetched.annotations), 1.0)["labels_bought"]))
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
        pool -= set(new["item_id"])
        if qc:  # items waiting for review stay out of the pool's normal ranking until re-sent
            pool -= set(queue.pending()) - set(resend)
            pool |= set(queue.pending()) & set(setup.pool_ids)
        model = fit(setup, train_ids, train_labels, train)
        noisy = np.mean(np.asarray(train_labels) != setup.y.loc[train_ids].to_numpy())
        history.append({"round": r, "labels_bought": bought[-1], "n_train": len(train_ids),
                        "holdout_accuracy": holdout_accuracy(model, setup), "train_label_error": float(noisy),
                        "excluded": excluded})
    final = history[-1]["holdout_accuracy"]
    return {"arm": arm, "noise": noise, "start_accuracy": start_acc, "final_accuracy": final,
            "labels_bought": int(sum(bought)), "bought_per_round": bought, "n_train": len(train_ids),
            "train_label_error": history[-1]["train_label_error"],
            "cost_per_point": cost_per_point(float(sum(bought)), final - start_acc), "history": history}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["satellite", "letter", "spam"])
    parser.add_argument("--data-dir", type=Path, default=DATASETS)
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.2])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=60)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "label_quality.json")
    args = parser.parse_args(argv)
    train = TrainParams()
    results = []
    for name in args.datasets:
        for seed in args.seeds:
            setup = load(name, args.data_dir / f"{name}.parquet", args.label_column, seed)
            for noise in args.noise:
                with tempfile.TemporaryDirectory() as tmp:
                    work = Path(tmp)
                    t0 = time.perf_counter()
                    runs = {}
                    for arm in ("raw", "qc-majority", "qc-dawid-skene"):
                        runs[arm] = run_arm(setup, arm, noise, rounds=args.rounds, batch_size=args.batch_size,
                                            seed=seed, work=work, train=train)
                    runs["raw-same-cost"] = run_arm(setup, "raw-same-cost", noise, rounds=args.rounds,
                                                    batch_size=args.batch_size, seed=seed, work=work, train=train,
                                                    budget=runs["qc-majority"]["bought_per_round"])
                    for run in runs.values():
                        run.update(dataset=name, seed=seed)
                        results.append(run)
                    print(f"{name} noise={noise:.0%} seed={seed}: " + ", ".join(
                        f"{a} {r['final_accuracy']:.4f} ({r['labels_bought']} labels)" for a, r in runs.items())
                        + f"  [{time.perf_counter() - t0:.0f} s]", flush=True)
    write_json(args.out, {"params": vars(args) | {"data_dir": str(args.data_dir), "out": str(args.out)},
                          "results": results})
    print()
    print(markdown_table(results))
    return 0


def markdown_table(results: list[dict]) -> str:
    frame = pd.DataFrame(results)
    arms = ["raw", "raw-same-cost", "qc-majority", "qc-dawid-skene"]
    lines = ["| dataset | noise | seed acc. | " + " | ".join(f"{a} acc. (labels, train-label err.)" for a in arms) + " |",
             "|---|---|---|" + "---|" * len(arms)]
    for (name, noise), group in frame.groupby(["dataset", "noise"], sort=False):
        by_arm = group.groupby("arm")
        cells = []
        for arm in arms:
            g = by_arm.get_group(arm)
            cells.append(f"{g['final_accuracy'].mean():.4f} ({g['labels_bought'].mean():.0f}, {g['train_label_error'].mean():.1%})")
        lines.append(f"| {name} | {noise:.0%} | {group['start_accuracy'].mean():.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
