"""The MLflow adapter: the URI MLflow is given, one clear error for a tracking server that fails, and a
registry that holds no model yet (a real store, SQLite in the workspace). The registry with models is
exercised by the stages that write it (tests/stages/test_train.py, tests/stages/test_gate.py)."""

from __future__ import annotations

import pytest

from labelloop.adapters import tracking
from labelloop.workspace import Workspace


def test_a_password_in_the_tracking_uri_moves_to_mlflows_own_variables():
    environ: dict[str, str] = {}
    assert tracking.mlflow_uri("https://ann%40team:p%3Ass@mlflow.example:5000/x", environ) == "https://mlflow.example:5000/x"
    assert environ == {"MLFLOW_TRACKING_USERNAME": "ann@team", "MLFLOW_TRACKING_PASSWORD": "p:ss"}
    untouched: dict[str, str] = {}
    for uri in ("https://mlflow.example:5000", "sqlite:///tmp/mlflow.db"):
        assert tracking.mlflow_uri(uri, untouched) == uri
    assert untouched == {}


def test_a_failed_request_is_one_tracking_unavailable_naming_the_server_and_other_errors_pass(tmp_path):
    from mlflow.exceptions import MlflowException

    @tracking.server_faults("reading something")
    def refused(workspace: Workspace) -> None:
        raise MlflowException("API request to http://127.0.0.1:9/api failed with exception "
                              "HTTPConnectionPool(...): NewConnectionError(... Connection refused)")

    @tracking.server_faults("reading something")
    def missing(workspace: Workspace) -> None:
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: no such model")

    on_server = Workspace.at(tmp_path, tracking_server="http://127.0.0.1:9")
    with pytest.raises(tracking.TrackingUnavailable) as error:
        refused(on_server)
    assert "MLflow tracking server at http://127.0.0.1:9: reading something failed: connection refused" in str(error.value)
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        missing(on_server)


def test_a_registry_without_the_model_has_no_aliases_no_history_and_says_so(workspace):
    assert tracking.alias_version(workspace, "no-such-model", tracking.CHAMPION) is None
    assert tracking.champion_model(workspace, "no-such-model") is None
    assert tracking.champion_history(workspace, "no-such-model") == []
    assert "has no registered versions yet" in tracking.describe_versions(workspace, "no-such-model")
    with pytest.raises(tracking.UnknownModelVersion, match="no version 'v3'"):
        tracking.resolve_version(workspace, "no-such-model", "v3")


@pytest.mark.parametrize("serialization", ["skops", "cloudpickle"])
def test_a_version_stored_by_an_older_labelloop_is_refused_naming_it_and_saying_to_retrain(workspace, serialization):
    """Before issue 14 the registry held a `labelloop.model.LabelloopClassifier` (skops, or pickled)."""
    import mlflow

    from labelloop.model import LabelloopClassifier

    old = LabelloopClassifier.__new__(LabelloopClassifier)  # the old class's state: no pipeline
    old.__dict__.update(class_names=["a", "b"], n_estimators=10)
    tracking.client(workspace)
    with mlflow.start_run(experiment_id=tracking.experiment_id(workspace)):
        trusted = ["labelloop.model.LabelloopClassifier"] if serialization == "skops" else None
        info = mlflow.sklearn.log_model(old, name="model", serialization_format=serialization, skops_trusted_types=trusted,
                                        pip_requirements=["scikit-learn"])  # given: MLflow's inference runs a subprocess
    version = mlflow.register_model(info.model_uri, "old-model").version
    with pytest.raises(tracking.IncompatibleModel) as error:
        tracking.load_model(workspace, "old-model", version)
    message = str(error.value)
    assert f"model 'old-model' version {version} was stored by an older labelloop" in message
    assert "labelloop.model.LabelloopClassifier" in message and "retrain it: `labelloop train`" in message


def test_the_gate_section_of_a_version_description_states_the_decision_and_reasons_and_replaces_an_earlier_one():
    from labelloop.domain.gate import GateDecision

    trained = "XGBClassifier trained on data-v2 (150 labels); holdout accuracy 0.800"
    first = GateDecision(False, ["accuracy +0.004 is within noise (p 0.31)", "recall of 'bug' drops 0.06"], "accuracy",
                         0.804, 0.8, "3", "2")
    described = tracking.gate_description(trained, first)
    assert described.startswith(trained + "\n\n**Gate: reject** (accuracy 0.804 against 0.8 of champion version 2)")
    assert described.endswith("\n- accuracy +0.004 is within noise (p 0.31)\n- recall of 'bug' drops 0.06")
    again = GateDecision(True, ["re-decided under changed gate rules (min_delta 0.01 → 0.0); was reject"], "accuracy",
                         0.804, 0.8, "3", "2")
    redescribed = tracking.gate_description(described, again)
    assert redescribed.startswith(trained + "\n\n**Gate: promote**") and redescribed.count("**Gate: ") == 1
    assert "within noise" not in redescribed and redescribed.endswith("was reject")
    first_model = tracking.gate_description("", GateDecision(True, ["no champion yet"], "macro_f1", 0.7, None, "1", None))
    assert first_model == "**Gate: promote** (macro_f1 0.7; no champion yet)\n\n- no champion yet"
    assert tracking.gate_description(first_model, again).count("**Gate: ") == 1
    long = tracking.gate_description(trained, GateDecision(False, ["x" * 6000], "accuracy", 0.5, 0.6, "4", "3"))
    assert len(long) == tracking.MAX_DESCRIPTION_CHARS and long.endswith("…") and long.startswith(trained)
