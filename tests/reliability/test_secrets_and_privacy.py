"""Secrets never reach logs, MLflow or artifacts; only allow-listed columns ever leave for a vendor."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from labelloop.adapters.vendors import make_vendor
from labelloop.config import ConfigError, ExportParams, SelectParams, parse_params
from labelloop.stages.export import export_batches
from labelloop.stages.select import select_batch
from tests.stages.test_select import _pool

TOKEN = "lbl-secret-7f3a9c1e-do-not-log"
DB_PASSWORD = "pg-pass-51d0e-never-written"


def test_a_vendor_token_in_params_yaml_is_refused():
    with pytest.raises(ConfigError, match="export.label_studio_api_key"):
        parse_params({"export": {"label_studio_api_key": TOKEN}})


@pytest.mark.slow
def test_a_full_cycle_writes_the_token_and_password_nowhere(prefect_api, workspace, monkeypatch):
    from labelloop.flows.cycle import active_learning_cycle

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    monkeypatch.setenv("PGPASSWORD", DB_PASSWORD)
    active_learning_cycle(str(workspace.root))
    active_learning_cycle(str(workspace.root))
    scanned = 0
    for path in workspace.root.rglob("*"):
        if not path.is_file() or ".git/objects" in str(path):
            continue
        data = path.read_bytes()
        scanned += 1
        assert TOKEN.encode() not in data, f"the vendor token leaked into {path}"
        assert DB_PASSWORD.encode() not in data, f"the database password leaked into {path}"
    assert scanned > 50  # logs, MLflow store + artifacts, batches, registry, Prefect home
    from labelloop.adapters import tracking

    client = tracking.client(workspace)
    for run in client.search_runs([tracking.experiment_id(workspace)]):
        values = [*run.data.params.values(), *run.data.tags.values()]
        assert not any(TOKEN in v or DB_PASSWORD in v for v in values)


def test_only_allow_listed_columns_leave_for_the_vendor(workspace):
    _pool(workspace, n=20)
    select_batch(workspace, SelectParams(batch_size=5, audit_fraction=0))
    schema = workspace.schema()
    allowed = schema.feature_columns[:2]
    params = ExportParams(vendor="filedrop", columns=allowed, filedrop_url=str(workspace.root / "drop"))
    export_batches(workspace, params, make_vendor(params, workspace.root))
    [tasks] = list((workspace.root / "drop").rglob("tasks.jsonl"))
    lines = [json.loads(line) for line in tasks.read_text().splitlines()]
    assert len(lines) == 5
    text = tasks.read_text()
    for column in schema.feature_columns[2:]:
        assert f'"{column}":' not in text, f"{column} is not allow-listed but was exported"
    for column in allowed:
        assert f'"{column}":' in text


# ------------------------------------------------------------------------- credentials inside URIs
# A distinct marker per URI: a leak names the URI it came from.
TRACKING_PASSWORD = "mlflow-pw-3c9e1-never-shown"
DVC_PASSWORD = "dvc-pw-8b27d-never-shown"
LS_PASSWORD = "ls-pw-6a1d2-never-shown"
PG_PASSWORD = "pg-pw-0e5b7-never-shown"
QUERY_TOKEN = "query-token-91c4f-never-shown"
URI_MARKERS = (TRACKING_PASSWORD, DVC_PASSWORD, LS_PASSWORD, PG_PASSWORD, QUERY_TOKEN)


@pytest.mark.parametrize(("uri", "shown"), [
    (f"http://alice:{TRACKING_PASSWORD}@mlflow.internal:5000", "http://alice:***@mlflow.internal:5000"),
    (f"postgresql+psycopg2://dave:{PG_PASSWORD}@db:5432/mlflow?sslmode=require",
     "postgresql+psycopg2://dave:***@db:5432/mlflow?sslmode=require"),
    (f"https://bob:p@ss/w?rd#{DVC_PASSWORD}@dvc.example.com/store", "https://bob:***@dvc.example.com/store"),
    (f"s3://bucket/data?X-Amz-Signature={QUERY_TOKEN}&region=eu", "s3://bucket/data?X-Amz-Signature=***&region=eu"),
    (f"https://ls.example.com/api?token={QUERY_TOKEN}&key={QUERY_TOKEN}&password={QUERY_TOKEN}&page=2",
     "https://ls.example.com/api?token=***&key=***&password=***&page=2"),
    ("sqlite+pysqlite:///file:/data/ws%3F1/mlflow.db?uri=true", "sqlite+pysqlite:///file:/data/ws%3F1/mlflow.db?uri=true"),
    ("postgresql://postgres@db:5432/labelloop", "postgresql://postgres@db:5432/labelloop"),  # a user alone is no secret
])
def test_a_uri_is_shown_with_its_credentials_masked_and_the_rest_kept(uri, shown):
    from labelloop.core.redact import redact_text, redact_uri

    assert redact_uri(uri) == shown
    redacted = redact_text(f"push to '{uri}' failed: host=db password={PG_PASSWORD}")
    assert redacted == f"push to '{shown}' failed: host=db password=***"


class _AuthRecorder:
    """An HTTP server that answers 503 to everything and records each request's Authorization header."""

    def __enter__(self):
        import http.server
        import threading

        seen = self.authorizations = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                seen.append(self.headers.get("Authorization"))
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_the_tracking_password_reaches_the_server_but_no_error_or_gate_artifact(workspace, monkeypatch):
    import base64
    import traceback

    from labelloop.adapters import tracking
    from labelloop.apps import reports
    from labelloop.domain.gate import GateDecision
    from labelloop.stages import train

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with _AuthRecorder() as server:
        uri = f"http://alice:{TRACKING_PASSWORD}@127.0.0.1:{server.port}"
        on_server = replace(workspace, tracking_server=uri)
        with pytest.raises(tracking.TrackingUnavailable) as caught:
            train.train_challenger(on_server, workspace.params().train)
        decision = GateDecision(True, ["better"], "accuracy", 0.9, 0.8, "2", "1")
        artifact = reports.gate_markdown(decision, on_server.tracking_uri,
                                         reports.gate_run_links(on_server, "m", decision))
    # MLflow still authenticates: the credentials travel as basic auth, only never as text.
    assert server.authorizations and set(server.authorizations) == {
        "Basic " + base64.b64encode(f"alice:{TRACKING_PASSWORD}".encode()).decode()}
    told = "".join(traceback.format_exception(caught.value))  # the chain, as Prefect logs it
    assert f"alice:***@127.0.0.1:{server.port}" in str(caught.value)
    assert TRACKING_PASSWORD not in told
    assert f"alice:***@127.0.0.1:{server.port}" in artifact and TRACKING_PASSWORD not in artifact


