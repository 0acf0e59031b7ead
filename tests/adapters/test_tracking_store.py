"""The MLflow-free registry readers (SQLite, REST) against a real store made by labelloop's own train, gate
and rollback, compared with what MLflow's client reads from the same store."""

from __future__ import annotations

import math
import sys

import pytest

from labelloop.adapters import tracking, tracking_store
from labelloop.adapters.tracking_store import MlflowReader, RestReader, SqliteReader, sqlite_path
from labelloop.workspace import Workspace, sqlite_uri


@pytest.fixture(scope="module")
def store(workspace_template, tmp_path_factory):
    """Two trained versions, the second promoted then rolled back: every alias, tag and history kind."""
    from labelloop.stages import gate, train
    from tests.conftest import clone_workspace

    ws = clone_workspace(workspace_template, tmp_path_factory.mktemp("tracking-store") / "ws")
    params = ws.params()
    name = params.train.model_name
    for n_estimators in (20, 30):
        result = train.train_challenger(ws, params.train.model_copy(update={"n_estimators": n_estimators}))
        decision = gate.evaluate_gate(ws, name, params.gate.model_copy(update={"min_delta": -1.0}))
        gate.record_decision(ws, name, decision, params.gate)
        gate.promote(ws, name, result.version, "; ".join(decision.reasons))
    gate.rollback(ws, name, "a test rollback")
    return ws, name


@pytest.fixture(scope="module")
def rest_transport(store):
    """MLflow's own tracking server app (Flask), in-process over WSGI: the REST API a server answers with."""
    httpx = pytest.importorskip("httpx")
    from mlflow.server import app as mlflow_app
    from mlflow.server import handlers

    ws, _ = store
    saved = handlers._tracking_store, handlers._model_registry_store
    handlers._tracking_store = handlers._model_registry_store = None
    handlers._get_tracking_store(ws.tracking_uri, ws.artifacts_dir.as_uri())
    handlers._get_model_registry_store(ws.tracking_uri)
    try:
        yield httpx.WSGITransport(app=mlflow_app)
    finally:
        handlers._tracking_store, handlers._model_registry_store = saved


def _readers(ws: Workspace, transport) -> dict:
    return {"sqlite": SqliteReader(ws.root / "mlflow.db"),
            "rest": RestReader("http://testserver", transport=transport),
            "mlflow": MlflowReader(ws)}


def _same(a, b) -> bool:
    """Equal, with NaN metrics equal to NaN."""
    if a is None or b is None:
        return a is b
    metrics_a, metrics_b = getattr(a, "metrics", {}), getattr(b, "metrics", {})
    if metrics_a.keys() != metrics_b.keys():
        return False
    if any(not (math.isclose(metrics_a[k], metrics_b[k]) or (math.isnan(metrics_a[k]) and math.isnan(metrics_b[k])))
           for k in metrics_a):
        return False
    return {**a.__dict__, "metrics": None} == {**b.__dict__, "metrics": None}


@pytest.mark.slow  # the module's store: two models trained, gated, promoted and rolled back
def test_sqlite_and_rest_read_what_mlflow_reads(store, rest_transport):
    ws, name = store
    readers = _readers(ws, rest_transport)
    expected = readers.pop("mlflow")
    model = expected.registered_model(name)
    assert model is not None and {"champion", "challenger", "previous-champion"} <= set(model.aliases)
    versions = expected.versions(name)
    assert versions == ["1", "2"]
    for label, reader in readers.items():
        assert reader.registered_model(name) == model, label
        assert reader.versions(name) == versions, label
        for version in versions:
            found = reader.model_version(name, version)
            assert found == expected.model_version(name, version), (label, version)
            assert _same(reader.run(found.run_id), expected.run(found.run_id)), (label, version)
        assert reader.registered_model("no-such-model") is None, label
        assert reader.model_version(name, "99") is None, label
        assert reader.run("0" * 32) is None, label


