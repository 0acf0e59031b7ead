"""Secrets never reach logs, MLflow or artifacts; only allow-listed columns ever leave for a vendor."""

from __future__ import annotations

import json

import pytest

from labelloop.batches import export_batches, select_batch
from labelloop.config import ConfigError, ExportParams, SelectParams, parse_params
from labelloop.vendors import make_vendor
from tests.test_batches import _pool

TOKEN = "lbl-secret-7f3a9c1e-do-not-log"
DB_PASSWORD = "pg-pass-51d0e-never-written"


def test_a_vendor_token_in_params_yaml_is_refused():
    with pytest.raises(ConfigError, match="export.label_studio_api_key"):
        parse_params({"export": {"label_studio_api_key": TOKEN}})


@pytest.mark.slow
def test_a_full_cycle_writes_the_token_and_password_nowhere(prefect_api, workspace, monkeypatch):
    from flows.cycle import active_learning_cycle

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
    from labelloop import tracking

    client = tracking.client(workspace)
    for run in client.search_runs([tracking.experiment_id(workspace)]):
        values = [*run.data.params.values(), *run.data.tags.values()]
        assert not any(TOKEN in v or DB_PASSWORD in v for v in values)


def test_only_allow_listed_columns_leave_for_the_vendor(workspace):
    _pool(workspace, n=20)
    select_batch(workspace, SelectParams(batch_size=5))
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
