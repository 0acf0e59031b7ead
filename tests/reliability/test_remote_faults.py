"""Outside services down: Label Studio, the file drop, the DVC remote and the MLflow server are
unreachable, answer 5xx or hang. Each stage retries a bounded number of times with backoff, fails with
one clear message naming the service and the fault, leaves durable state as it was, and the next run
picks up where it stopped.

Faults are real sockets: a closed port, or a stdlib HTTP server (`fault_servers.py`) that answers 503,
never answers, or fails a few times before answering. The code under test is the real client stack.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from labelloop.adapters.vendors import VendorError
from labelloop.adapters.vendors.base import VendorUnavailable
from labelloop.adapters.vendors.labelstudio import LabelStudioVendor
from labelloop.batches import BatchMeta, BatchStore
from labelloop.config import ImportParams
from labelloop.core.io import write_json, write_parquet
from labelloop.core.retry import RetryPolicy
from labelloop.stages import importing as labels
from labelloop.stages.export import export_batches
from tests.reliability.fault_servers import closed_port, fault_server

ATTEMPTS = 3
# Small, bounded retries so a fault costs well under a second per attempt here.
FAST = RetryPolicy(attempts=ATTEMPTS, backoff_seconds=0.05, timeout_seconds=1)


def selected_batch(ws, batch_id: str = "batch-0001-faults", n: int = 8, status: str = "selected") -> pd.DataFrame:
    """A batch as the select stage writes it: traffic rows with the model's guess and a score."""
    schema = ws.schema()
    items = pd.read_parquet(ws.simulator_dir / "traffic.parquet").iloc[:n].copy()
    for column in schema.proba_columns:
        items[column] = 1.0 / len(schema.proba_columns)
    items["predicted"], items["confidence"], items["utility"] = schema.class_names[0], 0.3, 0.5
    items["is_gold"], items["annotators_wanted"] = False, 1
    write_parquet(ws.batch_dir(batch_id) / "batch.parquet", items)
    BatchStore(ws).put(BatchMeta(batch_id, batch_id, status, "margin", "topk", 0, {}, n, "now"))
    return items


def one_clear_line(error: BaseException, *needles: str) -> str:
    message = str(error)
    assert "\n" not in message and len(message) < 700, f"not one short line: {message!r}"
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


# ------------------------------------------------------------------------------------ Label Studio
def ls_vendor(ws, url: str) -> LabelStudioVendor:
    return LabelStudioVendor(url, "test-token-not-a-secret", ws.root / "vendor" / "label-studio", retry=FAST)


def ls_export_payload(items: pd.DataFrame, oracle: pd.DataFrame) -> bytes:
    """What Label Studio's JSON export returns once every task has one answer."""
    truth = oracle.set_index("item_id")["label"]
    tasks = [{"id": k, "data": {"item_id": item, "annotators_wanted": 1},
              "annotations": [{"id": 1000 + k, "completed_by": {"email": "ann@example.test"}, "was_cancelled": False,
                               "result": [{"from_name": "label", "to_name": "item", "type": "choices",
                                           "value": {"choices": [str(truth[item])]}}]}]}
             for k, item in enumerate(items["item_id"], start=1)]
    return json.dumps(tasks).encode()


def test_label_studio_unreachable_export_gives_up_after_bounded_retries_and_the_batch_stays_selected(workspace):
    selected_batch(workspace)
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(VendorUnavailable) as caught:
        export_batches(workspace, workspace.params().export, ls_vendor(workspace, url))
    one_clear_line(caught.value, url, "cannot connect", f"gave up after {ATTEMPTS} attempts")
    assert BatchStore(workspace).get("batch-0001-faults").status == "selected"
    assert not (workspace.root / "vendor" / "label-studio").exists()  # nothing remembered of a project


