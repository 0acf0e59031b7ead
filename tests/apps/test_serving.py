"""Serving: real workspace, real MLflow registry, real XGBoost champion; TestClient and a real uvicorn server."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.adapters import tracking, versioning
from labelloop.apps.serving import InvalidRequest, NoChampion, PredictionService, create_app, predict_log_in_process
from labelloop.config import CaptureParams, TrainParams
from labelloop.stages import gate, train
from labelloop.stages.capture import capture
from labelloop.stages.production import list_log_parts, predictions_frame
from tests.conftest import clone_workspace

NAME = TrainParams().model_name
V1 = TrainParams(n_estimators=20, max_depth=3)
V2 = TrainParams(n_estimators=25, max_depth=3)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served_template(workspace_template, tmp_path_factory):
    """A workspace with two registered versions; champion = the second, previous-champion = the first."""
    ws = clone_workspace(workspace_template, tmp_path_factory.mktemp("served") / "ws")
    # These tests serve the model they train (NAME); the workspace's own name is labelloop-<id> since
    # init names models per workspace, so point the workspace at NAME (the server process reads it).
    ws.params_path.write_text(ws.params_path.read_text().replace(ws.params().train.model_name, NAME))
    versioning.git(ws.registry_dir, "commit", "-qam", "serve the model these tests train")
    first = train.train_challenger(ws, V1)
    gate.promote(ws, NAME, first.version)
    second = train.train_challenger(ws, V2)
    gate.promote(ws, NAME, second.version)
    assert (first.version, second.version) == ("1", "2")
    return ws


@pytest.fixture
def served(served_template, tmp_path):
    return clone_workspace(served_template, tmp_path / "ws")


def traffic_rows(ws, n, offset=0):
    frame = pd.read_parquet(ws.simulator_dir / "traffic.parquet").iloc[offset:offset + n]
    return frame[ws.schema().feature_columns].to_dict(orient="records")


def read_log(ws) -> pd.DataFrame:
    parts = list_log_parts(ws)
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame(columns=["prediction_id"])


def _roundtrip(frame, directory):
    path = directory / "reference.parquet"  # outside date=*/: not a log part
    frame.to_parquet(path, index=False)
    return path


def client_for(ws, **kwargs):
    from fastapi.testclient import TestClient

    return TestClient(create_app(ws, NAME, **kwargs))


# -- scoring -----------------------------------------------------------------------------------

def test_predict_returns_labels_probabilities_and_the_champion_version(served):
    schema = served.schema()
    rows = traffic_rows(served, 25)
    rows[3]["prediction_id"] = "client-chosen-id-3"
    with client_for(served) as client:
        response = client.post("/predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    predictions = body["predictions"]
    assert body["model_version"] == "2" and len(predictions) == 25
    for prediction in predictions:
        probabilities = prediction["probabilities"]
        assert list(probabilities) == schema.class_names
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert all(0.0 <= p <= 1.0 for p in probabilities.values())
        assert prediction["label"] == max(probabilities, key=probabilities.get)
        assert prediction["confidence"] == pytest.approx(max(probabilities.values()))
        assert prediction["model_version"] == "2"
    ids = [p["prediction_id"] for p in predictions]
    assert ids[3] == "client-chosen-id-3"
    generated = ids[:3] + ids[4:]
    assert len(set(generated)) == 24 and all(len(i) == 32 and int(i, 16) >= 0 for i in generated)
    # The same rows scored directly by the registered model give the same probabilities.
    model = tracking.load_model(served, NAME, "2")
    expected = model.predict_proba(pd.DataFrame(traffic_rows(served, 25))[schema.feature_columns])
    got = np.array([[p["probabilities"][c] for c in schema.class_names] for p in predictions])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_health_and_schema_describe_what_is_served(served):
    with client_for(served, flush_rows=10_000, flush_seconds=3600) as client:
        client.post("/predict", json={"rows": traffic_rows(served, 4)})
        health = client.get("/health").json()
        schema = client.get("/schema").json()
    assert health["status"] == "ok" and health["model_version"] == "2" and health["buffered_rows"] == 4
    assert schema["feature_columns"] == served.schema().feature_columns
    assert schema["class_names"] == served.schema().class_names
    assert set(schema["request_example"]["rows"][0]) == set(served.schema().feature_columns)


# -- validation --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def validation_client(served_template, tmp_path_factory):
    ws = clone_workspace(served_template, tmp_path_factory.mktemp("validation") / "ws")
    with client_for(ws, max_rows_per_request=50, flush_rows=10_000, flush_seconds=3600) as client:
        yield ws, client


def _one_row(ws):
    return traffic_rows(ws, 1)[0]


def _without(row, key):
    return {k: v for k, v in row.items() if k != key}


BAD_BODIES = {
    # name: (body builder, field the error must name)
    "missing feature": (lambda r: {"rows": [r, _without(r, "x_7")]}, "x_7", 1),
    "string value": (lambda r: {"rows": [dict(r, x_2="12.5")]}, "x_2", 0),
    "boolean value": (lambda r: {"rows": [dict(r, x_3=True)]}, "x_3", 0),
    "null value": (lambda r: {"rows": [dict(r, x_4=None)]}, "x_4", 0),
    "list value": (lambda r: {"rows": [dict(r, x_5=[1.0])]}, "x_5", 0),
    "unknown field": (lambda r: {"rows": [dict(r, x_99=1.0)]}, "x_99", 0),
    "empty rows": (lambda r: {"rows": []}, "rows", None),
    "no rows key": (lambda r: {"instances": [r]}, "rows", None),
    "row not an object": (lambda r: {"rows": [r, [1, 2, 3]]}, "rows", 1),
    "too many rows": (lambda r: {"rows": [r] * 51}, "rows", None),
    "empty prediction id": (lambda r: {"rows": [dict(r, prediction_id="")]}, "prediction_id", 0),
    "numeric prediction id": (lambda r: {"rows": [dict(r, prediction_id=7)]}, "prediction_id", 0),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_requests_are_422_naming_the_field_and_log_nothing(validation_client, case):
    ws, client = validation_client
    build, field, row = BAD_BODIES[case]
    before = client.get("/health").json()["buffered_rows"]
    response = client.post("/predict", json=build(_one_row(ws)))
    assert response.status_code == 422, response.text
    body = response.json()
    assert any(d["field"] == field and d["row"] == row for d in body["detail"]), body
    assert field in body["error"]
    assert client.get("/health").json()["buffered_rows"] == before


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_rejected(validation_client, literal):
    ws, client = validation_client
    row = json.dumps(_without(_one_row(ws), "x_1"))[:-1] + f', "x_1": {literal}}}'
    response = client.post("/predict", content=f'{{"rows": [{row}]}}', headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["field"] == "x_1" and detail[0]["type"] == "finite_number"


def test_malformed_json_is_422(validation_client):
    _, client = validation_client
    response = client.post("/predict", content=b'{"rows": [', headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"


def test_in_process_validation_names_the_bad_columns(served):
    frame = pd.DataFrame(traffic_rows(served, 3))
    with pytest.raises(InvalidRequest, match="x_3: missing feature column") as error:
        predict_log_in_process(served, NAME, frame.drop(columns=["x_3"]))
    assert error.value.errors[0]["loc"] == ["rows", "x_3"]
    bad = frame.astype({"x_4": object})
    bad.loc[1, "x_4"] = "abc"
    bad.loc[2, "x_5"] = np.inf
    with pytest.raises(InvalidRequest) as error:
        predict_log_in_process(served, NAME, bad)
    assert [(e["loc"], e["type"]) for e in error.value.errors] == [(["rows", 1, "x_4"], "float_type"),
                                                                   (["rows", 2, "x_5"], "finite_number")]
    with pytest.raises(InvalidRequest, match="no rows"):
        predict_log_in_process(served, NAME, frame.iloc[:0])
    assert list_log_parts(served) == []


# -- the log -----------------------------------------------------------------------------------

def test_every_prediction_is_in_the_log_after_shutdown_and_capture_reads_it(served):
    sent_ids: list[str] = []
    with client_for(served, flush_rows=7, flush_seconds=3600) as client:
        for i in range(11):  # 26 rows: flushes once 7+ rows are buffered, what is left waits for shutdown
            rows = traffic_rows(served, 1 + i % 4, offset=i * 4)
            if i % 3 == 0:
                rows[0]["prediction_id"] = f"client-{i}"
            response = client.post("/predict", json={"rows": rows})
            assert response.status_code == 200, response.text
            sent_ids += [p["prediction_id"] for p in response.json()["predictions"]]
        # The count-triggered flushes (a background thread) write at least 20 rows before shutdown. A flush
        # writes all that is buffered when the thread runs, so on a loaded machine it may take the last rows too.
        deadline = time.monotonic() + 30
        while True:
            logged, buffered = len(read_log(served)), client.get("/health").json()["buffered_rows"]
            if (logged >= 20 and logged + buffered == 26) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert logged >= 20 and logged + buffered == 26 and buffered < 7
        parts_before_shutdown = len(list_log_parts(served))
        assert parts_before_shutdown >= 2
    log = read_log(served)
    assert len(log) == len(sent_ids) == 26
    assert sorted(log["prediction_id"]) == sorted(sent_ids)
    assert parts_before_shutdown <= len(list_log_parts(served)) <= parts_before_shutdown + 1  # shutdown wrote what was left
    assert set(log["model_version"]) == {"2"}
    schema = served.schema()
    assert {"ts", "predicted", "confidence", "item_id", *schema.feature_columns, *schema.proba_columns} <= set(log.columns)

    # Parts built from many requests have the same column types as the canonical predictions_frame.
    n_classes = len(schema.class_names)
    uniform = np.full((1, n_classes), 1 / n_classes)
    reference = predictions_frame(pd.DataFrame(traffic_rows(served, 1)), uniform, schema, "2", ["x"])
    for part in list_log_parts(served):
        expected = pd.read_parquet(_roundtrip(reference, part.parent.parent)).dtypes.to_dict()
        assert pd.read_parquet(part).dtypes.to_dict() == expected

    report = capture(served, CaptureParams(confidence_threshold=1.0))
    assert (report.parts_read, report.rows_read, report.rows_quarantined) == (3, 26, 0)


def test_buffer_is_flushed_on_time_without_shutdown(served):
    with client_for(served, flush_rows=10_000, flush_seconds=0.2) as client:
        ids = [p["prediction_id"] for p in client.post("/predict", json={"rows": traffic_rows(served, 3)}).json()["predictions"]]
        deadline = time.monotonic() + 30
        while client.get("/health").json()["buffered_rows"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(read_log(served)["prediction_id"]) == sorted(ids)


def test_a_failed_log_write_keeps_the_rows_and_the_next_flush_writes_them(served, monkeypatch):
    import labelloop.apps.serving as serving

    real = serving.append_predictions
    calls = {"n": 0}

    def flaky(workspace, frame, part_name=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full")
        return real(workspace, frame, part_name)

    monkeypatch.setattr(serving, "append_predictions", flaky)
    service = PredictionService(served, NAME, flush_rows=10_000, mode="buffered")  # durable mode: test_serving_durable.py
    scored = service.predict(pd.DataFrame(traffic_rows(served, 5)))
    with pytest.raises(OSError, match="disk full"):
        service.flush()
    assert service.buffered_rows == 5 and "disk full" in service.last_error
    service.predict(pd.DataFrame(traffic_rows(served, 2, offset=5)))
    assert service.close() == 7
    log = read_log(served)
    assert len(log) == 7 and set(scored.prediction_ids) <= set(log["prediction_id"])


def test_in_process_helper_writes_the_same_log_rows_as_http(served):
    rows = traffic_rows(served, 6)
    logged = predict_log_in_process(served, NAME, pd.DataFrame(rows).assign(item_id="ignored"),
                                    prediction_ids=[f"p{i}" for i in range(6)])
    assert len(list_log_parts(served)) == 1  # durable when the call returns
    with client_for(served) as client:
        http = client.post("/predict", json={"rows": rows}).json()["predictions"]
    log = read_log(served)
    assert len(log) == 12 and list(logged.columns) == list(log.columns)
    assert list(logged["prediction_id"]) == [f"p{i}" for i in range(6)]
    np.testing.assert_allclose(logged["confidence"].to_numpy(), [p["confidence"] for p in http], rtol=1e-9)
    assert list(logged["predicted"]) == [p["label"] for p in http]


# -- champion changes ----------------------------------------------------------------------------

def _wait_for_version(client, rows, version, seconds=60, allow_503=False):
    deadline = time.monotonic() + seconds
    seen = []
    while time.monotonic() < deadline:
        response = client.post("/predict", json={"rows": rows})
        if allow_503 and response.status_code == 503:
            time.sleep(0.1)
            continue
        assert response.status_code == 200, response.text
        seen.append(response.json()["model_version"])
        if seen[-1] == version:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"version {version} never served; saw {sorted(set(seen))}")


def test_rollback_of_the_champion_is_served_without_restart(served):
    rows = traffic_rows(served, 3)
    with client_for(served, alias_ttl_seconds=0.2, flush_rows=10_000, flush_seconds=3600) as client:
        assert client.post("/predict", json={"rows": rows}).json()["model_version"] == "2"
        gate.promote(served, NAME, "1", reason="rollback")
        seen = _wait_for_version(client, rows, "1")
        assert client.get("/health").json()["model_version"] == "1"
        gate.promote(served, NAME, "2", reason="roll forward")
        seen += _wait_for_version(client, rows, "2")
    log = read_log(served)
    assert set(log["model_version"]) == {"1", "2"}
    assert len(log) == 3 * (1 + len(seen))
    # Each logged row carries the version that scored it: version 1's rows hold version 1's probabilities.
    v1_rows = log[log["model_version"] == "1"]
    expected = tracking.load_model(served, NAME, "1").predict_proba(v1_rows[served.schema().feature_columns])
    np.testing.assert_allclose(v1_rows[served.schema().proba_columns].to_numpy(), expected, rtol=1e-6)


def test_without_a_champion_predict_is_503_until_one_is_promoted(served):
    client_mlflow = tracking.client(served)
    client_mlflow.delete_registered_model_alias(NAME, tracking.CHAMPION)
    rows = traffic_rows(served, 2)
    with client_for(served, alias_ttl_seconds=0.2) as client:
        response = client.post("/predict", json={"rows": rows})
        assert response.status_code == 503 and "champion" in response.json()["error"]
        assert client.get("/health").status_code == 503
        gate.promote(served, NAME, "1")
        assert _wait_for_version(client, rows, "1", allow_503=True)[-1] == "1"
    client_mlflow.delete_registered_model_alias(NAME, tracking.CHAMPION)
    with pytest.raises(NoChampion):
        predict_log_in_process(served, NAME, pd.DataFrame(rows))


# -- a real server -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_real_uvicorn_server_logs_every_prediction_after_sigterm(served):
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        [sys.executable, "-m", "labelloop.flows.cli", "serve", "--workspace", str(served.root), "--port", str(port),
         "--mode", "buffered", "--flush-rows", "50", "--flush-seconds", "3600", "--alias-ttl-seconds", "0.5",
         "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
            ids, versions = [], set()
            for i in range(40):
                if i == 20:
                    gate.promote(served, NAME, "1")
                response = http.post("/predict", json={"rows": traffic_rows(served, 1 + i % 3, offset=i * 3)})
                assert response.status_code == 200, response.text
                ids += [p["prediction_id"] for p in response.json()["predictions"]]
                versions.add(response.json()["model_version"])
            assert http.get("/health").json()["buffered_rows"] > 0
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    # uvicorn re-raises the captured SIGTERM after its graceful shutdown (lifespan included) has finished.
    assert server.returncode in (0, -signal.SIGTERM), output
    log = read_log(served)
    assert sorted(log["prediction_id"]) == sorted(ids) and len(ids) == 79
    assert versions <= {"1", "2"} and "2" in versions
