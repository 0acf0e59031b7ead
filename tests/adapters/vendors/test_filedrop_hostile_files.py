"""The file drop reads only regular files it owns: links, FIFOs, devices and hard links are refused
unread, nothing is written through a link, and a refused batch never stops the other batches.

Reads that a regression would turn into a hang (FIFO) or a runaway allocation (/dev/zero) run in a
child process with a memory cap and a timeout, so such a regression fails the test instead of the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pandas as pd
import pytest

from labelloop.adapters.vendors.base import VendorError, VendorRefused
from labelloop.adapters.vendors.filedrop import FileDropVendor
from labelloop.batches import BatchMeta, BatchStore
from labelloop.core.io import write_parquet
from labelloop.stages import importing as labels
from labelloop.stages.export import export_batches

from .conftest import make_batch

ROOT = Path(__file__).resolve().parents[3]
MARKER = "SECRET-MARKER-7f3a9c"
CHILD_TIMEOUT_SECONDS = 180  # a hang guard only: a refused FIFO returns at once
CHILD_MEMORY_BYTES = 3 * 2**30

FETCH_IN_CHILD = """
import json, sys
from labelloop.adapters.vendors.base import VendorError
from labelloop.adapters.vendors.filedrop import FileDropVendor
vendor = FileDropVendor(sys.argv[1])
results = {}
for batch_id in sys.argv[2:]:
    try:
        results[batch_id] = {"outcome": "read", "n_bytes": len(vendor.fetch_labels(batch_id).raw_payload)}
    except VendorError as error:
        results[batch_id] = {"outcome": type(error).__name__, "message": str(error)}
