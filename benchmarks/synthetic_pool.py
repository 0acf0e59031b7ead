"""Synthetic prediction-log pools: n rows, 10 classes, 32 features (float32), written in chunks."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

N_CLASSES = 10
N_FEATURES = 32


def arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(probas n×10 float64, features n×32 float32) with class structure in the features."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(N_CLASSES, N_FEATURES)).astype(np.float32)
    label = rng.integers(0, N_CLASSES, size=n)
    features = centers[label] + rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    logits = rng.normal(size=(n, N_CLASSES))
    logits[np.arange(n), label] += rng.gamma(2.0, 1.5, size=n)
    probas = np.exp(logits - logits.max(axis=1, keepdims=True))
    probas /= probas.sum(axis=1, keepdims=True)
    return probas, features


def write_pool(path: str | Path, n: int, chunk: int = 500_000, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for i, start in enumerate(range(0, n, chunk)):
            m = min(chunk, n - start)
            probas, features = arrays(m, seed=seed + i)
            frame = pd.DataFrame(features, columns=[f"f{j}" for j in range(N_FEATURES)])
            for k in range(N_CLASSES):
                frame[f"proba_c{k}"] = probas[:, k].astype(np.float32)
            frame.insert(0, "prediction_id", np.arange(start, start + m).astype(str))
            frame.insert(1, "ts", pd.Timestamp("2026-11-01"))
            frame.insert(2, "model_version", "1")
            frame["predicted"] = pd.Series(probas.argmax(axis=1)).map(lambda k: f"c{k}").to_numpy()
            frame["confidence"] = probas.max(axis=1).astype(np.float32)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    print(write_pool(args.out, args.rows))