def test_a_label_studio_password_stays_out_of_its_errors_and_status(workspace):
    from labelloop.adapters.vendors.labelstudio import LabelStudioVendor
    from tests.reliability.fault_servers import closed_port

    vendor = LabelStudioVendor(f"http://carol:{LS_PASSWORD}@127.0.0.1:{closed_port()}", "token", workspace.root / "ls")
    assert LS_PASSWORD not in repr(vendor) and "carol:***@" in repr(vendor)
    assert LS_PASSWORD not in vendor._fault("listing projects", ConnectionError("refused")).args[0]


def _every(read_page) -> list:
    """Every record a Prefect API read returns, page after page."""
    found: list = []
    while page := read_page(offset=len(found)):
        found += page
    return found


def _text_of_every_file(root) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in root.rglob("*") if path.is_file() and ".git/objects" not in str(path)}


def retry_tasks_at_once(monkeypatch) -> None:
    """Every labelloop Prefect task keeps its retries, without the 2–30 s waits between attempts: a test of
    what the attempts log and raise, not of how long they wait (the waits were 47 of this module's 67 s)."""
    import importlib
    import pkgutil

    from prefect import Task

    import labelloop.tasks

    for found in pkgutil.iter_modules(labelloop.tasks.__path__):
        module = importlib.import_module(f"labelloop.tasks.{found.name}")
        for value in vars(module).values():
            if isinstance(value, Task) and value.retries and value.retry_delay_seconds:
                monkeypatch.setattr(value, "retry_delay_seconds", 0)


@pytest.mark.slow
def test_credentials_in_every_uri_reach_no_file_log_artifact_or_error_line(prefect_api, workspace, monkeypatch, capfd):
    """The tracking server (with a password) is down, then the DVC remote (with a password) is: every
    error line, Prefect log and artifact, workspace file, registry commit and the Prefect database are
    searched for each password, through every retry of the failing tasks."""
    from prefect.logging.handlers import APILogHandler

    from labelloop.adapters import versioning
    from labelloop.flows.cycle import active_learning_cycle
    from labelloop.flows.stages import dataset_flow
    from tests.reliability.fault_servers import closed_port
    from tests.stages.test_dataset import _fake_imported_batch

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("LABELLOOP_RETRY_ATTEMPTS", "1")
    retry_tasks_at_once(monkeypatch)
    root = str(workspace.root)
    with monkeypatch.context() as tracking_down:
        tracking_down.setenv("LABELLOOP_TRACKING_URI", f"http://alice:{TRACKING_PASSWORD}@127.0.0.1:{closed_port()}")
        with pytest.raises(Exception, match=r"alice:\*\*\*@"):
            active_learning_cycle(root)
    versioning.set_remote(workspace.registry_dir, f"http://bob:{DVC_PASSWORD}@127.0.0.1:{closed_port()}/dvc")
    _fake_imported_batch(workspace, "batch-0001-aaaaaa")
    with pytest.raises(Exception, match=r"bob:\*\*\*@"):
        dataset_flow(root)
    APILogHandler().flush()  # logs reach the API in batches: send what is queued

    captured = capfd.readouterr()
    searched = {"stdout": captured.out.encode(), "stderr": captured.err.encode()}
    searched |= {path: data for path, data in _text_of_every_file(workspace.root).items()
                 if not path.endswith(".dvc/config.local")}  # DVC's git-ignored place for the remote's secret
    registry = workspace.registry_dir
    searched["registry history"] = versioning.git(registry, "log", "--all", "-p", "--format=%B").encode()
    searched["registry tags"] = versioning.git(registry, "tag", "-n99").encode()
    from prefect.settings import get_current_settings

    database = get_current_settings().server.database.connection_url
    database = Path(str(getattr(database, "get_secret_value", lambda: database)()).split(":///", 1)[1])
    for path in database.parent.glob(database.name + "*"):  # the database and its WAL
        searched[str(path)] = path.read_bytes()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # every page: the session's API holds other tests' runs too
        searched["prefect logs"] = "\n".join(log.message for log in _every(client.read_logs)).encode()
        searched["prefect artifacts"] = "\n".join(str(a.data) for a in _every(client.read_artifacts)).encode()
    assert b"alice:***@" in searched["prefect logs"]  # the failure was logged, redacted
    assert b"Retry 2/2 will start immediately" in searched["prefect logs"]  # every retry's log line is searched
    for where, data in searched.items():
        for marker in URI_MARKERS:
            assert marker.encode() not in data, f"{marker} leaked into {where}"
    assert DVC_PASSWORD in (registry / ".dvc" / "config.local").read_text()  # where DVC reads it from