print(json.dumps(results))
"""


def fetch_in_child(drop: Path, *batch_ids: str) -> dict:
    """fetch_labels of each batch in a child capped in memory and time; its outcome per batch."""

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", FETCH_IN_CHILD, str(drop), *batch_ids], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_SECONDS, preexec_fn=cap_memory, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, f"the fetch died (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(done.stdout)


def exported_drop(tmp_path, *batch_ids: str) -> tuple[FileDropVendor, Path, dict[str, list[str]]]:
    drop = tmp_path / "drop"
    vendor = FileDropVendor(str(drop))
    ids = {}
    for batch_id in batch_ids:
        batch, items = make_batch(batch_id)
        vendor.export_batch(batch)
        ids[batch_id] = items["item_id"].tolist()
    return vendor, drop, ids


def answers(item_ids, annotator="ann", label="cat") -> bytes:
    return "".join(json.dumps({"item_id": i, "annotator_id": annotator, "label": label}) + "\n" for i in item_ids).encode()


def files_holding(marker: str, *roots: Path) -> list[Path]:
    """Regular files under the roots (links not followed) whose bytes contain the marker."""
    hits = []
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder) / name
                if path.is_file() and not path.is_symlink() and marker.encode() in path.read_bytes():
                    hits.append(path)
    return hits


# ------------------------------------------------------------------------------- vendor: the drop alone
def test_symlink_to_dev_zero_and_a_fifo_are_refused_at_once_and_bounded(tmp_path):
    vendor, drop, ids = exported_drop(tmp_path, "zero", "pipe", "zero-manifest", "good")
    (drop / "zero" / "labels.jsonl").symlink_to("/dev/zero")
    os.mkfifo(drop / "pipe" / "labels.jsonl")  # no writer ever opens it: a blocking open would wait forever
    (drop / "zero-manifest" / "labels.jsonl").write_bytes(answers(ids["zero-manifest"]))
    (drop / "zero-manifest" / "labels.manifest.json").symlink_to("/dev/zero")
    (drop / "good" / "labels.jsonl").write_bytes(answers(ids["good"]))

    results = fetch_in_child(drop, "zero", "pipe", "zero-manifest", "good")

    assert results["good"] == {"outcome": "read", "n_bytes": len(answers(ids["good"]))}
    for batch_id, words in (("zero", "labels.jsonl is a symbolic link"), ("pipe", "labels.jsonl is a FIFO"),
                            ("zero-manifest", "labels.manifest.json is a symbolic link")):
        assert results[batch_id]["outcome"] == "VendorRefused", results[batch_id]
        message = results[batch_id]["message"]
        assert words in message and f"nothing of batch {batch_id} was imported" in message
    assert not (drop / "zero" / "archive").exists() and not (drop / "pipe" / "archive").exists()
    # The vendor replaces the FIFO with a regular file: the rerun reads it.
    (drop / "pipe" / "labels.jsonl").unlink()
    (drop / "pipe" / "labels.jsonl").write_bytes(answers(ids["pipe"]))
    assert len(vendor.fetch_labels("pipe").annotations) == len(ids["pipe"])


def test_fifo_read_in_a_thread_returns_instead_of_blocking(tmp_path):
    # The same promise in-process (the lock-holding import must never wait on a vendor's pipe).
    vendor, drop, _ = exported_drop(tmp_path, "b1")
    os.mkfifo(drop / "b1" / "labels.jsonl")
    outcome: list[BaseException | object] = []
    reader = threading.Thread(target=lambda: outcome.append(_fetch_or_error(vendor, "b1")), daemon=True)
    reader.start()
    reader.join(60)  # a hang guard only
    if reader.is_alive():  # unblock the stuck reader so the test process can end, then fail
        with open(drop / "b1" / "labels.jsonl", "wb"):
            pass
        pytest.fail("fetch_labels blocked on a FIFO")
    assert isinstance(outcome[0], VendorRefused) and "FIFO" in str(outcome[0])


def _fetch_or_error(vendor, batch_id):
    try:
        return vendor.fetch_labels(batch_id)
    except VendorError as error:
        return error


def test_hard_link_to_a_file_outside_the_drop_is_refused(tmp_path):
    vendor, drop, ids = exported_drop(tmp_path, "b1")
    outside = tmp_path / "private" / "answers.jsonl"
    outside.parent.mkdir()
    outside.write_bytes(answers(ids["b1"], annotator=MARKER))
    os.link(outside, drop / "b1" / "labels.jsonl")
    with pytest.raises(VendorRefused, match="has 2 hard links"):
        vendor.fetch_labels("b1")
    assert files_holding(MARKER, drop) == [drop / "b1" / "labels.jsonl"]  # the link itself, nothing copied
    (drop / "b1" / "labels.jsonl").unlink()
    (drop / "b1" / "labels.jsonl").write_bytes(answers(ids["b1"]))
    assert len(vendor.fetch_labels("b1").annotations) == len(ids["b1"])


def test_archive_or_batch_folder_as_a_link_to_elsewhere_gets_nothing_written_through_it(tmp_path):
    vendor, drop, ids = exported_drop(tmp_path, "b1", "b2")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (drop / "b1" / "labels.jsonl").write_bytes(answers(ids["b1"]))
    (drop / "b1" / "archive").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(VendorRefused, match="b1/archive is a symbolic link, not a directory"):
        vendor.fetch_labels("b1")
    assert list(elsewhere.iterdir()) == []
    # A batch folder swapped for a link to a copy elsewhere is not read through either.
    (drop / "b2").rename(elsewhere / "b2")
    (drop / "b2").symlink_to(elsewhere / "b2", target_is_directory=True)
    (elsewhere / "b2" / "labels.jsonl").write_bytes(answers(ids["b2"]))
    with pytest.raises(VendorRefused, match="b2 is a symbolic link"):
        vendor.fetch_labels("b2")
    assert not (elsewhere / "b2" / "archive").exists()
    # A link planted at the archive's own (predictable) file name is replaced, its target untouched.
    (drop / "b1" / "archive").unlink()
    (drop / "b1" / "archive").mkdir()
    raw = answers(ids["b1"])
    planted = drop / "b1" / "archive" / f"labels-{hashlib.sha256(raw).hexdigest()[:16]}.jsonl"
    target = elsewhere / "victim.txt"
    target.write_text("untouched")
    planted.symlink_to(target)
    assert len(vendor.fetch_labels("b1").annotations) == len(ids["b1"])
    assert target.read_text() == "untouched" and not planted.is_symlink() and planted.read_bytes() == raw


def test_dangling_link_is_refused_not_taken_for_no_labels_yet(tmp_path):
    vendor, drop, _ = exported_drop(tmp_path, "b1")
    (drop / "b1" / "labels.jsonl").symlink_to(tmp_path / "does-not-exist")
    with pytest.raises(VendorRefused, match="symbolic link"):
        vendor.fetch_labels("b1")


def test_object_store_drop_reads_bounded_and_archives(tmp_path):
    url = f"memory://drop-{uuid.uuid4().hex}"
    vendor = FileDropVendor(url, max_labels_bytes=2_000)
    batch, items = make_batch("b1")
    vendor.export_batch(batch)
    ids = items["item_id"].tolist()
    raw = answers(ids)
    vendor.fs.pipe_file(f"{vendor.root}/b1/labels.jsonl", raw)
    assert vendor.fetch_labels("b1").raw_payload == raw
    assert vendor.fs.cat_file(vendor.fs.ls(f"{vendor.root}/b1/archive")[0]["name"]) == raw
    vendor.fs.pipe_file(f"{vendor.root}/b1/labels.jsonl", raw * 40)
    with pytest.raises(VendorRefused, match="above the 2,000-byte limit"):
        vendor.fetch_labels("b1")


# ------------------------------------------------------------------ the import: other batches go on
def _selected(ws, batch_id: str, start: int, n: int) -> pd.DataFrame:
    schema = ws.schema()
    items = pd.read_parquet(ws.simulator_dir / "traffic.parquet").iloc[start:start + n].copy()
    for column in schema.proba_columns:
        items[column] = 1.0 / len(schema.proba_columns)
    items["predicted"], items["confidence"], items["utility"] = schema.class_names[0], 0.3, 0.5
    items["is_gold"], items["annotators_wanted"] = False, 1
    write_parquet(ws.batch_dir(batch_id) / "batch.parquet", items)
    BatchStore(ws).put(BatchMeta(batch_id, batch_id, "selected", "margin", "topk", 0, {}, n, "now"))
    return items


def _oracle_answers(ws, items: pd.DataFrame, annotator: str = "ann-1") -> bytes:
    truth = pd.read_parquet(ws.simulator_dir / "oracle.parquet").set_index("item_id")["label"]
    return "".join(json.dumps({"item_id": i, "annotator_id": annotator, "label": str(truth[i])}) + "\n"
                   for i in items["item_id"]).encode()


def test_labels_file_linked_to_a_secret_is_refused_the_secret_lands_nowhere_and_other_batches_import(workspace, tmp_path):
    hostile, good = _selected(workspace, "batch-0001-link", 0, 6), _selected(workspace, "batch-0002-good", 6, 6)
    drop = tmp_path / "drop"
    vendor = FileDropVendor(str(drop))
    export_batches(workspace, workspace.params().export, vendor)
    secret = tmp_path / "home" / "credentials.jsonl"  # outside the drop and the workspace
    secret.parent.mkdir()
    secret.write_bytes(_oracle_answers(workspace, hostile, annotator=MARKER) + f"password={MARKER}\n".encode())
    (drop / "batch-0001-link" / "labels.jsonl").symlink_to(secret)
    (drop / "batch-0002-good" / "labels.jsonl").write_bytes(_oracle_answers(workspace, good))

    reports = {r.batch_id: r for r in labels.import_labels(workspace, workspace.params().import_, vendor)}

    assert files_holding(MARKER, workspace.root, drop) == []  # not in the archive, labels/raw, quarantine, logs
    refused = reports["batch-0001-link"]
    assert (refused.status, refused.n_labelled, refused.n_quarantined) == ("refused", 0, 1)
    assert "labels.jsonl is a symbolic link" in refused.refused and MARKER not in refused.refused
    [quarantine] = workspace.quarantine_dir.glob("labels-batch-0001-link-*.jsonl")
    assert "symbolic link" in json.loads(quarantine.read_text())["reason"]
    assert (reports["batch-0002-good"].status, reports["batch-0002-good"].n_labelled) == ("imported", 6)
    store = BatchStore(workspace)
    assert (store.get("batch-0001-link").status, store.get("batch-0001-link").n_labelled) == ("exported", 0)

    # The vendor uploads a real file: the next import reads it (the refusal marked nothing as read).
    (drop / "batch-0001-link" / "labels.jsonl").unlink()
    (drop / "batch-0001-link" / "labels.jsonl").write_bytes(_oracle_answers(workspace, hostile))
    [report] = labels.import_labels(workspace, workspace.params().import_, vendor)
    assert (report.batch_id, report.status, report.n_labelled) == ("batch-0001-link", "imported", 6)
    assert files_holding(MARKER, workspace.root, drop) == []
