"""Label efficiency against scikit-activeml and small-text: their query code inside labelloop's simulator.

Runs in the benchmark venv (`bash benchmarks/setup_bench_env.sh`), e.g.

    benchmarks/.venv-bench/bin/python benchmarks/compare_libraries_efficiency.py \
        --data /work/shared/datasets/spam.parquet \
        --strategies random,margin,hybrid,skactiveml_margin,smalltext_breaking_ties \
        --seed-size 50 --batch-size 100 --rounds 15 --repeats 5 --out benchmarks/results/spam_libs

Same protocol for every strategy, because every strategy runs in the same `labelloop.apps.simulate` loop:
same stratified holdout and seed set per repeat, same XGBoost model (`train` settings), same batch and
rounds. Only the choice of the next batch differs. The library strategies are registered here:

- `skactiveml_margin`: scikit-activeml's `uncertainty_scores(method="margin_sampling")` (what
  `UncertaintySampling(method="margin_sampling")` scores) + its `simple_batch` (top-b, random ties);
- `smalltext_breaking_ties`: small-text's `BreakingTies().query(...)` (margin, argpartition top-b),
  fed the same predicted probabilities through a stand-in classifier;
- `skactiveml_typiclust`: scikit-activeml's `TypiClust` (diversity: k-means with labelled + b clusters,
  the most typical row of each uncovered cluster) on the same standardized-by-nothing raw features;
- `skactiveml_coreset`: scikit-activeml's `CoreSet` (greedy k-center from the labelled rows).

Each returns utility 1 for the rows the library picked and 0 elsewhere, so labelloop's top-k takes
exactly the library's batch. Prints the same table as benchmarks/label_efficiency.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from labelloop.domain.acquisition.registry import STRATEGIES, StrategySpec

BATCH = {"size": 100}  # set from --batch-size before the run: the library queries need it


def _finite_rows(probas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probas = np.asarray(probas, dtype=np.float64)
    ok = np.isfinite(probas).all(axis=1)
    return np.where(ok[:, None], probas, 0.0), ok


def _picked(n: int, chosen: np.ndarray, ok: np.ndarray) -> np.ndarray:
    out = np.zeros(n)
    out[np.asarray(chosen, dtype=np.int64)] = 1.0
    out[~ok] = np.nan
    return out


def skactiveml_margin(probas, *, rng):
    from skactiveml.pool import uncertainty_scores
    from skactiveml.utils import simple_batch

    probas, ok = _finite_rows(probas)
    utilities = uncertainty_scores(probas, method="margin_sampling")
    utilities[~ok] = np.nan
    chosen = simple_batch(utilities, random_state=int(rng.integers(2**31 - 1)), batch_size=min(BATCH["size"], int(ok.sum())))
    return _picked(len(probas), chosen, ok)


class _GivenProbas:
    """small-text calls clf.predict_proba(dataset): hand it the simulator's probabilities."""

    def __init__(self, probas: np.ndarray) -> None:
        self.probas = probas

    def predict_proba(self, dataset):
        return self.probas[np.asarray(dataset)]


def smalltext_breaking_ties(probas):
    from small_text.query_strategies import BreakingTies

    probas, ok = _finite_rows(probas)
    unlabeled = np.flatnonzero(ok)
    n = min(BATCH["size"], len(unlabeled))
    # The "dataset" is the row index itself, so predict_proba(dataset) returns every row's probas.
    rows = np.arange(len(probas))
    chosen = BreakingTies().query(_GivenProbas(probas), rows, unlabeled, np.empty(0, dtype=np.int64), np.empty(0), n=n)
    return _picked(len(probas), chosen, ok)


def _with_labelled(features, labelled_features, labelled_labels, class_names):
    x = np.vstack([np.asarray(labelled_features, dtype=np.float64), np.asarray(features, dtype=np.float64)])
    index = {c: i for i, c in enumerate(class_names)}
    y = np.full(len(x), np.nan)
    y[: len(labelled_features)] = [index[str(v)] for v in labelled_labels]
    return x, y, len(labelled_features)


def skactiveml_typiclust(probas, *, rng, features=None, labelled_features=None, labelled_labels=None, class_names=None):
    from skactiveml.pool import TypiClust

    probas, ok = _finite_rows(probas)
    x, y, n_lab = _with_labelled(features, labelled_features, labelled_labels, class_names)
    candidates = n_lab + np.flatnonzero(ok)
    chosen = TypiClust(random_state=int(rng.integers(2**31 - 1))).query(
        x, y, candidates=candidates, batch_size=min(BATCH["size"], len(candidates)))
    return _picked(len(probas), np.asarray(chosen) - n_lab, ok)


def skactiveml_coreset(probas, *, rng, features=None, labelled_features=None, labelled_labels=None, class_names=None):
    from skactiveml.pool import CoreSet

    probas, ok = _finite_rows(probas)
    x, y, n_lab = _with_labelled(features, labelled_features, labelled_labels, class_names)
    candidates = n_lab + np.flatnonzero(ok)
    chosen = CoreSet(random_state=int(rng.integers(2**31 - 1))).query(
        x, y, candidates=candidates, batch_size=min(BATCH["size"], len(candidates)))
    return _picked(len(probas), np.asarray(chosen) - n_lab, ok)


# The libraries' strategies, under the names --strategies takes; they join the strategy table in main().
LIBRARY_STRATEGIES = {
    "skactiveml_margin": StrategySpec(skactiveml_margin, "scikit-activeml margin_sampling + simple_batch", chunkable=False),
    "smalltext_breaking_ties": StrategySpec(smalltext_breaking_ties, "small-text BreakingTies().query", chunkable=False),
    "skactiveml_typiclust": StrategySpec(skactiveml_typiclust, "scikit-activeml TypiClust", chunkable=False),
    "skactiveml_coreset": StrategySpec(skactiveml_coreset, "scikit-activeml CoreSet", chunkable=False),
}


def main(argv: list[str] | None = None) -> dict:
    import label_efficiency

    STRATEGIES.update(LIBRARY_STRATEGIES)  # type: ignore[arg-type]  # benchmark-only names
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--batch-size" in argv:
        BATCH["size"] = int(argv[argv.index("--batch-size") + 1])
    return label_efficiency.main(argv)


if __name__ == "__main__":
    main()
