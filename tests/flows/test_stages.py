"""How a stage flow resolves its params: the workspace's params.yaml as it is now, plus only the fields a run
was given (a Prefect UI custom run fills in a few fields of a section; the rest must stay the file's)."""

from __future__ import annotations

from labelloop.config import DEFAULT_MODEL_NAME, SelectParams, TrainParams
from labelloop.flows.stages import resolve, set_fields


def test_only_the_fields_given_override_the_file(workspace):
    assert workspace.params().train.n_estimators == 40  # the template's file; the class default is 200
    _, params = resolve(str(workspace.root), train=TrainParams(max_depth=3),
                        select=SelectParams.model_validate({"hybrid": {"exploit_fraction": 0.5, "quota_fraction": 0.3,
                                                                       "explore_fraction": 0.2}}))
    assert (params.train.max_depth, params.train.n_estimators) == (3, 40)
    assert params.train.model_name == workspace.params().train.model_name
    assert params.select.batch_size == 40 and params.select.hybrid.exploit_fraction == 0.5
    _, unchanged = resolve(str(workspace.root), train=TrainParams(), select=None)
    assert unchanged == workspace.params()


def test_the_default_model_name_means_the_workspaces_model():
    assert set_fields("train", TrainParams(model_name=DEFAULT_MODEL_NAME, n_estimators=5)) == {"n_estimators": 5}
    assert set_fields("train", TrainParams(model_name="mine")) == {"model_name": "mine"}
    assert set_fields("select", {"batch_size": 3}) == {"batch_size": 3} and set_fields("select", None) is None
