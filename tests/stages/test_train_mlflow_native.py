"""MLflow-native models (issue 14): what the train stage registers is the plain scikit-learn pipeline, with a
signature typed per schema role and string labels out, loadable by `mlflow.pyfunc` without labelloop — in a
fresh virtual environment — and the same pipeline `dvc repro` trains. One real workspace per module, made from
a support-ticket table with an id, a nullable numeric, a nullable categorical and a text column."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.adapters import tracking
from labelloop.config import Params, TrainParams
from labelloop.schema import conform
from labelloop.stages import train
from tests.conftest import clone_workspace
from tests.stages.test_train import mixed_table

XGB = TrainParams(estimator="xgboost", n_estimators=20, max_depth=3)
# A request as a client sends it: nulls everywhere a value may be missing, and a country never seen in training.
ROWS = [
    {"amount": 75.0, "country": "fr", "text": "refund invoice the app today again please"},
    {"amount": None, "country": None, "text": None},
    {"amount": 12.5, "country": "zz", "text": "crash error when opening my account screen"},
    {"amount": np.nan, "country": "us", "text": "love great thanks the app today"},
]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A workspace made from the ticket table, with an XGBoost challenger registered; (workspace, result)."""
    from labelloop.apps.init import init_workspace

    root = tmp_path_factory.mktemp("mixed")
    source = root / "tickets.parquet"
    mixed_table(n=500).to_parquet(source)
    params = Params().with_overrides(dataset={"source": str(source), "seed_size": 200},
                                     train=XGB.model_dump(mode="json"))
    workspace = init_workspace(root / "ws", params)
    params_train = workspace.params().train
    return workspace, params_train, train.train_challenger(workspace, params_train)


def _model_uri(workspace, params: TrainParams, version: str) -> str:
    tracking.client(workspace)  # points MLflow at the workspace's store
    return f"models:/{params.model_name}/{version}"


def test_the_registered_model_is_the_plain_pipeline_with_a_typed_signature_and_string_output(mixed):
    import mlflow

    workspace, params, result = mixed
    schema = workspace.schema()
    assert (schema.id_columns, schema.numeric_columns, schema.categorical_columns, schema.text_columns) == (
        ["ticket_id"], ["amount"], ["country"], ["text"])
    uri = _model_uri(workspace, params, result.version)
    info = mlflow.models.get_model_info(uri)
    inputs = {spec["name"]: spec["type"] for spec in info.signature.inputs.to_dict()}
    assert inputs == {"amount": "double", "country": "string", "text": "string"}  # no id column, no label
    assert [spec["type"] for spec in info.signature.outputs.to_dict()] == ["string"]
    flavor = info.flavors["sklearn"]
    assert flavor["serialization_format"] == "skops"
    assert flavor["skops_trusted_types"] and all(tracking.is_safe_type(t) for t in flavor["skops_trusted_types"])
    assert info.metadata["labelloop"]["columns"]["amount"] == {"role": "numeric", "nullable": True}
    pipeline = mlflow.sklearn.load_model(uri)
    assert type(pipeline).__module__.startswith("sklearn.") and [n for n, _ in pipeline.steps] == ["features", "classifier"]
    run = tracking.client(workspace).get_run(result.run_id)
    assert (run.data.tags["estimator"], run.data.tags["model_serialization"]) == ("XGBClassifier", "skops")
    requirements = Path(mlflow.artifacts.download_artifacts(f"{uri}/requirements.txt")).read_text()
    assert "skops==" in requirements and "xgboost==" in requirements and "labelloop" not in requirements
    version = tracking.client(workspace).get_model_version(params.model_name, result.version)
    assert version.description.startswith(f"XGBClassifier trained on {result.data_tag} (200 labels); holdout accuracy ")
    assert f"macro-F1 {result.metrics['macro_f1']:.3f}" in version.description