def test_label_studio_answering_503_is_retried_a_bounded_number_of_times(workspace):
    selected_batch(workspace)
    with fault_server("error") as server, pytest.raises(VendorUnavailable) as caught:
        export_batches(workspace, workspace.params().export, ls_vendor(workspace, server.url))
    one_clear_line(caught.value, server.url, "HTTP 503", f"gave up after {ATTEMPTS} attempts")
    # One request per attempt: the SDK's own retries are off, labelloop's are the only layer.
    assert len(server.requests) == ATTEMPTS and all(r.startswith("GET /api/projects") for r in server.requests)
    assert BatchStore(workspace).get("batch-0001-faults").status == "selected"


def test_label_studio_hanging_import_times_out_labels_unchanged_and_a_rerun_imports(workspace):
    items = selected_batch(workspace, status="exported")
    vendor_state = workspace.root / "vendor" / "label-studio"
    write_json(vendor_state / "batch-0001-faults.json", {"batch_id": "batch-0001-faults", "project_id": 7,
               "annotators_wanted": dict.fromkeys(items["item_id"], 1)})
    params = workspace.params().import_
    with fault_server("hang") as server:
        with pytest.raises(VendorUnavailable) as caught:
            labels.import_labels(workspace, params, ls_vendor(workspace, server.url))
        assert len(server.requests) == ATTEMPTS
    one_clear_line(caught.value, server.url, "no answer within 1 s", "downloading the export")
    meta = BatchStore(workspace).get("batch-0001-faults")
    assert (meta.status, meta.n_labelled) == ("exported", 0)
    assert not (workspace.final_labels_dir / "batch-0001-faults.parquet").exists()
    assert not (workspace.raw_labels_dir / "batch-0001-faults").exists()

    # The server comes back after two more 503s: the same stage, rerun, imports every answer.
    payload = ls_export_payload(items, pd.read_parquet(workspace.simulator_dir / "oracle.parquet"))
    with fault_server("flaky", failures=2, body=payload) as server:
        reports = labels.import_labels(workspace, params, ls_vendor(workspace, server.url))
        assert len(server.requests) == 3
    assert [(r.status, r.n_labelled) for r in reports] == [("imported", len(items))]
    final = pd.read_parquet(workspace.final_labels_dir / "batch-0001-faults.parquet")
    assert sorted(final["item_id"]) == sorted(items["item_id"])


def test_label_studio_4xx_fails_at_once_without_retries(workspace):
    selected_batch(workspace)
    with fault_server("error", status=401) as server, pytest.raises(VendorError) as caught:
        export_batches(workspace, workspace.params().export, ls_vendor(workspace, server.url))
    assert not isinstance(caught.value, VendorUnavailable)
    one_clear_line(caught.value, server.url, "HTTP 401")
    assert len(server.requests) == 1  # a bad token does not get better by asking again
    assert BatchStore(workspace).get("batch-0001-faults").status == "selected"


# -------------------------------------------------------------------------------------- DVC remote
def labelled_md5(ws) -> str:
    import yaml

    pointer = yaml.safe_load((ws.registry_dir / "data" / "labeled.parquet.dvc").read_text())
    return pointer["outs"][0]["md5"]


def in_remote(remote_dir, md5: str) -> bool:
    return (remote_dir / "files" / "md5" / md5[:2] / md5[2:]).is_file()


