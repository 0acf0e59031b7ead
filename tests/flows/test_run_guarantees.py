"""Issue 11's run guarantees through a real Prefect API, real MLflow, git + DVC and GX:
one resolved set of params per run, rollbacks that survive the next cycles, interrupted cycles
completed, the production line enforced, the demo never deleting a workspace it did not create."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from labelloop.adapters import tracking, versioning
from labelloop.apps.reports import load_stage_params
from labelloop.batches import BatchStore
from labelloop.history import load_history
from labelloop.stages import dataset, train
from tests.conftest import lock_held_elsewhere

pytestmark = pytest.mark.slow

UI_MODEL = "ui-model"


def _ui_overrides(ws) -> dict:
    """What a "Custom run" from the Prefect UI submits: each section as JSON, the file's values with a few changed."""
    file = ws.params().to_dict()
    simulated = file["export"]["simulated"] | {"error_rate": 0.3}
    return {
        "train": file["train"] | {"model_name": UI_MODEL, "max_depth": 3},
        "select": file["select"] | {"strategy": "margin", "batch_size": 20, "seed": 5},
        "export": file["export"] | {"simulated": simulated},
    }


def test_rollback_then_two_ui_cycles_with_overrides_keep_one_params_set_and_the_rollback(prefect_api, workspace):
    from labelloop.flows.cycle import active_learning_cycle

    root = str(workspace.root)
    default_model = workspace.params().train.model_name
    for _ in range(2):
        active_learning_cycle(root)
    v1_items = set(pd.read_parquet(pd.io.common.BytesIO(
        versioning.read_at(workspace.registry_dir, workspace.labeled_path, "data-v1")))["item_id"])
    rolled_back_batches = [m.batch_id for m in BatchStore(workspace).list()]
    rolled = dataset.rollback(workspace, "data-v1")
    assert rolled.tag == "data-v4"

    overrides = _ui_overrides(workspace)
    records = [active_learning_cycle(root, **overrides) for _ in range(2)]

    # Tags: one per version, the rollback's included; the labelled set is data-v1 plus the two new batches.
    assert versioning.data_tags(workspace.registry_dir) == [f"data-v{i}" for i in range(1, 7)]
    assert [r.data_tag for r in records] == ["data-v5", "data-v6"]
    new_batches = [m for m in BatchStore(workspace).list() if m.batch_id not in rolled_back_batches]
    assert len(new_batches) == 2
    new_items = set().union(*(set(BatchStore(workspace).final_labels(m.batch_id)["item_id"]) for m in new_batches))
    labeled = pd.read_parquet(workspace.labeled_path)
    assert set(labeled["item_id"]) == v1_items | new_items
    assert labeled["item_id"].is_unique
    assert not set(labeled["batch_id"]) & set(rolled_back_batches)

    # History: one row for every data version, the rollback's too.
    history = load_history(workspace)
    assert {h.data_tag for h in history} == set(versioning.data_tags(workspace.registry_dir))

    # The batches were selected with the run's select params, scored by the run's model.
    client = tracking.client(workspace)
    ui_versions = {str(v.version): v for v in client.search_model_versions(f"name = '{UI_MODEL}'")}
    for meta in new_batches:
        assert (meta.strategy, meta.n_items, meta.seed) == ("margin", 20, 5)
        assert meta.champion_version in ui_versions
    # Every model of the run was trained with the run's train params and gated; the file's model got nothing new.
    for version in ui_versions.values():
        assert client.get_run(version.run_id).data.params["max_depth"] == "3"
        assert version.tags.get("gate.decision") in ("promote", "reject")
    assert len(client.search_model_versions(f"name = '{default_model}'")) == 3  # seed + the two first cycles
    assert workspace.params().train.model_name == default_model  # the file is untouched

    # Every stage of both runs recorded exactly the run's params.
    runs = {}
    for line in load_stage_params(workspace):
        runs.setdefault(line["root_flow_run_id"], []).append(line)
    last_two = list(runs.values())[-2:]
    for stages in last_two:
        assert {s["stage"] for s in stages} >= {"production", "capture", "select", "export", "import", "dataset", "train", "gate"}
        for line in stages:
            params = line["params"]
            if "train" in params:
                assert params["train"]["model_name"] == UI_MODEL, line["stage"]
            if "select" in params:
                assert params["select"]["strategy"] == "margin"
            if "export" in params:
                assert params["export"]["simulated"]["error_rate"] == 0.3, line["stage"]
    # ...and the import really used the run's annotators: about 30% of the new labels are wrong.
    truth = pd.read_parquet(workspace.simulator_dir / "oracle.parquet").set_index("item_id")["label"]
    answers = pd.concat([BatchStore(workspace).final_labels(m.batch_id) for m in new_batches])
    wrong = (answers.set_index("item_id")["label"] != truth.reindex(answers["item_id"]).to_numpy()).mean()
    assert wrong > 0.1


