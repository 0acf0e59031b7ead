"""Serving in durable mode: an answered prediction survives SIGKILL; a restart duplicates nothing; 413 on big bodies.

Real workspace, real MLflow registry and XGBoost champion, a real uvicorn server in a subprocess.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from labelloop.apps.serving import DEFAULT_MAX_BODY_BYTES, LogUnavailable, PredictionService, create_app
from labelloop.config import CaptureParams
from labelloop.stages import gate, train
from labelloop.stages.capture import capture
from labelloop.stages.production import list_log_parts
from labelloop.stages.production import wal as prediction_wal
from tests.conftest import clone_workspace

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def durable_template(workspace_template, tmp_path_factory):
    ws = clone_workspace(workspace_template, tmp_path_factory.mktemp("durable") / "ws")
    params = ws.params().train.model_copy(update={"n_estimators": 20, "max_depth": 3})
    gate.promote(ws, params.model_name, train.train_challenger(ws, params).version)
    return ws


def name_of(ws) -> str:
    """The model `serve` uses for this workspace (train.model_name in its params.yaml)."""
    return ws.params().train.model_name


@pytest.fixture
def served(durable_template, tmp_path):
    return clone_workspace(durable_template, tmp_path / "ws")


def traffic_rows(ws, n, offset=0):
    frame = pd.read_parquet(ws.simulator_dir / "traffic.parquet")
    frame = frame.iloc[[(offset + i) % len(frame) for i in range(n)]]
    return frame[ws.schema().feature_columns].to_dict(orient="records")


def read_log(ws) -> pd.DataFrame:
    parts = list_log_parts(ws)
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame(columns=["prediction_id"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(ws, *options: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "labelloop.flows.cli", "serve", "--workspace", str(ws.root), "--port", str(port),
         "--log-level", "warning", *options],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=10).status_code == 200:
                return server, base
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"server did not start: {server.communicate()[0][-3000:]}")
        time.sleep(0.2)


def stop_gracefully(server: subprocess.Popen) -> str:
    server.send_signal(signal.SIGTERM)
    output, _ = server.communicate(timeout=120)
    assert server.returncode in (0, -signal.SIGTERM), output
    return output


# -- SIGKILL under load ------------------------------------------------------------------------------

def hammer(ws, base: str, threads: int, stop: threading.Event) -> tuple[list[str], list[str], list[threading.Thread]]:
    """Start concurrent clients that run until `stop` or the server dies; they fill the ids answered 200 and the failures."""
    answered: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            i = 0
            while not stop.is_set():
                rows = traffic_rows(ws, 1 + (worker + i) % 3, offset=worker * 1000 + i * 3)
                rows[0]["prediction_id"] = f"w{worker}-r{i}"  # a client id too: both kinds must survive
                i += 1
                try:
                    response = http.post("/predict", json={"rows": rows})
                except httpx.TransportError:
                    return  # the server is gone: this request was not answered
                if response.status_code != 200:
                    with lock:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                ids = [p["prediction_id"] for p in response.json()["predictions"]]
                with lock:
                    answered.extend(ids)

    workers = [threading.Thread(target=client, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    return answered, failures, workers


@pytest.mark.slow
def test_sigkill_under_load_loses_no_answered_row_and_restart_duplicates_none(served):
    # Segments are sealed and turned into parts all through the load, so the kill can land in any phase:
    # append, fsync, part write, segment delete.
    server, base = start_server(served, "--mode", "durable", "--flush-rows", "60", "--flush-seconds", "0.5")
    stop = threading.Event()
    workers: list[threading.Thread] = []
    try:
        answered, failures, workers = hammer(served, base, threads=8, stop=stop)
        deadline = time.monotonic() + 60
        while len(answered) < 300 and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)  # mid-load: requests in flight
        server.wait(timeout=60)
    finally:
        stop.set()
        if server.poll() is None:
            server.kill()
        for worker in workers:
            worker.join(timeout=60)
    assert failures == []
    assert len(answered) >= 300  # enough load to matter (not a timing bound: the loop waits for it)
    before_restart = len(read_log(served))

    server, base = start_server(served)  # durable by default; recovery runs before the first request
    try:
        health = httpx.get(f"{base}/health", timeout=10).json()
    finally:
        stop_gracefully(server)
    log = read_log(served)
    logged = log["prediction_id"].tolist()
    assert len(logged) == len(set(logged)), "a prediction_id is in the log twice"
    missing = set(answered) - set(logged)
    assert not missing, f"{len(missing)} of {len(answered)} answered rows lost, e.g. {sorted(missing)[:5]}"
    # Every row the restart added came from a recovered segment; a kill after a segment's part was written but
    # before the segment was deleted also recovers (and counts) rows whose part was already there, written once
    # (test_recovery_keeps_every_intact_record_drops_a_torn_tail_and_never_writes_a_part_twice).
    assert health["mode"] == "durable" and health["recovered_rows"] >= len(log) - before_restart
    # Rows fsynced just before the kill whose answer never left may be logged too; torn records never are.
    assert not list(prediction_wal.wal_dir(served).glob("seg-*"))

    # Recovering again finds nothing and writes nothing twice; capture reads every row once.
    assert prediction_wal.recover(served).segments_recovered == 0
    assert sorted(read_log(served)["prediction_id"]) == sorted(logged)
    report = capture(served, CaptureParams(confidence_threshold=1.0))
    assert (report.rows_read, report.rows_quarantined) == (len(logged), 0)


# -- request body limit --------------------------------------------------------------------------------

def raw_request(base: str, head: str, body_parts: list[bytes]) -> tuple[int, str]:
    """Send `head` then `body_parts` on a plain socket; the status and text of the response."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        for part in body_parts:
            sock.sendall(part)
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < _content_length(received):
            data = sock.recv(65536)  # socket.timeout if the server never answers (it waits for the rest of the body)
            if not data:
                break
            received += data
    response = received.decode(errors="replace")
    return (int(response.split(" ", 2)[1]) if response.startswith("HTTP/") else 0), response