def test_pyfunc_predicts_string_labels_for_rows_with_nulls_and_an_unseen_category(mixed):
    import mlflow

    workspace, params, result = mixed
    schema = workspace.schema()
    uri = _model_uri(workspace, params, result.version)
    pyfunc = mlflow.pyfunc.load_model(uri)
    wrapper = tracking.load_model(workspace, params.model_name, result.version)
    expected = wrapper.predict(conform(pd.DataFrame(ROWS), schema))
    # pandas' own inference (str columns with NaN for the nulls), and object columns holding None (labelloop's form)
    for frame in (pd.DataFrame(ROWS), pd.DataFrame(ROWS).astype({"country": object, "text": object})):
        predicted = pyfunc.predict(frame)
        assert [type(p) for p in predicted] == [str] * len(ROWS)
        assert list(predicted) == list(expected)
    # Probabilities: the same artifact through the scikit-learn flavour, columns in `classes_` order.
    pipeline = mlflow.sklearn.load_model(uri)
    probas = pipeline.predict_proba(pd.DataFrame(ROWS))
    np.testing.assert_allclose(probas.sum(axis=1), 1.0, rtol=1e-6)  # float32 probabilities
    assert list(pipeline.classes_) == schema.class_names
    np.testing.assert_allclose(probas, wrapper.predict_proba(conform(pd.DataFrame(ROWS), schema)), atol=1e-6)
    with pytest.raises(mlflow.exceptions.MlflowException, match="amount"):  # every feature column must be present
        pyfunc.predict(pd.DataFrame(ROWS).drop(columns=["amount"]))


def test_load_model_wraps_the_pipeline_with_the_workspace_schema_and_caches_it(mixed):
    workspace, params, result = mixed
    model = tracking.load_model(workspace, params.model_name, result.version)
    assert model is tracking.load_model(workspace, params.model_name, result.version)
    holdout = pd.read_parquet(workspace.holdout_path)
    assert model.predict_proba(holdout).shape == (len(holdout), 3)
    assert model.transform(holdout.head(5)).shape[0] == 5
    assert train.evaluate(model, holdout, workspace.schema()).metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])


# -- MLflow-native records (issue 15): the data version as dataset inputs, plots under common names, the gate's
# decision in the version's description ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_run(mixed):
    """A second training run on the same data version (other params): a new run and version."""
    workspace, params, _ = mixed
    return train.train_challenger(workspace, params.model_copy(update={"n_estimators": params.n_estimators + 1}))


def test_a_training_run_logs_its_data_version_and_the_holdout_as_dataset_inputs(mixed, tmp_path):
    import mlflow
    import yaml
    from mlflow import MlflowClient

    workspace, _, result = mixed
    run = MlflowClient(tracking_uri=tracking.mlflow_uri(workspace.tracking_uri)).get_run(result.run_id)
    inputs = {found.dataset.name: found for found in run.inputs.dataset_inputs}
    assert set(inputs) == {result.data_tag, "holdout-v1"}
    registry = workspace.registry_dir.resolve()
    for name, path, context, rows in ((result.data_tag, "data/labeled.parquet", "training", 200),
                                      ("holdout-v1", "data/holdout.parquet", "evaluation", len(pd.read_parquet(
                                          workspace.holdout_path)))):
        found = inputs[name]
        assert {tag.key: tag.value for tag in found.tags}["mlflow.data.context"] == context
        pointer = yaml.safe_load((registry / f"{path}.dvc").read_text())  # unchanged since both tags
        assert found.dataset.digest == pointer["outs"][0]["md5"]  # DVC's content hash
        assert found.dataset.source_type == "dvc"
        assert json.loads(found.dataset.source) == {"uri": f"{registry}@{name}", "repo": str(registry), "rev": name,
                                                    "path": path}
        assert json.loads(found.dataset.profile)["num_rows"] == rows
        assert "label" in found.dataset.schema
    # The source is loadable: DVC fetches the file at that tag.
    loaded = mlflow.data.get_source(inputs[result.data_tag]).load(str(tmp_path))
    pd.testing.assert_frame_equal(pd.read_parquet(loaded), pd.read_parquet(workspace.labeled_path))


def test_every_training_run_logs_its_plots_under_the_same_artifact_names(mixed, second_run):
    workspace, _, result = mixed
    mlflow_client = tracking.client(workspace)
    assert second_run.created and second_run.run_id != result.run_id

    def plots(run_id: str) -> set[str]:
        return {found.path for found in mlflow_client.list_artifacts(run_id, train.PLOTS_DIR)}

    assert plots(result.run_id) == plots(second_run.run_id) == set(train.PLOT_ARTIFACTS)


