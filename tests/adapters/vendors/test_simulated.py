"""Simulated annotators: per-annotator error rates, confusion noise, delay over imports, determinism."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from labelloop.adapters.vendors.base import ExportBatch, VendorError
from labelloop.adapters.vendors.simulated import SimulatedVendor, simulate_answer
from labelloop.config import SimulatedVendorParams, parse_params
from labelloop.core.io import write_parquet

from .conftest import LABELS, make_mixed_batch

CLASSES = [f"c{i}" for i in range(6)]


@pytest.fixture
def oracle(tmp_path):
    rng = np.random.default_rng(0)
    truth = pd.DataFrame({"item_id": [f"i{i}" for i in range(3000)], "label": rng.choice(CLASSES, size=3000)})
    path = tmp_path / "oracle.parquet"
    write_parquet(path, truth)
    return path, truth.set_index("item_id")["label"]


def batch(ids, wanted=1):
    items = pd.DataFrame({"item_id": ids, "annotators_wanted": wanted})
    return ExportBatch("b1", items, CLASSES, [])


def error_by_annotator(fetched, truth):
    frame = fetched.annotations.assign(truth=truth.reindex(fetched.annotations["item_id"]).to_numpy())
    return frame.assign(wrong=frame["label"] != frame["truth"]).groupby("annotator_id")["wrong"].mean()


def test_each_annotator_has_its_own_error_rate(tmp_path, oracle):
    path, truth = oracle
    params = SimulatedVendorParams(annotators=3, error_rates=[0.05, 0.2, 0.5], seed=1)
    vendor = SimulatedVendor(tmp_path / "sim", path, params)
    vendor.export_batch(batch(list(truth.index), wanted=3))
    fetched = vendor.fetch_labels("b1")
    assert len(fetched.annotations) == 3 * len(truth)
    rates = error_by_annotator(fetched, truth)
    assert rates["sim-0"] == pytest.approx(0.05, abs=0.02)
    assert rates["sim-1"] == pytest.approx(0.2, abs=0.03)
    assert rates["sim-2"] == pytest.approx(0.5, abs=0.04)
    # Deterministic: a re-fetch returns the same answers.
    pd.testing.assert_frame_equal(fetched.annotations, vendor.fetch_labels("b1").annotations)


def test_confusion_noise_concentrates_mistakes():
    uniform = SimulatedVendorParams(annotators=1, error_rate=0.5, noise="uniform", seed=2)
    confusion = SimulatedVendorParams(annotators=1, error_rate=0.5, noise="confusion", seed=2)

    def top_wrong_share(params):
        wrong = [simulate_answer(params, CLASSES, "b", i, 0, "c0") for i in range(3000)]
        wrong = pd.Series([w for w in wrong if w != "c0"])
        return wrong.value_counts(normalize=True).iloc[0]

    assert top_wrong_share(uniform) < 0.3  # ~1/5 each
    assert top_wrong_share(confusion) > 0.6  # one favourite mistake per class


def test_delay_spreads_answers_over_imports(tmp_path, oracle):
    path, truth = oracle
    params = SimulatedVendorParams(annotators=2, error_rate=0.1, delay_imports=2, seed=3)
    vendor = SimulatedVendor(tmp_path / "sim", path, params)
    vendor.export_batch(batch(list(truth.index[:300]), wanted=2))
    assert vendor.status("b1").n_completed < 300
    sizes = [len(vendor.fetch_labels("b1").annotations) for _ in range(4)]
    assert sizes[0] < sizes[1] < sizes[2] == sizes[3] == 600
    assert vendor.status("b1").done


def test_export_is_idempotent_and_unknown_batch_errors(tmp_path, oracle):
    path, _ = oracle
    vendor = SimulatedVendor(tmp_path / "sim", path, SimulatedVendorParams())
    first = vendor.export_batch(batch(["i1", "i2"]))
    second = vendor.export_batch(batch(["i1", "i2"]))
    assert first.created and not second.created and second.n_items == 2
    with pytest.raises(VendorError, match="never exported"):
        vendor.fetch_labels("nope")
    with pytest.raises(VendorError, match="more than once"):
        vendor.export_batch(ExportBatch("b2", pd.DataFrame({"item_id": ["i1", "i1"]}), CLASSES, []))
    assert json.loads(vendor.fetch_labels("b1").raw_payload.splitlines()[0])["item_id"] == "i1"


def test_params_validate_per_annotator_rates():
    with pytest.raises(Exception, match="one per annotator"):
        parse_params({"export": {"simulated": {"annotators": 3, "error_rates": [0.1, 0.2]}}})
    with pytest.raises(Exception, match="noise"):
        parse_params({"export": {"simulated": {"noise": "gaussian"}}})


def test_any_column_types_are_answered_from_the_oracle_by_item_id(tmp_path):
    batch = make_mixed_batch("b-mixed")  # text, categories, ids, NaN and None: nothing of it is read
    truth = pd.DataFrame({"item_id": batch.items["item_id"], "label": [LABELS[0], LABELS[1], LABELS[2]]})
    write_parquet(tmp_path / "oracle.parquet", truth)
    vendor = SimulatedVendor(tmp_path / "sim", tmp_path / "oracle.parquet", SimulatedVendorParams(annotators=3, error_rate=0.0))
    assert vendor.export_batch(batch).created
    answers = vendor.fetch_labels("b-mixed").annotations
    assert answers.groupby("item_id").size().to_dict() == dict(zip(batch.items["item_id"], [1, 3, 1], strict=True))
    assert (answers["label"] == truth.set_index("item_id")["label"].loc[answers["item_id"]].to_numpy()).all()
