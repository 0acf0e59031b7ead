"""`labelloop demo --vendor label-studio` against the real Label Studio server (session fixture).

The demo's annotators are simulated people who answer in Label Studio through its API between cycles
(labelloop/vendors/ls_annotators.py); projects, tasks, the export and the import are the real server's.
"""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from labelloop.adapters.vendors.labelstudio import TOKEN_ENV, project_title
from labelloop.adapters.vendors.ls_annotators import LabelStudioAnnotators, label_set_of
from labelloop.batches import BatchStore
from labelloop.config import SimulatedVendorParams
from labelloop.flows.cli import app
from labelloop.workspace import Workspace

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]


def test_label_set_is_read_back_from_the_generated_config():
    from labelloop.adapters.vendors.labelstudio import label_config

    assert label_set_of(label_config(["cat", "dog", "a&b"])) == ["cat", "dog", "a&b"]


def test_demo_runs_against_label_studio_with_simulated_annotators(label_studio, prefect_api, tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, label_studio.token)
    root = tmp_path / "demo"
    small = ["production.rows_per_cycle=300", "select.batch_size=30", "train.n_estimators=30", "train.max_depth=4"]
    result = CliRunner().invoke(app, ["demo", "--vendor", "label-studio", "--cycles", "2", "--workspace", str(root),
                                      "--label-studio-url", label_studio.url, *[a for pair in small for a in ("--set", pair)]])
    assert result.exit_code == 0, result.output

    ws = Workspace.at(root)
    client = label_studio.client()
    titles = {p.title: p.id for p in client.projects.list()}
    store = BatchStore(ws)
    metas = store.list()
    assert len(metas) == 2
    first, second = metas
    # Each batch is a project of this workspace, with one task per item.
    for meta in metas:
        title = project_title(meta.batch_id, ws.workspace_id)
        assert title in titles
        tasks = list(client.tasks.list(project=titles[title], fields="all"))
        assert sorted(str(t.data["item_id"]) for t in tasks) == sorted(store.items(meta.batch_id)["item_id"])
        assert all(len(t.annotations) == 1 for t in tasks), "the team answers every task once after each cycle"

    # Cycle 1 exported before anyone annotated: nothing imported. Cycle 2 imported batch 1 from Label Studio.
    assert first.versioned_in == "data-v2" and second.versioned_in is None
    finals = store.final_labels(first.batch_id)
    oracle = pd.read_parquet(ws.simulator_dir / "oracle.parquet").set_index("item_id")["label"]
    assert len(finals) == first.n_items
    assert (finals.set_index("item_id")["label"] == oracle.loc[finals["item_id"]].to_numpy()).all()  # error_rate 0
    assert "cycle  2 | labels    80" in result.output  # 50 seed labels + batch 1's 30

    # Running the team again adds nothing: every task already has its answers.
    team = LabelStudioAnnotators(client, oracle, SimulatedVendorParams(), namespace=ws.workspace_id)
    assert team.work().answers == 0
