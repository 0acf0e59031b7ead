"""The `labelloop` CLI, through Typer's runner (same process, real workspace)."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from labelloop.flows.cli import app, parse_overrides

runner = CliRunner()


COMMANDS = [[], ["init"], ["demo"], ["cycle"], ["production"], ["capture"], ["select"], ["export"], ["import"],
            ["dataset"], ["train"], ["gate"], ["status"], ["strategies"], ["data", "versions"], ["data", "rollback"],
            ["model", "rollback"], ["model", "history"], ["serve"], ["deploy"], ["lineage"], ["simulate"],
            ["pipeline", "validate"], ["pipeline", "train"], ["pipeline", "evaluate"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    exempt = ("init", "strategies", "data", "model", "simulate", "pipeline")
    if (command and command[0] not in exempt) or command == ["data", "versions"]:
        assert "--workspace" in result.output


def test_overrides_parse_nested_keys_and_yaml_values():
    assert parse_overrides(["select.batch_size=50", "export.simulated.error_rate=0.1", "import.min_agreement=0.6"]) == {
        "select": {"batch_size": 50}, "export": {"simulated": {"error_rate": 0.1}}, "import_": {"min_agreement": 0.6}}


def test_init_with_a_bad_override_names_the_key_and_creates_nothing(tmp_path):
    result = runner.invoke(app, ["init", str(tmp_path / "ws"), "--set", "select.strategy=best"])
    assert result.exit_code == 2
    assert "select.strategy" in result.output and "margin" in result.output
    assert not (tmp_path / "ws").exists()


def test_stage_on_a_missing_workspace_says_how_to_create_one(tmp_path):
    result = runner.invoke(app, ["capture", "--workspace", str(tmp_path / "nowhere")])
    assert result.exit_code != 0
    assert "labelloop init" in str(result.output) + str(result.exception)


def test_select_from_any_pool_file_prints_seconds_and_peak_memory(tmp_path):
    rng = np.random.default_rng(0)
    n = 500
    probas = rng.dirichlet(np.ones(3), size=n)
    pool = pd.DataFrame({"prediction_id": [f"p{i}" for i in range(n)], "f1": rng.normal(size=n), "f2": rng.normal(size=n)})
    for i, c in enumerate("abc"):
        pool[f"proba_{c}"] = probas[:, i]
    pool.to_parquet(tmp_path / "pool.parquet")
    out = tmp_path / "batch.parquet"
    result = runner.invoke(app, ["select", "--pool", str(tmp_path / "pool.parquet"), "--strategy", "entropy",
                                 "--batch-size", "20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "seconds:" in result.output and "peak memory:" in result.output
    batch = pd.read_parquet(out)
    entropy = -(probas * np.log(probas)).sum(axis=1)
    assert set(batch.prediction_id) == {f"p{i}" for i in np.argsort(-entropy)[:20]}


def test_select_pool_with_an_unknown_strategy_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["select", "--pool", str(tmp_path / "x.parquet"), "--strategy", "best",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown strategy 'best'" in result.output


def test_data_versions_lists_tags(workspace):
    result = runner.invoke(app, ["data", "versions", "--workspace", str(workspace.root)])
    assert result.exit_code == 0 and "data-v1" in result.output


def test_simulate_writes_curves_summary_and_plot(tmp_path):
    from labelloop.apps.init import shipped_dataset_path

    data = tmp_path / "small.csv"
    pd.read_parquet(shipped_dataset_path()).sample(700, random_state=0).to_csv(data, index=False)
    out = tmp_path / "sim"
    result = runner.invoke(app, ["simulate", "--data", str(data), "--strategies", "random,margin", "--seed-size", "30",
                                 "--batch-size", "40", "--rounds", "2", "--repeats", "1", "--audit-fraction", "0",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    curves = pd.read_csv(out / "curves.csv")
    assert sorted(curves.strategy.unique()) == ["margin", "random"]
    assert sorted(curves.n_labels.unique()) == [30, 70, 110]
    assert (out / "summary.json").exists() and (out / "learning_curves.png").exists()
    assert "margin" in result.output


def test_simulate_with_an_unknown_metric_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["simulate", "--data", str(tmp_path / "x.csv"), "--metric", "auc", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--metric" in result.output


def test_model_rollback_moves_champion_back_and_is_not_undone_by_resume_gate(workspace):
    from labelloop.adapters import tracking
    from labelloop.config import GateParams
    from labelloop.stages import dataset, gate, train
    from tests.stages.test_dataset import _fake_imported_batch

    # The workspace's own model name (labelloop-<workspace id>): the CLI reads it from params.yaml.
    fast = workspace.params().train.model_copy(update={"n_estimators": 20, "max_depth": 3})
    first = train.train_challenger(workspace, fast)
    gate.promote(workspace, fast.model_name, first.version)
    _fake_imported_batch(workspace, "batch-0001-aaaaaa", n=40)
    dataset.update_dataset(workspace)
    second = train.train_challenger(workspace, fast)
    decision = gate.evaluate_gate(workspace, fast.model_name, GateParams(min_delta=-1.0))
    gate.record_decision(workspace, fast.model_name, decision)
    gate.promote(workspace, fast.model_name, second.version)

    result = runner.invoke(app, ["model", "rollback", "--reason", "bad labels in batch-0001", "--workspace", str(workspace.root)])
    assert result.exit_code == 0, result.output
    assert tracking.alias_version(workspace, fast.model_name, tracking.CHAMPION) == first.version
    tags = tracking.client(workspace).get_model_version(fast.model_name, second.version).tags
    assert tags["rolled_back"] == "bad labels in batch-0001"
    assert gate.resume_gate(workspace, fast.model_name) is None  # the next cycle leaves the rollback alone
    assert tracking.alias_version(workspace, fast.model_name, tracking.CHAMPION) == first.version


def _table_with_an_id_and_missing_values(path):
    rng = np.random.default_rng(0)
    n = 300
    label = np.sort(rng.choice(["no", "yes"], n))  # class-sorted: the row number leaks the label
    pd.DataFrame({
        "patient_id": np.arange(n), "age": np.where(rng.random(n) < 0.1, np.nan, rng.normal(50, 9, n)),
        "plan": rng.choice(["basic", "gold"], n), "label": label,
    }).to_csv(path, index=False)


def test_init_prints_the_inferred_schema_and_warns_about_the_id(tmp_path):
    _table_with_an_id_and_missing_values(tmp_path / "t.csv")
    result = runner.invoke(app, ["init", str(tmp_path / "ws"), "--source", str(tmp_path / "t.csv")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["column", "role", "type", "nullable", "detail"]
    assert any(line.split()[:2] == ["patient_id", "id"] for line in lines)
    assert any(line.split()[:4] == ["age", "numeric", "float64", "yes"] for line in lines)
    assert any(line.split()[:2] == ["plan", "categorical"] for line in lines)
    assert "'patient_id' looks like an id" in result.stderr and "alone predicts the label" in result.stderr


def test_init_role_options_override_and_unknown_columns_are_named(tmp_path):
    _table_with_an_id_and_missing_values(tmp_path / "t.csv")
    result = runner.invoke(app, ["init", str(tmp_path / "ws"), "--source", str(tmp_path / "t.csv"),
                                 "--categorical-col", "patient_id", "--drop-col", "age"])
    assert result.exit_code == 0, result.output
    assert any(line.split()[:2] == ["patient_id", "categorical"] for line in result.stdout.splitlines())
    assert any(line.split()[:2] == ["age", "ignored"] for line in result.stdout.splitlines())
    result = runner.invoke(app, ["init", str(tmp_path / "ws2"), "--source", str(tmp_path / "t.csv"), "--text-col", "nope"])
    assert result.exit_code == 2
    assert "error: schema overrides name columns not in the table: ['nope']" in result.stderr
    assert not (tmp_path / "ws2").exists()


class _Stop(Exception):
    pass


@pytest.mark.parametrize(("given", "strategy"), [([], "auto"), (["--set", "select.strategy=margin"], "margin")])
def test_the_demo_runs_auto_with_an_audit_sample_unless_told_otherwise(tmp_path, monkeypatch, given, strategy):
    import labelloop.apps.init
    from labelloop.flows import cli

    seen = []

    def init_workspace(root, params, retry=None):
        seen.append(params)
        raise _Stop

    monkeypatch.setattr(cli, "_quiet_environment", lambda *a, **k: None)
    monkeypatch.setattr(labelloop.apps.init, "init_workspace", init_workspace)
    result = runner.invoke(app, ["demo", "--workspace", str(tmp_path / "ws"), *given])
    assert isinstance(result.exception, _Stop), result.output
    assert seen[0].select.strategy == strategy and seen[0].select.audit_fraction == 0.1


def test_strategies_lists_auto_with_its_default_arms():
    result = runner.invoke(app, ["strategies"])
    assert result.exit_code == 0, result.output
    auto = next(line for line in result.output.splitlines() if line.split()[:1] == ["auto"])
    assert "bandit" in auto and "random, margin, hybrid" in auto


def test_select_pool_with_auto_says_in_one_line_why_not_and_what_is_allowed(tmp_path):
    result = runner.invoke(app, ["select", "--pool", str(tmp_path / "x.parquet"), "--strategy", "auto",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "needs a workspace" in lines[0] and "margin" in lines[0] and "random" in lines[0]
    assert not (tmp_path / "o").exists()
