"""Selection speed and peak memory (benchmark, not a test).

In memory (probas given, 1M candidates): margin/entropy top-k, cluster, coreset, hybrid at batch 1,000.
Streamed from parquet (`select_pool_to_file`, each in a fresh process so peak RSS is its own): 1M and 10M rows.
Text (`--mode text-file`): a pool whose only feature is a text column of ≈300 characters; the selection space
is the champion's (TF-IDF + logistic regression, trained here on 5,000 texts) reduced by TruncatedSVD, fitted
on a uniform sample of the stream and applied to the kept candidates.

    .venv/bin/python benchmarks/selection_speed.py --rows 1000000 --mode memory
    .venv/bin/python benchmarks/selection_speed.py --rows 10000000 --mode file --pool benchmarks/results/pool_10m.parquet
    .venv/bin/python benchmarks/selection_speed.py --rows 1000000 --mode text-file --pool benchmarks/results/text_pool_1m.parquet
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = [("margin", "topk"), ("entropy", "topk"), ("margin", "cluster"), ("margin", "coreset"), ("hybrid", None)]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def memory_mode(rows: int, batch: int, calls: int = 3) -> list[dict]:
    """Each case `calls` times on the same arrays: call 1 is cold (first touch of the outputs), the rest warm.

    Cases run on the float64 probas of the generator and on a float32 copy (what a parquet pool holds);
    `api` rows time the public entry point `select_indices` (scoring + selector + bookkeeping) end to end.
    """
    from synthetic_pool import arrays

    from labelloop.domain.acquisition import choose, resolve_selector, score
    from labelloop.domain.acquisition.pool import PeakMemory, select_indices

    probas64, features = arrays(rows)
    probas32 = probas64.astype(np.float32)
    groups = probas64.argmax(axis=1)
    # Warm up imports (sklearn.cluster) so the timings are the selection's, not the import's.
    choose("cluster", np.random.default_rng(0).random(5000), 10, rng=np.random.default_rng(0), features=features[:5000])
    results = []
    cases = [(s, sel, "float64", "fn") for s, sel in CASES]
    cases += [(s, "topk", "float32", "fn") for s in ("margin", "entropy")]
    cases += [("margin", "topk", dt, "api") for dt in ("float64", "float32")]
    for strategy, named_selector, dtype, entry in cases:
        selector = resolve_selector(strategy, named_selector)
        probas = probas64 if dtype == "float64" else probas32
        for call in range(1, calls + 1):
            load_before = _load()
            with PeakMemory() as memory:
                started = time.perf_counter()
                if entry == "api":
                    chosen, _, seconds = select_indices(probas, batch, strategy=strategy, selector=selector, seed=0)
                    scored = started + seconds["score"]
                else:
                    utilities = score(strategy, probas, rng=np.random.default_rng(0))
                    scored = time.perf_counter()
                    chosen = choose(selector, utilities, batch, rng=np.random.default_rng(0), features=features, groups=groups)
                done = time.perf_counter()
            results.append({"mode": "memory", "entry": entry, "dtype": dtype, "call": call, "rows": rows,
                            "strategy": strategy, "selector": selector, "batch": batch,
                            "score_s": round(scored - started, 4), "select_s": round(done - scored, 4),
                            "total_s": round(done - started, 4), "peak_rss_mib": round(memory.peak_mib),
                            "n_selected": len(chosen), "load1_before": load_before, "load1_after": _load()})
            print(json.dumps(results[-1]), flush=True)
    return results


def file_mode(rows: int, batch: int, pool: Path) -> list[dict]:
    from synthetic_pool import write_pool

    if not pool.exists():
        started = time.perf_counter()
        write_pool(pool, rows)
        print(f"wrote {pool} ({rows:,} rows) in {time.perf_counter() - started:.0f} s", flush=True)
    results = []
    for strategy, selector in CASES:
        code = (
            "import json,sys; from labelloop.domain.acquisition.pool import select_pool_to_file;"
            f"r=select_pool_to_file({str(pool)!r}, {str(pool.with_suffix('.batch.parquet'))!r}, {strategy!r}, {batch}, "
            f"selector={selector!r}, seed=0);"
            "print(json.dumps(r))"
        )
        load_before = _load()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        report = json.loads(out.stdout.strip().splitlines()[-1])
        results.append({"mode": "file", "rows": rows, "strategy": strategy, "selector": report["selector"], "batch": batch,
                        "total_s": report["seconds"], "peak_rss_mib": report["peak_memory_mib"],
                        "score_s": report["timings"]["score"], "select_s": report["timings"]["select"],
                        "n_selected": report["n_selected"],
                        "load1_before": load_before, "load1_after": _load()})
        print(json.dumps(results[-1]), flush=True)
    return results


TEXT_CASES = [("margin", "topk"), ("margin", "cluster"), ("margin", "coreset"), ("hybrid", None)]


def text_model(path: Path, text_params: dict) -> Path:
    """`train`'s pipeline for a text-only schema, fitted on 5,000 synthetic texts, pickled to `path`."""
    import pickle

    import pandas as pd
    from synthetic_pool import N_CLASSES, texts

    from labelloop.config import TextParams, TrainParams
    from labelloop.model import LabelloopClassifier
    from labelloop.schema import ColumnSpec, Schema

    schema = Schema([ColumnSpec("text", "text", "string")], [f"c{k}" for k in range(N_CLASSES)])
    text, label, _ = texts(5_000, seed=10_000)
    model = LabelloopClassifier.from_params(TrainParams(estimator="logistic_regression", text=TextParams(**text_params)), schema)
    model.fit(pd.DataFrame({"text": text}), np.array([f"c{k}" for k in label]))
    path.write_bytes(pickle.dumps(model))
    return path


