"""A cycle with `select.strategy: auto` through a real Prefect API and MLflow: the arm in the batch meta, its reward
paid at the gate once, on the challenger's run in MLflow."""

import json

import pytest

from labelloop.adapters import tracking
from labelloop.batches import BatchStore
from labelloop.config import SelectParams
from labelloop.stages import bandit

pytestmark = pytest.mark.slow


def test_a_cycle_with_auto_records_the_arm_and_pays_its_reward_once(prefect_api, workspace):
    from labelloop.flows.cycle import active_learning_cycle

    params = SelectParams(strategy="auto", batch_size=15, seed=2, audit_fraction=0.2)
    record = active_learning_cycle(str(workspace.root), select=params)
    meta = BatchStore(workspace).get(record.batch_id)
    assert meta.strategy == "auto" and meta.bandit["arm"] in {"random", "margin", "hybrid"}
    state = json.loads(bandit.state_path(workspace).read_text())
    assert [r["batch_id"] for r in state["records"]] == [meta.batch_id]
    version = state["records"][0]["detail"]["model_version"]
    assert meta.bandit["measured_by"] == version and meta.bandit["reward"] == state["records"][0]["reward"]
    assert record.bandit is not None and record.bandit.startswith(f"arm {meta.bandit['arm']} (p ")
    assert f"| {record.bandit}" in record.line()  # the cycle's printed line names the arm (and its reward)
    model_name = workspace.params().train.model_name
    run = tracking.client(workspace).get_run(tracking.client(workspace).get_model_version(model_name, version).run_id)
    assert run.data.tags["bandit_arm"] == meta.bandit["arm"]
    assert ("bandit_reward" in run.data.metrics) == (meta.bandit["reward"] is not None)
    # The gate's reward step run again (a crashed cycle resumed): nothing paid twice.
    bandit.record_rewards(workspace, model_name, version, params.bandit)
    assert json.loads(bandit.state_path(workspace).read_text()) == state
    assert workspace.params().select.strategy == "hybrid"  # a per-run override: the file is untouched
