"""Random's learning curve beyond the simulator's budget, exactly as the simulator would have drawn it.

The `random` strategy's picks do not depend on the model (seeded uniform utilities over the
candidates), so its labelled set after any round can be replayed without training a model per round.
This trains models only at the requested label counts, on the same holdout, seed set and XGBoost
settings as `labelloop.apps.simulate`, and reports random's labels-to-target on the mean curve (the target
is taken from the simulator's summary.json). Points inside the simulator's budget can be checked
against its curves.csv (they must be equal).

    .venv/bin/python benchmarks/extend_random.py --data /work/shared/datasets/letter.parquet \
        --summary benchmarks/results/letter/summary.json --from 4050 --to 12050 --step 500 --n-jobs 1
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def replay_random(config: dict, table, repeat: int, sizes: list[int], n_jobs: int | None) -> list[dict]:
    from sklearn.model_selection import train_test_split

    from labelloop.apps.simulate import evaluate
    from labelloop.config import TrainParams
    from labelloop.domain.acquisition.pool import select_indices
    from labelloop.model import LabelloopClassifier

    seed, seed_size, batch = config["seed"], config["seed_size"], config["batch_size"]
    params = TrainParams(**{**config["train_params"], **({} if n_jobs is None else {"n_jobs": n_jobs})})
    y, class_names = table.labels, table.schema.class_names
    counts = pd.Series(y).value_counts()
    minority = str(counts.sort_values(kind="stable").index[0])
    idx = np.arange(len(y))
    pool, test = train_test_split(idx, test_size=config["test_size"], stratify=y, random_state=seed + repeat)
    pool = np.sort(pool)
    rng = np.random.default_rng([seed, repeat])
    labelled = list(rng.choice(pool, seed_size, replace=False))
    in_labelled = np.zeros(len(y), dtype=bool)
    in_labelled[labelled] = True
    wanted = sorted(set(sizes))
    rows = []
    round_ = 0
    while wanted:
        if len(labelled) in wanted:
            lab = np.asarray(labelled)
            model = LabelloopClassifier.from_params(params, table.schema).fit(table.rows(lab), y[lab])
            scores = evaluate(y[test], model.predict(table.rows(test)), minority)
            rows.append({"strategy": "random", "repeat": repeat, "round": round_, "n_labels": len(lab), **scores})
            print(json.dumps(rows[-1]), flush=True)
            wanted.remove(len(labelled))
        if not wanted or len(labelled) > max(wanted):
            break
        candidates = pool[~in_labelled[pool]]
        if len(candidates) == 0:
            break
        dummy = np.full((len(candidates), len(class_names)), 1.0 / len(class_names))  # random ignores the probas
        chosen, _, _ = select_indices(
            dummy, batch, strategy="random", selector=None,
            seed=int(np.random.default_rng([seed, repeat, round_]).integers(2**31 - 1)),
            class_names=class_names,
        )
        picked = candidates[chosen]
        in_labelled[picked] = True
        labelled.extend(picked.tolist())
        round_ += 1
    return rows


def main(argv: list[str] | None = None) -> None:
    from labelloop.apps.simulate import labels_to_target, load_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--summary", required=True, help="the simulator's summary.json (config and target)")
    parser.add_argument("--from", dest="start", type=int, required=True)
    parser.add_argument("--to", dest="stop", type=int, required=True)
    parser.add_argument("--step", type=int, default=500)
    parser.add_argument("--n-jobs", type=int, default=None)
    parser.add_argument("--out", default=None, help="CSV of the extra points (default: next to summary.json)")
    args = parser.parse_args(argv)
    summary = json.loads(Path(args.summary).read_text())
    config = summary["config"]
    from labelloop.schema import SchemaOverrides

    overrides = SchemaOverrides(*(tuple(config.get(f"{role}_columns", [])) for role in
                                  ("id", "numeric", "categorical", "text", "drop")))
    table = load_table(args.data, config["label_col"], overrides)
    sizes = list(range(args.start, args.stop + 1, args.step))
    started = time.perf_counter()
    rows = []
    for repeat in range(config["repeats"]):
        rows.extend(replay_random(config, table, repeat, sizes, args.n_jobs))
    curve = pd.DataFrame(rows)
    out = Path(args.out or Path(args.summary).with_name("random_extended.csv"))
    curve.to_csv(out, index=False)
    metric, target = summary["metric"], summary["target"]
    mean = curve.groupby("n_labels")[metric].mean()
    hit = labels_to_target(mean.index.to_numpy(), mean.to_numpy(), target)
    print(f"\ntarget {target:.4f} ({metric}); random mean curve:")
    print(mean.round(4).to_string())
    print(f"random labels-to-target on this grid: {hit} (first grid point whose mean reaches the target)")
    print(f"{time.perf_counter() - started:.0f} s; reproduce: .venv/bin/python benchmarks/extend_random.py "
          + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))


if __name__ == "__main__":
    main()
