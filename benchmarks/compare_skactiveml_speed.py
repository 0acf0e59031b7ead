"""Diversity selection speed: labelloop vs scikit-activeml's CoreSet and TypiClust on the same input.

Runs in the benchmark venv (benchmarks/setup_bench_env.sh):

    benchmarks/.venv-bench/bin/python benchmarks/compare_skactiveml_speed.py --rows 10000 100000 --batch 1000

Input: n synthetic candidates (32 features, 10 classes), 50 labelled rows, batch b. labelloop runs on
the full input (top_m_factor = n/b, so no top-M shortcut) and in its default mode (top-M = 10·b).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(fn, *args, **kwargs):
    """Seconds `fn(*args, **kwargs)` took, and its result."""
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--labelled", type=int, default=50)
    parser.add_argument("--skip-skactiveml-above", type=int, default=100_000)
    args = parser.parse_args()
    from skactiveml.pool import CoreSet, TypiClust
    from synthetic_pool import arrays

    from labelloop.domain.acquisition import get_selector, get_strategy

    results = []
    for n in args.rows:
        probas, X = arrays(n + args.labelled, seed=1)
        y = np.full(len(X), np.nan)
        y[: args.labelled] = probas[: args.labelled].argmax(axis=1)
        Xc, lab = X[args.labelled:], X[: args.labelled]
        utilities = get_strategy("margin").fn(probas[args.labelled:])
        full_m = max(1, n // args.batch)
        get_selector("cluster").fn(utilities[:2000], 10, rng=np.random.default_rng(0), features=Xc[:2000])  # warm imports
        row = {"rows": n, "batch": args.batch}
        coreset, cluster = get_selector("coreset").fn, get_selector("cluster").fn
        row["labelloop_coreset_full_s"], _ = timed(coreset, utilities, args.batch, rng=np.random.default_rng(0), features=Xc,
                                                   labelled_features=lab, top_m_factor=full_m)
        row["labelloop_coreset_topM_s"], _ = timed(coreset, utilities, args.batch, rng=np.random.default_rng(0), features=Xc,
                                                   labelled_features=lab)
        row["labelloop_cluster_full_s"], _ = timed(cluster, utilities, args.batch, rng=np.random.default_rng(0), features=Xc,
                                                   top_m_factor=full_m)
        row["labelloop_cluster_topM_s"], _ = timed(cluster, utilities, args.batch, rng=np.random.default_rng(0), features=Xc)
        if n <= args.skip_skactiveml_above:
            row["skactiveml_coreset_s"], _ = timed(CoreSet(random_state=0).query, X, y, batch_size=args.batch)
            row["skactiveml_typiclust_s"], _ = timed(TypiClust(random_state=0).query, X, y, batch_size=args.batch)
        results.append(row)
        print(json.dumps(row), flush=True)
    print("reproduce: benchmarks/.venv-bench/bin/python benchmarks/compare_skactiveml_speed.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