def _content_length(response: bytes) -> int:
    head = response.partition(b"\r\n\r\n")[0]
    return next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)


def chunks_of(data: bytes, size: int, last: bool = True) -> list[bytes]:
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    return [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces] + ([b"0\r\n\r\n"] if last else [])


POST = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.mark.slow
def test_request_bodies_over_the_limit_get_413_before_they_are_read(served):
    import json

    limit = DEFAULT_MAX_BODY_BYTES
    server, base = start_server(served)
    try:
        # Content-Length says 200 MB; only a few bytes follow. The 413 comes without waiting for the body.
        status, response = raw_request(base, POST + f"Content-Length: {200 * 1024 * 1024}\r\n\r\n", [b'{"rows": ['])
        assert status == 413, response
        assert f"the limit is {limit} bytes" in response and str(200 * 1024 * 1024) in response

        # Chunked, no Content-Length: refused once the body received passes the limit. (Only just past
        # it is sent, so the server has read every byte sent when it answers and closes.)
        oversized = b'{"rows": [' + b"0," * (limit // 2 + 4096)
        status, response = raw_request(base, POST + "Transfer-Encoding: chunked\r\n\r\n",
                                       chunks_of(oversized, 64 * 1024, last=False))
        assert status == 413, response
        assert f"the limit is {limit} bytes" in response and "chunked" in response

        # Within the limit, chunked or not, the request is served (the middleware hands the body on whole).
        small = json.dumps({"rows": traffic_rows(served, 3)}).encode()
        status, response = raw_request(base, POST + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                                       chunks_of(small, 100))
        assert status == 200, response
        assert len(json.loads(response.partition("\r\n\r\n")[2])["predictions"]) == 3
        assert httpx.post(f"{base}/predict", json={"rows": traffic_rows(served, 2)}, timeout=30).status_code == 200
        assert httpx.get(f"{base}/schema", timeout=10).json()["max_body_bytes"] == limit
    finally:
        stop_gracefully(server)
    assert len(read_log(served)) == 5  # the refused bodies logged nothing


# -- in process: failures and recovery -----------------------------------------------------------------

def test_a_failed_append_is_not_answered_and_leaves_no_torn_record(served, monkeypatch):
    real = prediction_wal._write_all
    calls = {"groups": 0}

    def disk_full_midway(fd, data):
        if data[8:9] == prediction_wal._GROUP:
            calls["groups"] += 1
            if calls["groups"] == 2:
                real(fd, data[:len(data) // 2])  # half a record reaches the file, then the disk is full
                raise OSError(28, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(prediction_wal, "_write_all", disk_full_midway)
    service = PredictionService(served, name_of(served), flush_rows=10_000, flush_seconds=3600)
    first = service.predict(pd.DataFrame(traffic_rows(served, 3)), [f"a{i}" for i in range(3)])
    with pytest.raises(LogUnavailable, match="No space left"):
        service.predict(pd.DataFrame(traffic_rows(served, 2, offset=3)), ["lost-0", "lost-1"])
    assert "No space left" in service.last_error
    third = service.predict(pd.DataFrame(traffic_rows(served, 4, offset=5)), [f"c{i}" for i in range(4)])
    segment = service._wal._segment
    records, intact = prediction_wal._read_records(segment.path.read_bytes())
    assert intact == segment.path.stat().st_size and len(records) == 3  # header + 2 groups, nothing torn
    # A hard kill now (the fd dropped without conversion) loses nothing answered: recovery writes both requests.
    segment.release()
    report = prediction_wal.recover(served)
    assert (report.segments_recovered, report.rows_recovered, report.torn_bytes) == (1, 7, 0)
    assert sorted(read_log(served)["prediction_id"]) == sorted(first.prediction_ids + third.prediction_ids)


def test_recovery_keeps_every_intact_record_drops_a_torn_tail_and_never_writes_a_part_twice(served):
    schema = served.schema()
    log = prediction_wal.GroupCommitLog(served, schema, flush_rows=10_000, commit_wait_seconds=0)
    service = PredictionService(served, name_of(served), mode="buffered")
    chunks = [service._score(pd.DataFrame(traffic_rows(served, n, offset=10 * n)), None) for n in (1, 2, 5)]
    for chunk in chunks:
        log.begin()
        log.commit(chunk)
    segment = log._segment
    torn_tail = prediction_wal._frame_record(prediction_wal._encode_group(chunks[:1]))[:-7]
    with open(segment.path, "ab") as handle:
        handle.write(torn_tail)  # what a kill mid-write leaves: never acknowledged
    # Crash after the part was written but before the segment was deleted: the part exists already.
    first_part = prediction_wal.write_parts(served, chunks, part_name=segment.part_name)
    segment.release()

    report = prediction_wal.recover(served)
    assert (report.segments_recovered, report.rows_recovered, report.torn_bytes) == (1, 8, len(torn_tail))
    assert report.parts == [str(p) for p in first_part]
    frame = read_log(served)
    assert sorted(frame["prediction_id"]) == sorted(i for c in chunks for i in c.prediction_ids)
    np.testing.assert_allclose(frame[schema.feature_columns].to_numpy(), np.vstack([c.features for c in chunks]))
    torn_files = list(served.quarantine_dir.glob("serving-wal-*.torn"))
    assert len(torn_files) == 1 and torn_files[0].read_bytes() == torn_tail
    assert prediction_wal.recover(served).segments_recovered == 0
    assert len(read_log(served)) == 8


def test_a_live_segment_of_another_writer_is_left_alone(served):
    service = PredictionService(served, name_of(served), flush_rows=10_000, flush_seconds=3600)
    scored = service.predict(pd.DataFrame(traffic_rows(served, 2)))
    report = prediction_wal.recover(served)  # e.g. a second server starting on the same workspace
    assert (report.segments_in_use, report.rows_recovered) == (1, 0) and list_log_parts(served) == []
    service.close()
    assert sorted(read_log(served)["prediction_id"]) == sorted(scored.prediction_ids)
    assert not list(prediction_wal.wal_dir(served).iterdir())


def test_a_failed_part_write_keeps_the_rows_in_the_wal_until_a_write_succeeds(served, monkeypatch):
    real = prediction_wal.append_predictions
    calls = {"n": 0}

    def flaky(workspace, frame, part_name=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full")
        return real(workspace, frame, part_name)

    monkeypatch.setattr(prediction_wal, "append_predictions", flaky)
    service = PredictionService(served, name_of(served), flush_rows=10_000)
    first = service.predict(pd.DataFrame(traffic_rows(served, 5)))
    with pytest.raises(OSError, match="disk full"):
        service.flush()
    assert service.buffered_rows == 5 and service.at_risk_rows == 0 and "disk full" in service.last_error
    second = service.predict(pd.DataFrame(traffic_rows(served, 2, offset=5)))
    service.close()
    assert service.rows_logged == 7 and service.buffered_rows == 0
    assert sorted(read_log(served)["prediction_id"]) == sorted(first.prediction_ids + second.prediction_ids)


def test_concurrent_requests_are_all_logged_once_through_group_commit(served):
    from fastapi.testclient import TestClient

    with TestClient(create_app(served, name_of(served), flush_rows=25, flush_seconds=3600, commit_wait_ms=5)) as client:
        def send(worker):
            answers = [client.post("/predict", json={"rows": traffic_rows(served, 2, offset=worker * 20 + i * 2)}).json()
                       for i in range(10)]
            return [[p["prediction_id"] for p in answer["predictions"]] for answer in answers]

        results: list = []
        threads = [threading.Thread(target=lambda w=w: results.append(send(w))) for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        health = client.get("/health").json()
    answered = [i for worker in results for request in worker for i in request]
    assert len(answered) == 120 and health["at_risk_rows"] == 0
    assert 1 <= health["wal_groups_committed"] <= 60
    log = read_log(served)
    assert sorted(log["prediction_id"]) == sorted(answered)


def test_unknown_mode_is_refused_naming_the_allowed_ones(served):
    with pytest.raises(ValueError, match="durable, buffered"):
        PredictionService(served, name_of(served), mode="fast")


def test_capture_turns_a_dead_servers_wal_into_log_rows_it_reads(served):
    # A server killed and never restarted: its answered rows sit in predictions/_wal/. The capture stage
    # recovers them (only segments whose writer is gone) before reading the log, so none stay invisible.
    from labelloop.config import CaptureParams
    from labelloop.stages.capture import capture

    log = prediction_wal.GroupCommitLog(served, served.schema(), flush_rows=10_000, commit_wait_seconds=0)
    service = PredictionService(served, name_of(served), mode="buffered")
    chunk = service._score(pd.DataFrame(traffic_rows(served, 6)), None)
    log.begin()
    log.commit(chunk)
    log._segment.release()  # the writer's lock goes with its process
    assert list_log_parts(served) == []
    report = capture(served, CaptureParams(confidence_threshold=1.0))
    assert report.rows_read == 6
    assert sorted(read_log(served)["prediction_id"]) == sorted(chunk.prediction_ids)