def test_the_gate_writes_its_decision_and_reasons_into_the_version_description(mixed, second_run):
    from labelloop.config import GateParams
    from labelloop.stages import gate

    workspace, params, result = mixed
    mlflow_client = tracking.client(workspace)
    mlflow_client.set_registered_model_alias(params.model_name, tracking.CHAMPION, result.version)
    mlflow_client.set_registered_model_alias(params.model_name, tracking.CHALLENGER, second_run.version)
    decision = gate.evaluate_gate(workspace, params.model_name, GateParams())
    assert decision.reasons and decision.challenger_version == second_run.version
    trained = mlflow_client.get_model_version(params.model_name, second_run.version).description
    for _ in range(2):  # a rerun rewrites the same section, never a second one
        gate.record_decision(workspace, params.model_name, decision)
        description = mlflow_client.get_model_version(params.model_name, second_run.version).description
        assert description.startswith(f"{trained}\n\n**Gate: {decision.label}** ({decision.primary_metric} ")
        assert f"of champion version {result.version})" in description and description.count("**Gate: ") == 1
        assert all(f"\n- {reason}" in description for reason in decision.reasons)
    assert mlflow_client.get_model_version(params.model_name, result.version).description.count("**Gate: ") == 0


def _fresh_venv(root: Path) -> Path:
    """A venv that sees this venv's packages (a plain path line in a .pth file: the site-packages' own .pth
    files, among them labelloop's editable install, are not processed) — so no labelloop; no network."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    (Path(purelib) / "parent_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


LOAD_AND_PREDICT = """
import json, sys
import mlflow, pandas as pd
uri, rows = sys.argv[1], json.loads(sys.argv[2])
frame = pd.DataFrame(rows)
labels = mlflow.pyfunc.load_model(uri).predict(frame)
pipeline = mlflow.sklearn.load_model(uri)
print(json.dumps({"labels": [str(x) for x in labels], "types": sorted({type(x).__name__ for x in labels}),
                  "classes": [str(c) for c in pipeline.classes_],
                  "proba": pipeline.predict_proba(frame).tolist(),
                  "labelloop_imported": sorted(m for m in sys.modules if m.startswith("labelloop"))}))
"""


@pytest.mark.slow
def test_the_champion_loads_and_predicts_in_a_fresh_venv_without_labelloop(mixed, tmp_path):
    workspace, params, result = mixed
    tracking.client(workspace).set_registered_model_alias(params.model_name, tracking.CHAMPION, result.version)
    python = _fresh_venv(tmp_path)
    cwd = tmp_path / "elsewhere"  # not the checkout: nothing importable from the working directory
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MLFLOW_TRACKING_URI"] = workspace.tracking_uri

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                              check=False)

    missing = run("-c", "import labelloop")
    assert missing.returncode != 0 and "No module named 'labelloop'" in missing.stderr
    done = run("-c", LOAD_AND_PREDICT, f"models:/{params.model_name}@champion", json.dumps(ROWS))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["labelloop_imported"] == [] and out["types"] == ["str"]
    schema = workspace.schema()
    wrapper = tracking.load_model(workspace, params.model_name, result.version)
    assert out["labels"] == list(wrapper.predict(conform(pd.DataFrame(ROWS), schema)))
    assert out["classes"] == schema.class_names
    np.testing.assert_allclose(out["proba"], wrapper.predict_proba(conform(pd.DataFrame(ROWS), schema)), atol=1e-6)


def test_dvc_stages_train_and_evaluate_the_same_pipeline_on_a_mixed_schema(mixed, tmp_path):
    import skops.io

    workspace, _, result = mixed
    copy = clone_workspace(workspace, tmp_path / "ws")  # the stages write model/ and metrics.json into the registry
    registry = copy.registry_dir
    assert train.stage_validate(registry)["success"]
    path = train.stage_train(registry)
    assert path == registry / "model" / "model.skops"
    recorded = json.loads((registry / "model" / train.SERIALIZATION_FILE).read_text())
    assert recorded["format"] == "skops" and recorded["skops_trusted_types"] == sorted(skops.io.get_untrusted_types(file=path))
    model = train.load_pipeline_model(registry)
    assert type(model.pipeline_).__name__ == "Pipeline" and list(model.classes_) == copy.schema().class_names
    metrics = train.stage_evaluate(registry)
    assert metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert metrics["log_loss"] == pytest.approx(result.metrics["log_loss"])


def test_a_dvc_model_from_an_older_labelloop_is_refused_with_what_to_do(mixed, tmp_path):
    workspace, _, _ = mixed
    copy = clone_workspace(workspace, tmp_path / "ws")
    (copy.registry_dir / "model").mkdir()
    (copy.registry_dir / "model" / "model.skops").write_bytes(b"")  # an old model/: no serialization.json beside it
    with pytest.raises(tracking.IncompatibleModel, match=r"older labelloop .*dvc repro --force train"):
        train.load_pipeline_model(copy.registry_dir)