def text_file_mode(rows: int, batch: int, pool: Path, text_params: dict, chunk: int) -> list[dict]:
    from synthetic_pool import write_text_pool

    if not pool.exists():
        started = time.perf_counter()
        write_text_pool(pool, rows)
        print(f"wrote {pool} ({rows:,} rows, {pool.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s",
              flush=True)
    tag = "word" if text_params.get("char_ngrams", "default") is None else "default"
    started = time.perf_counter()
    model_path = text_model(pool.with_suffix(f".model-{tag}.pkl"), text_params)
    print(f"trained the model ({tag} n-grams) in {time.perf_counter() - started:.1f} s", flush=True)
    results = []
    for strategy, selector in TEXT_CASES:
        code = (
            "import json, pickle; from pathlib import Path;"
            "from labelloop.domain.acquisition.pool import SelectionContext, select_pool_to_file;"
            "from labelloop.domain.acquisition.space import ModelSpace;"
            f"model = pickle.loads(Path({str(model_path)!r}).read_bytes());"
            "ctx = SelectionContext(class_names=model.schema.class_names, schema=model.schema, train_params=model.params,"
            " feature_map=ModelSpace.of_model(model, model.params.text.selection_components));"
            f"r = select_pool_to_file({str(pool)!r}, {str(pool.with_suffix('.batch.parquet'))!r}, {strategy!r}, {batch}, "
            f"selector={selector!r}, seed=0, chunk_size={chunk}, context=ctx);"
            "print(json.dumps(r))"
        )
        load_before = _load()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        report = json.loads(out.stdout.strip().splitlines()[-1])
        timings = report["timings"]
        results.append({"mode": "text-file", "ngrams": tag, "rows": rows, "strategy": strategy, "selector": report["selector"],
                        "batch": batch, "total_s": round(report["seconds"], 2), "peak_rss_mib": round(report["peak_memory_mib"]),
                        "score_s": round(timings["score"], 2), "select_s": round(timings["select"], 2),
                        "space_fit_s": round(timings.get("space_fit", 0.0), 2), "n_selected": report["n_selected"],
                        "load1_before": load_before, "load1_after": _load()})
        print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--mode", choices=["memory", "file", "text-file"], default="memory")
    parser.add_argument("--pool", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--calls", type=int, default=3, help="memory mode: calls per case (1st cold, rest warm)")
    parser.add_argument("--text-params", default="{}", help='text-file mode: train.text as JSON, e.g. {"char_ngrams": null}')
    parser.add_argument("--chunk", type=int, default=200_000, help="file modes: rows per streamed chunk")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if args.mode == "memory":
        results = memory_mode(args.rows, args.batch, args.calls)
    elif args.mode == "text-file":
        results = text_file_mode(args.rows, args.batch, Path(args.pool or f"benchmarks/results/text_pool_{args.rows}.parquet"),
                                 json.loads(args.text_params), args.chunk)
    else:
        results = file_mode(args.rows, args.batch, Path(args.pool or f"benchmarks/results/pool_{args.rows}.parquet"))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"load average at end: {os.getloadavg()}")
    print("reproduce: .venv/bin/python benchmarks/selection_speed.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
