"""Fixtures for vendor tests: a real Label Studio server (once per session), batches, annotator helpers.

The `label_studio` fixture runs `infra/labelstudio.sh up` (install into ./.venv-labelstudio if needed,
start headless on 127.0.0.1:$LABELLOOP_LS_PORT, create a personal access token) and stops the server
at the end of the session if it started it. A failure to install or start fails the tests: they are
never skipped silently.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.adapters.vendors.base import ExportBatch
from labelloop.schema import ColumnSpec, Schema
from tests.conftest import stop_after_group

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "infra" / "labelstudio.sh"
LABELS = ["cat", "dog", "bird"]
FEATURES = ["f0", "f1"]


@dataclass(frozen=True)
class LabelStudioServer:
    url: str
    token: str

    def client(self):
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token)


def _script_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("LS_PORT", os.environ.get("LABELLOOP_LS_PORT", "8080"))
    env.setdefault("LS_START_TIMEOUT", "600")
    return env


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], env=_script_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="session")
def label_studio() -> LabelStudioServer:
    already_running = _run("status", timeout=30).returncode == 0
    up = _run("up")
    if up.returncode != 0:
        pytest.fail(f"infra/labelstudio.sh up failed (exit {up.returncode}):\n{up.stderr[-4000:]}", pytrace=False)
    url = _run("url", timeout=30).stdout.strip()
    data_dir = Path(_script_env().get("LS_DATA_DIR", ROOT / ".labelstudio"))
    token = (data_dir / "token").read_text().strip()

    def stop_server() -> None:  # not one that was running before, nor with LABELLOOP_LS_KEEP=1
        if not already_running and os.environ.get("LABELLOOP_LS_KEEP") != "1":
            _run("stop", timeout=120)

    stop = stop_after_group("label_studio", stop_server)
    yield LabelStudioServer(url=url, token=token)
    stop()


def make_batch(batch_id: str, n: int = 6, *, seed: int = 0, wanted: list[int] | None = None,
               gold: dict[str, str] | None = None) -> tuple[ExportBatch, pd.DataFrame]:
    """An export batch of `n` items (+ gold items) and the batch's own item table (with gold labels)."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({
        "item_id": [f"{batch_id}-i{i}" for i in range(n)],
        "f0": rng.normal(size=n).round(3),
        "f1": rng.normal(size=n).round(3),
        "private_note": ["do not export"] * n,
        "predicted": rng.choice(LABELS, size=n),
        "confidence": rng.uniform(0.4, 0.7, size=n).round(3),
        "model_version": "7",
        "utility": rng.uniform(size=n).round(3),
        "annotators_wanted": wanted if wanted is not None else [1] * n,
        "is_gold": False,
        "gold_label": None,
    })
    if gold:
        extra = pd.DataFrame({
            "item_id": list(gold), "f0": 0.0, "f1": 0.0, "private_note": "gold", "predicted": "cat",
            "confidence": 0.5, "model_version": "7", "utility": 0.0, "annotators_wanted": 1, "is_gold": True,
            "gold_label": list(gold.values()),
        })
        items = pd.concat([items, extra], ignore_index=True)
    exported = items.drop(columns=["is_gold", "gold_label"])
    return ExportBatch(batch_id=batch_id, items=exported, label_set=list(LABELS), feature_columns=list(FEATURES)), items


# A schema with every role, in source order: an id, a number, a category, a text, a number, a second text.
MIXED_SCHEMA = Schema([
    ColumnSpec("ticket_id", "id", "string"),
    ColumnSpec("amount", "numeric", "float64", nullable=True),
    ColumnSpec("country", "categorical", "string", nullable=True, categories=["DE", "FR", "Côte d'Ivoire"]),
    ColumnSpec("body", "text", "string", nullable=True),
    ColumnSpec("x_10", "numeric", "float64"),
    ColumnSpec("subject", "text", "string"),
    ColumnSpec("internal_note", "ignored", "string"),
], list(LABELS))
MIXED_COLUMNS = ["ticket_id", "amount", "country", "body", "x_10", "subject"]


def make_mixed_batch(batch_id: str) -> ExportBatch:
    """Three items with text, categories, ids and missing values (NaN, None) the way the workspace stores them."""
    items = pd.DataFrame({
        "item_id": [f"{batch_id}-i0", f"{batch_id}-i1", f"{batch_id}-i2"],
        "ticket_id": ["T-001", "T-002", "T-003"],
        "amount": [12.5, np.nan, -3.0],
        "country": ["DE", None, "Côte d'Ivoire"],
        "body": ['Line one\nline "two" <b>bold</b> & $5 — ünïcode \u2028 sep', None, "short"],
        "x_10": [1.0, 2.0, 3.0],
        "subject": ["refund", "where is my parcel", "hi"],
        "predicted": ["cat", "dog", None],
        "confidence": [0.55, 0.61, np.nan],
        "model_version": ["12", "12", None],
        "utility": [-0.25, -0.01, -0.5],
        "annotators_wanted": [1, 3, 1],
    })
    return ExportBatch(batch_id, items, list(LABELS), list(MIXED_COLUMNS), MIXED_SCHEMA)