def test_dvc_remote_unreachable_push_fails_clearly_the_version_stays_local_and_the_next_run_pushes(workspace):
    from labelloop.adapters import versioning
    from labelloop.adapters.versioning import RemoteUnavailable
    from labelloop.stages import dataset
    from tests.stages.test_dataset import _fake_imported_batch

    _fake_imported_batch(workspace, "batch-0001-aaaaaa")
    registry, good_remote = workspace.registry_dir, workspace.dvc_remote_dir
    url = f"http://127.0.0.1:{closed_port()}/dvc-remote"
    versioning.set_remote(registry, url)
    with pytest.raises(RemoteUnavailable) as caught:
        dataset.update_dataset(workspace, retry=FAST)
    one_clear_line(caught.value, url, "Cannot connect", f"gave up after {ATTEMPTS} attempts")
    # Consistent, only local: the labelled set is committed and tagged, nothing on the remote, the
    # batch not yet marked as versioned.
    assert versioning.data_tags(registry) == ["data-v1", "data-v2"]
    assert versioning.version_of(registry, workspace.labeled_path) == "data-v2"
    assert BatchStore(workspace).get("batch-0001-aaaaaa").versioned_in is None
    assert not in_remote(good_remote, labelled_md5(workspace))

    versioning.set_remote(registry, str(good_remote))  # the remote is back
    version = dataset.update_dataset(workspace, retry=FAST)
    assert (version.tag, version.created, version.n_new) == ("data-v2", False, 0)  # no second version
    assert in_remote(good_remote, labelled_md5(workspace)), "the rerun did not push the local version"
    assert BatchStore(workspace).get("batch-0001-aaaaaa").versioned_in == "data-v2"
    assert len(pd.read_parquet(workspace.labeled_path)) == 60
    assert dataset.update_dataset(workspace, retry=FAST).created is False  # and a third run has nothing to do


@pytest.mark.parametrize("dvc_console", ["open", "closed"])
def test_dvc_remote_answering_503_fails_after_bounded_retries(workspace, monkeypatch, dvc_console):
    import io
    import logging

    from dvc.logger import LoggerHandler

    from labelloop.adapters import versioning
    from labelloop.adapters.versioning import RemoteUnavailable
    from labelloop.stages import dataset
    from tests.stages.test_dataset import _fake_imported_batch

    if dvc_console == "closed":
        # `import dvc` bound its console handlers to the streams of that moment; a daemon or a swapped
        # stream closes them, and DVC's handler then raises from inside the push (seen in CI).
        gone = io.StringIO()
        gone.close()
        for name in versioning.DVC_LOGGERS:
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, LoggerHandler):
                    monkeypatch.setattr(handler, "stream", gone)
    _fake_imported_batch(workspace, "batch-0001-aaaaaa")
    with fault_server("error") as server:
        versioning.set_remote(workspace.registry_dir, f"{server.url}/dvc-remote")
        with pytest.raises(RemoteUnavailable) as caught:
            dataset.update_dataset(workspace, retry=FAST)
        uploads = [r for r in server.requests if r.startswith("POST")]
    one_clear_line(caught.value, server.url, "503", f"gave up after {ATTEMPTS} attempts")
    assert len(uploads) == ATTEMPTS * 2  # each attempt tries each missing object once (labelled set + card)
    assert BatchStore(workspace).get("batch-0001-aaaaaa").versioned_in is None


def test_dvc_remote_that_cannot_be_a_directory_fails_at_once_and_works_once_fixed(workspace, tmp_path):
    from labelloop.adapters import versioning
    from labelloop.adapters.versioning import RemoteUnavailable, VersioningError
    from labelloop.stages import dataset
    from tests.stages.test_dataset import _fake_imported_batch

    _fake_imported_batch(workspace, "batch-0001-aaaaaa")
    blocker = tmp_path / "mnt"
    blocker.write_text("a file where the remote's parent directory should be")
    remote = blocker / "dvc-remote"
    versioning.set_remote(workspace.registry_dir, str(remote))
    with pytest.raises(VersioningError) as caught:
        dataset.update_dataset(workspace, retry=FAST)
    assert not isinstance(caught.value, RemoteUnavailable)  # a local path error is not retried
    one_clear_line(caught.value, str(remote), "Not a directory")
    blocker.unlink()  # the operator fixes the mount; same remote URL
    assert dataset.update_dataset(workspace, retry=FAST).tag == "data-v2"
    assert in_remote(remote, labelled_md5(workspace))


# ---------------------------------------------------------------------------------- MLflow server
def test_mlflow_http_retries_are_bounded_by_default_and_a_user_value_is_kept():
    from labelloop.adapters.tracking import MLFLOW_HTTP_BOUNDS, bound_mlflow_http

    environ = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    applied = bound_mlflow_http(environ)
    assert environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"  # the user's value wins
    assert applied == {k: v for k, v in MLFLOW_HTTP_BOUNDS.items() if k != "MLFLOW_HTTP_REQUEST_TIMEOUT"}
    assert int(environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) < 7  # MLflow's own default: ~4 minutes per dead call


