"""Synthetic prediction-log pools, written in chunks: n rows, 10 classes, and either 32 float32 features
(`write_pool`) or one text column of a few hundred characters (`write_text_pool`)."""

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


VOCABULARY = 4_000  # words w0000..w3999; each class favours its own 150
TEXT_WORDS = 50  # ≈ 300 characters per text


def texts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, labels as class indices, probas n×10 float64): a third of each text's words from its class's
    own vocabulary, the rest from everyone's; the probas are a noisy guess of the label, as a model's."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, N_CLASSES, size=n)
    own = (label[:, None] * 150 + rng.integers(0, 150, size=(n, TEXT_WORDS))) % VOCABULARY
    common = rng.integers(0, VOCABULARY, size=(n, TEXT_WORDS))
    words = np.where(rng.random((n, TEXT_WORDS)) < 1 / 3, own, common)
    names = np.array([f"w{i:04d}" for i in range(VOCABULARY)])
    text = [" ".join(row) for row in names[words]]
    logits = rng.normal(size=(n, N_CLASSES))
    logits[np.arange(n), label] += rng.gamma(2.0, 1.5, size=n)
    probas = np.exp(logits - logits.max(axis=1, keepdims=True))
    probas /= probas.sum(axis=1, keepdims=True)
    return text, label, probas


def write_text_pool(path: str | Path, n: int, chunk: int = 200_000, seed: int = 0) -> Path:
    """A prediction log of `n` rows with a `text` column (≈300 characters) and proba_c0..c9."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for i, start in enumerate(range(0, n, chunk)):
            m = min(chunk, n - start)
            text, _, probas = texts(m, seed=seed + 1 + i)
            frame = pd.DataFrame({"prediction_id": np.arange(start, start + m).astype(str)})
            frame["ts"] = pd.Timestamp("2026-11-01")
            frame["model_version"] = "1"
            frame["text"] = text
            for k in range(N_CLASSES):
                frame[f"proba_c{k}"] = probas[:, k].astype(np.float32)
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