@pytest.mark.slow
def test_history_versions_and_lineage_match_the_mlflow_client(store, rest_transport):
    from labelloop.apps.lineage import lineage

    ws, name = store
    for reader in _readers(ws, rest_transport).values():
        assert tracking_store.champion_history(reader, name) == tracking.champion_history(ws, name)
        assert tracking_store.describe_versions(reader, name) == tracking.describe_versions(ws, name)
        for ref in ("champion", "previous-champion", "v2", "1"):
            assert tracking_store.resolve_version(reader, name, ref) == tracking.resolve_version(ws, name, ref)
        for ref in ("7", "nope"):
            with pytest.raises(tracking.UnknownModelVersion) as fast:
                tracking_store.resolve_version(reader, name, ref)
            with pytest.raises(tracking.UnknownModelVersion) as slow:
                tracking.resolve_version(ws, name, ref)
            assert str(fast.value) == str(slow.value)
    info = lineage(ws, name, "2")  # read through the SQLite reader
    assert info["champion"]["rolled_back"][0]["reason"] == "a test rollback"
    assert info["run_id"] == tracking.client(ws).get_model_version(name, "2").run_id
    assert info["aliases"] == [a for a in ("champion", "challenger", "previous-champion")
                               if tracking.alias_version(ws, name, a) == "2"]


def test_history_derived_for_a_store_older_than_the_history():
    tags = {"promoted_because": "better"}
    history = tracking_store.history_from({}, {"champion": "3", "previous-champion": "2"},
                                          lambda v: {"data_tag": f"data-v{v}", **(tags if v == "3" else {})})
    assert [(c.version, c.by, c.replaced, c.data_tag, c.recorded) for c in history] == [
        ("2", "derived", None, "data-v2", False), ("3", "derived", "2", "data-v3", False)]
    assert history[-1].reason == "better"


def test_a_store_mlflow_never_initialised_has_no_models(tmp_path):
    assert SqliteReader(tmp_path / "missing.db").registered_model("m") is None
    (tmp_path / "empty.db").write_bytes(b"")
    empty = SqliteReader(tmp_path / "empty.db")
    assert empty.registered_model("m") is None and empty.versions("m") == []
    assert not (tmp_path / "missing.db").exists()  # read-only: nothing created


@pytest.mark.parametrize("name", ["mlflow.db", "odd dir ?#%/mlflow é.db"])
def test_sqlite_path_reads_both_uri_forms(tmp_path, name):
    path = tmp_path / name
    assert sqlite_path(sqlite_uri(path)) == path.resolve()
    assert sqlite_path("http://host:5000") is None and sqlite_path("postgresql://u@h/db") is None


def test_reader_picks_the_store_of_the_workspace(tmp_path):
    assert isinstance(tracking_store.reader(Workspace.at(tmp_path)), SqliteReader)
    assert isinstance(tracking_store.reader(Workspace.at(tmp_path, "https://u:p@mlflow.example")), RestReader)
    assert isinstance(tracking_store.reader(Workspace.at(tmp_path, "postgresql://u@h/db")), MlflowReader)


def test_rest_sends_the_uris_credentials_as_basic_auth_and_never_shows_them():
    httpx = pytest.importorskip("httpx")
    seen = []

    def answer(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(503, text="down for maintenance")

    reader = RestReader("https://alice:s3cret@mlflow.example/", environ={}, transport=httpx.MockTransport(answer))
    with pytest.raises(tracking.TrackingUnavailable) as error:
        reader.registered_model("m")
    assert seen == [httpx.BasicAuth("alice", "s3cret")._auth_header]
    assert "s3cret" not in str(error.value) and "HTTP 503" in str(error.value) and "alice:***@" in str(error.value)


def test_the_readers_module_does_not_import_mlflow():
    import subprocess

    code = ("import sys; from labelloop.adapters import tracking_store; from labelloop.apps import lineage; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'sklearn', 'xgboost', 'prefect')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
