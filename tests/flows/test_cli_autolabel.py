"""`labelloop autolabel withdraw` through Typer's runner (same process, real workspace)."""

import pandas as pd
from typer.testing import CliRunner

from labelloop.core.io import write_parquet
from labelloop.flows.cli import app
from labelloop.stages import autolabel, dataset

runner = CliRunner()


def test_withdraw_help_names_cycle_and_batch():
    result = runner.invoke(app, ["autolabel", "withdraw", "--help"])
    assert result.exit_code == 0 and "--cycle" in result.output and "--batch" in result.output


def test_withdraw_a_cycle_then_again(workspace, monkeypatch):
    ws = workspace
    write_parquet(ws.pool_path, pd.read_parquet(ws.simulator_dir / "traffic.parquet").iloc[:100])
    params = ws.params().with_overrides(autolabel={"enabled": True, "holdback_share": 0.0})
    # Thresholds as if earlier checks had qualified every class: the stage's own choice is tested in tests/stages.
    monkeypatch.setattr(autolabel, "choose_thresholds", lambda classes, *a, **k: _decision(classes))

    class Sure:  # every row class 0, confidence 0.99
        def predict_proba(self, frame):
            out = [[0.99] + [0.01 / (len(ws.schema().class_names) - 1)] * (len(ws.schema().class_names) - 1)]
            return pd.DataFrame(out * len(frame)).to_numpy()

    report = autolabel.run_autolabel(ws, params, cycle=3, model=Sure(), champion_version="1")
    assert report.n_auto == 100
    dataset.update_dataset(ws)
    result = runner.invoke(app, ["autolabel", "withdraw", "--workspace", str(ws.root), "--cycle", "3"])
    assert result.exit_code == 0, result.output
    assert f"withdrew {report.batch_id} ({report.n_auto} auto-labels)" in result.output
    again = runner.invoke(app, ["autolabel", "withdraw", "--workspace", str(ws.root), "--cycle", "3"])
    assert again.exit_code == 0 and "already withdrawn" in again.output
    unknown = runner.invoke(app, ["autolabel", "withdraw", "--workspace", str(ws.root), "--cycle", "9"])
    assert unknown.exit_code != 0 and "no auto-labels for cycle 9" in unknown.output


def _decision(classes):
    from labelloop.domain.autolabel import AutolabelDecision

    return AutolabelDecision(dict.fromkeys(classes, 0.95), [], 200, 0.99, 0.985, False, "test thresholds",
                             min_precision=0.98, confidence=0.95)