def test_a_cycle_killed_after_its_dataset_step_is_completed_by_the_next(prefect_api, workspace):
    from labelloop.flows import stages
    from labelloop.flows.cycle import active_learning_cycle

    root = str(workspace.root)
    active_learning_cycle(root)
    # The stages of a cycle that died right after its dataset step: data-v3 tagged, no model, no history row.
    for flow in (stages.production_flow, stages.capture_flow, stages.select_flow, stages.export_flow, stages.import_flow):
        flow(root)
    assert stages.dataset_flow(root).tag == "data-v3"
    assert "data-v3" not in {h.data_tag for h in load_history(workspace)}

    active_learning_cycle(root)
    history = load_history(workspace)
    assert [h.data_tag for h in history] == ["data-v1", "data-v2", "data-v3", "data-v4"]
    name = workspace.params().train.model_name
    for tag in ("data-v3", "data-v4"):
        model = tracking.find_version(workspace, name, tag, train.params_hash(workspace.params().train))
        assert model is not None and model.tags.get("gate.decision") in ("promote", "reject"), tag
    # Rerun-safe: another cycle adds exactly one row.
    active_learning_cycle(root)
    assert len(load_history(workspace)) == 5


def test_a_registry_off_its_production_line_stops_the_cycle_before_any_write(prefect_api, workspace):
    from labelloop.flows.cycle import active_learning_cycle

    root = str(workspace.root)
    registry = workspace.registry_dir
    params_before = workspace.params_path.read_text()
    # `dvc exp run -S train.max_depth=8` in the live registry leaves params.yaml changed.
    workspace.params_path.write_text(params_before.replace("max_depth: 4", "max_depth: 8"))
    with pytest.raises(Exception, match="params.yaml") as error:
        active_learning_cycle(root)
    assert "checkout" in str(error.value)
    assert BatchStore(workspace).list() == [] and versioning.data_tags(registry) == ["data-v1"]
    assert not list(workspace.predictions_dir.rglob("*.parquet"))
    workspace.params_path.write_text(params_before)

    # `git checkout data-v1` in the live registry: detached HEAD.
    versioning.git(registry, "checkout", "-q", "data-v1")
    with pytest.raises(Exception, match="main"):
        active_learning_cycle(root)
    assert versioning.data_tags(registry) == ["data-v1"]
    versioning.git(registry, "checkout", "-q", "main")
    assert active_learning_cycle(root).data_tag == "data-v2"
    assert versioning.git(registry, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_reruns_say_what_they_found_and_a_changed_gate_rule_is_not_silently_ignored(prefect_api, workspace):
    from labelloop.config import GateParams
    from labelloop.flows import stages
    from labelloop.flows.cli import app

    root = str(workspace.root)
    runner = CliRunner()
    first = runner.invoke(app, ["train", "-w", root])
    assert first.exit_code == 0, first.output
    assert "trained version 1 on data-v1" in first.output
    again = runner.invoke(app, ["train", "-w", root])
    assert "version 1 already trained on data-v1" in again.output
    assert runner.invoke(app, ["gate", "-w", root]).exit_code == 0
    up_to_date = runner.invoke(app, ["dataset", "-w", root])
    assert "data-v1 up to date" in up_to_date.output

    decision = stages.gate_flow(root, GateParams(min_delta=0.05))
    assert decision.promote  # the serving champion's decision stands...
    text = " ".join(decision.reasons)
    assert "already champion" in text and "decision stands" in text
    assert "min_delta" in text and "changed" in text  # ...and the changed rule is named, not ignored


def test_select_override_to_null_keeps_its_type(prefect_api, workspace):
    from labelloop.flows.cli import app

    result = CliRunner().invoke(app, ["select", "-w", str(workspace.root), "--set", "select.calibration=null"])
    assert "got 'None'" not in result.output
    assert result.exit_code == 0, result.output


def test_demo_never_replaces_a_workspace_it_did_not_create(workspace):
    from labelloop.flows.cli import DEMO_MARKER, app

    before = sorted(p.relative_to(workspace.root) for p in workspace.root.rglob("*"))
    result = CliRunner().invoke(app, ["demo", "--workspace", str(workspace.root), "--cycles", "1"])
    assert result.exit_code == 2
    assert str(workspace.root) in result.output and "did not create" in result.output
    assert sorted(p.relative_to(workspace.root) for p in workspace.root.rglob("*")) == before

    # A demo workspace that a run holds is not replaced either.
    (workspace.state_dir / DEMO_MARKER).write_text("{}")
    with lock_held_elsewhere(workspace):
        busy = CliRunner().invoke(app, ["demo", "--workspace", str(workspace.root), "--cycles", "1"])
    assert busy.exit_code == 2 and "holds" in busy.output
    assert workspace.exists()