@pytest.fixture
def quick_mlflow_retries(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")


def dataset_fingerprint(ws) -> tuple:
    from labelloop.adapters import versioning

    return (versioning.data_tags(ws.registry_dir), versioning.head_sha(ws.registry_dir), ws.labeled_path.read_bytes())


def test_mlflow_server_unreachable_train_fails_clearly_and_leaves_the_dataset_untouched(workspace, monkeypatch,
                                                                                       quick_mlflow_retries):
    from labelloop.adapters import tracking
    from labelloop.stages import train

    before = dataset_fingerprint(workspace)
    uri = f"http://127.0.0.1:{closed_port()}"
    params = workspace.params().train
    with pytest.raises(tracking.TrackingUnavailable) as caught:
        train.train_challenger(replace(workspace, tracking_server=uri), params)
    one_clear_line(caught.value, uri, "training a challenger failed: connection refused", "retried each request 2 times")
    assert dataset_fingerprint(workspace) == before
    assert not any(p.is_file() for p in workspace.artifacts_dir.rglob("*"))  # no model written anywhere
    # Failing before anything was registered, the rerun is an ordinary train (tests/test_tracking.py); one
    # that failed after registering reuses the version (crash matrix, train.after_register).


def test_mlflow_server_answering_503_fails_after_mlflows_bounded_retries_and_moves_no_alias(workspace, monkeypatch,
                                                                                          quick_mlflow_retries):
    from labelloop.adapters import tracking
    from labelloop.stages import gate, train

    before = dataset_fingerprint(workspace)
    params = workspace.params().train
    with fault_server("error") as server:
        on_server = replace(workspace, tracking_server=server.url)
        with pytest.raises(tracking.TrackingUnavailable) as caught:
            train.train_challenger(on_server, params)
        assert len(server.requests) == 3  # 1 + MLFLOW_HTTP_REQUEST_MAX_RETRIES, then one clear error
        one_clear_line(caught.value, server.url, "HTTP 503")
        with pytest.raises(tracking.TrackingUnavailable, match="HTTP 503"):
            gate.promote(on_server, params.model_name, "1", "gate passed")
        assert not [r for r in server.requests if "/registered-models/alias" in r and r.startswith(("POST", "PATCH"))]
    assert dataset_fingerprint(workspace) == before


# --------------------------------------------------------------------------------------- file drop
def oracle_answers(ws, items: pd.DataFrame) -> bytes:
    truth = pd.read_parquet(ws.simulator_dir / "oracle.parquet").set_index("item_id")["label"]
    return "".join(json.dumps({"item_id": i, "annotator_id": "ann-1", "label": str(truth[i])}) + "\n"
                   for i in items["item_id"]).encode()


def test_file_drop_unwritable_then_unmounted_fails_clearly_state_unchanged_and_reruns_proceed(workspace, tmp_path):
    from labelloop.adapters.vendors.filedrop import FileDropVendor

    items = selected_batch(workspace)
    blocker = tmp_path / "mnt"
    blocker.write_text("a file where the drop's parent directory should be")
    url = str(blocker / "drop")
    export, store = workspace.params().export, BatchStore(workspace)
    with pytest.raises(VendorError) as caught:
        export_batches(workspace, export, FileDropVendor(url, retry=FAST))
    assert not isinstance(caught.value, VendorUnavailable)  # a path error is not retried
    one_clear_line(caught.value, url, "Not a directory")
    assert store.get("batch-0001-faults").status == "selected"
    blocker.unlink()  # fixed: the same stage, rerun, exports
    assert export_batches(workspace, export, FileDropVendor(url, retry=FAST)) == ["batch-0001-faults"]
    assert store.get("batch-0001-faults").status == "exported"

    drop = blocker / "drop"
    (drop / "batch-0001-faults" / "labels.jsonl").write_bytes(oracle_answers(workspace, items))
    drop.rename(tmp_path / "unmounted")  # the share goes away between export and import
    with pytest.raises(VendorError) as caught:
        labels.import_labels(workspace, workspace.params().import_, FileDropVendor(url, retry=FAST))
    one_clear_line(caught.value, url, "does not exist", "not mounted")
    assert (store.get("batch-0001-faults").status, store.get("batch-0001-faults").n_labelled) == ("exported", 0)
    (tmp_path / "unmounted").rename(drop)  # back
    reports = labels.import_labels(workspace, workspace.params().import_, FileDropVendor(url, retry=FAST))
    assert [(r.status, r.n_labelled) for r in reports] == [("imported", len(items))]


# ------------------------------------------------------------------------------- hostile payloads
def drop_with_batch(tmp_path, **vendor_args):
    from labelloop.adapters.vendors.filedrop import FileDropVendor
    from tests.adapters.vendors.conftest import make_batch

    vendor = FileDropVendor(str(tmp_path / "drop"), retry=FAST, **vendor_args)
    batch, items = make_batch("b1")
    vendor.export_batch(batch)
    return vendor, items, tmp_path / "drop" / "b1"


def import_outcome(vendor, items, state_dir):
    from labelloop.stages.importing import process_import
    from tests.adapters.vendors.conftest import LABELS

    fetched = vendor.fetch_labels("b1")
    return fetched, process_import(fetched.annotations, items, LABELS, batch_id="b1", params=ImportParams(), state_dir=state_dir)


def test_file_drop_wrong_encodings_one_clear_error_or_the_bad_line_quarantined(tmp_path):
    vendor, items, folder = drop_with_batch(tmp_path)
    ids = items["item_id"].tolist()
    good = [json.dumps({"item_id": i, "annotator_id": "ann", "label": "cat"}) for i in ids[:3]]
    latin1 = json.dumps({"item_id": ids[3], "annotator_id": "José", "label": "dog"}, ensure_ascii=False).encode("latin-1")
    (folder / "labels.jsonl").write_bytes("\n".join(good[:2]).encode() + b"\n" + latin1 + b"\n" + good[2].encode() + b"\n")
    _, outcome = import_outcome(vendor, items, tmp_path / "qc")
    assert sorted(outcome.labels["item_id"]) == sorted(ids[:3])  # every valid line kept
    reasons = outcome.quarantined["reason"].tolist()
    assert len(reasons) == 1 and "line 3: not UTF-8 text (byte 0xe9" in reasons[0]

    (folder / "labels.jsonl").write_bytes("\ufeff".encode() + "\n".join(good).encode() + b"\n")  # UTF-8 with a BOM
    assert vendor.fetch_labels("b1").annotations["parse_error"].isna().all()
    (folder / "labels.jsonl").write_bytes("\n".join(good).encode("utf-16"))
    with pytest.raises(VendorError, match="is UTF-16 .byte-order mark.; save it as UTF-8"):
        vendor.fetch_labels("b1")
    (folder / "labels.jsonl").write_bytes("\n".join(good).encode("utf-16-le"))  # no BOM: NUL bytes give it away
    with pytest.raises(VendorError, match="NUL bytes"):
        vendor.fetch_labels("b1")
    (folder / "labels.jsonl").unlink()
    csv_text = "item_id,annotator_id,label\n" + f"{ids[0]},ann,cat\n{ids[1]},José,dog\n"
    (folder / "labels.csv").write_bytes(csv_text.encode("latin-1"))
    with pytest.raises(VendorError) as caught:
        vendor.fetch_labels("b1")
    one_clear_line(caught.value, "labels.csv of batch b1 is not UTF-8 text (byte 0xe9 on line 3", "nothing was imported")


def test_file_drop_oversized_file_refused_unread_and_a_giant_line_quarantined(tmp_path):
    vendor, items, folder = drop_with_batch(tmp_path, max_labels_bytes=4000)
    ids = items["item_id"].tolist()
    lines = [json.dumps({"item_id": i, "annotator_id": f"ann-{k}", "label": "cat"}) for i in ids for k in range(40)]
    (folder / "labels.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(VendorError) as caught:
        vendor.fetch_labels("b1")
    one_clear_line(caught.value, "labels.jsonl", "above the 4,000-byte limit", "nothing was imported")
    assert not (folder / "archive").exists()  # refused before being read or archived

    vendor, items, folder = drop_with_batch(tmp_path / "big")  # default limits
    giant = json.dumps({"item_id": ids[0], "annotator_id": "ann", "label": "x" * 2_000_000})
    good = [json.dumps({"item_id": i, "annotator_id": "ann", "label": "dog"}) for i in ids[1:]]
    (folder / "labels.jsonl").write_text("\n".join([giant, *good]) + "\n")
    _, outcome = import_outcome(vendor, items, tmp_path / "qc")
    assert sorted(outcome.labels["item_id"]) == sorted(ids[1:])
    [reason] = outcome.quarantined["reason"].tolist()
    assert "line 1: 2,000,0" in reason and "above the 65,536-byte limit" in reason and len(reason) < 400

    (folder / "labels.jsonl").unlink()
    big_field = "y" * 300_000  # beyond the csv module's field limit
    (folder / "labels.csv").write_text(f"item_id,annotator_id,label\n{ids[0]},ann,{big_field}\n"
                                       + "".join(f"{i},ann,dog\n" for i in ids[1:]))
    _, outcome = import_outcome(vendor, items, tmp_path / "qc-csv")
    assert sorted(outcome.labels["item_id"]) == sorted(ids[1:])
    assert outcome.quarantined["reason"].str.contains("field larger than field limit").tolist() == [True]


def test_label_studio_export_with_garbage_inside_quarantines_each_piece_and_keeps_the_valid_answer(tmp_path):
    from labelloop.stages.importing import process_import
    from tests.adapters.vendors.conftest import LABELS, make_batch

    vendor = LabelStudioVendor(f"http://127.0.0.1:{closed_port()}", "t", tmp_path / "ls")  # never contacted
    _, items = make_batch("b1", n=3)
    ids = items["item_id"].tolist()

    def choice(label):
        return [{"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": [label]}}]

    payload = [
        1, "task", None, [],  # not tasks at all
        {"id": "x", "data": [], "annotations": "zzz"},  # wrong types everywhere
        {"id": 2, "data": {"item_id": {"nested": 1}}, "annotations": []},
        {"id": 3, "data": {"item_id": ids[0], "annotators_wanted": 1}, "annotations": [
            7, {"id": 31, "completed_by": [1, 2], "result": choice("cat")},
            {"id": 32, "completed_by": {"email": "a@x"}, "result": "cat"},
            {"id": 33, "completed_by": {"email": "b@x"}, "result": [{"from_name": "label", "type": "choices", "value": "cat"}]},
            {"id": 34, "completed_by": {"email": "c@x"}, "result": choice({"html": "<b>cat</b>"})},
        ]},
        {"id": 4, "data": {"item_id": ids[1], "annotators_wanted": 1},
         "annotations": [{"id": 41, "completed_by": {"email": "a@x"}, "result": choice("dog")}]},
    ]
    for garbage in (b"\xff\xfe not json", b'{"tasks": []}', b"[1, 2"):
        with pytest.raises(VendorError, match="not JSON|not a list of tasks"):
            vendor.parse_export(garbage, {})
    fetched, n_tasks, _ = vendor.parse_export(json.dumps(payload).encode(), {})
    assert n_tasks == len(payload)
    outcome = process_import(fetched, items, LABELS, batch_id="b1", params=ImportParams(), state_dir=tmp_path / "qc")
    assert outcome.labels[["item_id", "label"]].values.tolist() == [[ids[1], "dog"]]  # the one valid answer, kept
    assert len(outcome.quarantined) == len(fetched) - 1 >= 10  # every broken piece, each with a reason
    assert outcome.quarantined["reason"].str.len().gt(0).all()
