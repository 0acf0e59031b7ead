"""Data versions you can trust: rollbacks that stick, corrections that land, the production line, and a
separate checkout for `dvc repro` / `dvc exp run` — through the real stages (production → capture →
select → export → import → dataset) on a real git + DVC registry, without Prefect."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.adapters import versioning
from labelloop.adapters.vendors import make_vendor
from labelloop.batches import BatchStore
from labelloop.stages import capture, dataset, production
from labelloop.stages import importing as labels
from labelloop.stages.export import export_batches
from labelloop.stages.select import select_batch

VENV_BIN = Path(sys.executable).parent


def _low_confidence_scorer(ws, seed: int):
    """Stands in for the champion: spread-out probabilities, so capture keeps every row."""
    schema = ws.schema()
    rng = np.random.default_rng(seed)

    def score(features, prediction_ids):
        probas = rng.dirichlet(np.ones(len(schema.class_names)) * 5, size=len(features))
        return production.predictions_frame(features, probas, schema, "test", prediction_ids)

    return score


def _round(ws, params, seed: int):
    """One turn of the loop's data half through labelloop's own stage functions; returns (version, batch_id)."""
    production.serve_traffic(ws, params.production.rows_per_cycle, _low_confidence_scorer(ws, seed))
    capture.capture(ws, params.capture)
    meta = select_batch(ws, params.select)
    vendor = make_vendor(params.export, ws.root)
    export_batches(ws, params.export, vendor)
    labels.import_labels(ws, params.import_, vendor)
    return dataset.update_dataset(ws), meta.batch_id


def _params(ws, **export):
    return ws.params().with_overrides(select={"strategy": "margin", "batch_size": 20, "audit_fraction": 0},
                                      **({"export": export} if export else {}))


def _items(ws, batch_id) -> set[str]:
    return set(BatchStore(ws).final_labels(batch_id)["item_id"].astype(str))


def _labeled_ids(ws) -> set[str]:
    return set(pd.read_parquet(ws.labeled_path)["item_id"].astype(str))


def _ids_at(ws, tag) -> set[str]:
    return set(pd.read_parquet(io.BytesIO(versioning.read_at(ws.registry_dir, ws.labeled_path, tag)))["item_id"].astype(str))


def _git_clean(repo) -> bool:
    return versioning.git(repo, "status", "--porcelain") == ""


# -- 1. rollbacks stick -------------------------------------------------------------------------------
def test_a_rollback_sticks_through_two_more_rounds_and_a_readmit_brings_a_batch_back(workspace):
    params = _params(workspace)
    rolled_back = []
    for seed in range(3):
        version, batch_id = _round(workspace, params, seed)
        rolled_back.append(batch_id)
    assert version.tag == "data-v4"
    v1_items = _ids_at(workspace, "data-v1")

    restored = dataset.rollback(workspace, "data-v1")
    assert (restored.tag, restored.n_rows) == ("data-v5", len(v1_items))
    new_batches = []
    for seed in (3, 4):
        version, batch_id = _round(workspace, params, seed)
        new_batches.append(batch_id)
    assert version.tag == "data-v7"
    # Exactly data-v1 plus the two new batches: the rolled-back batches (imported, rechecked each round) stay out.
    assert _labeled_ids(workspace) == v1_items | _items(workspace, new_batches[0]) | _items(workspace, new_batches[1])
    assert pd.read_parquet(workspace.labeled_path)["item_id"].is_unique
    assert dataset.update_dataset(workspace).created is False

    # The exclusions: recorded per batch with their items, committed in the rollback's own version.
    in_force = dataset.exclusions(workspace)
    assert [e["batch_id"] for e in in_force] == rolled_back
    assert all(set(e["item_ids"]) == _items(workspace, e["batch_id"]) and e["excluded_in"] == "data-v5"
               and e["rolled_back_to"] == "data-v1" for e in in_force)
    assert [e["batch_id"] for e in dataset.exclusions_at(workspace, "data-v5")] == rolled_back
    assert dataset.exclusions_at(workspace, "data-v4") == []
    message = versioning.tag_message(workspace.registry_dir, "data-v5")
    assert "back to data-v1" in message and all(b in message for b in rolled_back)
    assert _git_clean(workspace.registry_dir)

    # A re-admit is its own version, with the batch's items back and its exclusion lifted.
    readmitted = dataset.readmit(workspace, rolled_back[1])
    assert readmitted.tag == "data-v8" and readmitted.batches == [rolled_back[1]]
    assert "Re-admit " + rolled_back[1] in versioning.tag_message(workspace.registry_dir, "data-v8")
    assert _labeled_ids(workspace) == (v1_items | _items(workspace, rolled_back[1])
                                       | _items(workspace, new_batches[0]) | _items(workspace, new_batches[1]))
    assert [e["batch_id"] for e in dataset.exclusions(workspace)] == [rolled_back[0], rolled_back[2]]
    assert dataset.update_dataset(workspace).created is False
    assert _git_clean(workspace.registry_dir)


def test_unknown_tags_and_batches_name_what_exists(workspace):
    with pytest.raises(ValueError, match="unknown data tag 'data-v9'; known: data-v1"):
        dataset.rollback(workspace, "data-v9")
    with pytest.raises(ValueError, match=r"no batch 'batch-9'.*excluded batches: \(none\)"):
        dataset.readmit(workspace, "batch-9")


def test_a_second_rollback_to_the_same_version_changes_nothing(workspace):
    _round(workspace, _params(workspace), 0)
    first = dataset.rollback(workspace, "data-v1")
    again = dataset.rollback(workspace, "data-v1")
    assert (first.tag, first.created, again.tag, again.created) == ("data-v3", True, "data-v3", False)
    assert versioning.data_tags(workspace.registry_dir)[-1] == "data-v3"


# -- 2. corrections land -------------------------------------------------------------------------------
def _filedrop_round(ws, params, drop: Path, seed: int, answered_share: float = 1.0, wrong: int = 0):
    """Select and export a batch to a file drop, and the vendor answers (the first `wrong` items wrongly)."""
    production.serve_traffic(ws, params.production.rows_per_cycle, _low_confidence_scorer(ws, seed))
    capture.capture(ws, params.capture)
    meta = select_batch(ws, params.select)
    export_batches(ws, params.export, make_vendor(params.export, ws.root))
    oracle = pd.read_parquet(ws.simulator_dir / "oracle.parquet").set_index("item_id")["label"]
    classes = ws.schema().class_names
    item_ids = sorted(BatchStore(ws).items(meta.batch_id)["item_id"].astype(str))
    answers = []
    for position, item_id in enumerate(item_ids[:int(len(item_ids) * answered_share)]):
        truth = oracle[item_id]
        label = next(c for c in classes if c != truth) if position < wrong else truth
        answers.append({"item_id": item_id, "annotator_id": "ann-1", "label": label})
    _write_labels(drop, meta.batch_id, answers)
    return meta.batch_id, item_ids, answers


def _write_labels(drop: Path, batch_id: str, answers: list[dict]) -> None:
    (drop / batch_id / "labels.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))


def _import(ws, params):
    return labels.import_labels(ws, params.import_, make_vendor(params.export, ws.root))


def test_a_corrected_answer_after_versioning_makes_one_new_version_with_the_relabel_recorded(workspace, tmp_path):
    drop = tmp_path / "drop"
    params = _params(workspace, vendor="filedrop", filedrop_url=str(drop))
    batch_id, item_ids, answers = _filedrop_round(workspace, params, drop, seed=0, wrong=1)
    _import(workspace, params)
    assert dataset.update_dataset(workspace).tag == "data-v2"
    corrected = answers[0]["item_id"]
    wrong_label = answers[0]["label"]
    truth = pd.read_parquet(workspace.simulator_dir / "oracle.parquet").set_index("item_id")["label"][corrected]

    # The vendor corrects the answer: the annotator's later line for the item (the last answer counts).
    _write_labels(drop, batch_id, [*answers, {"item_id": corrected, "annotator_id": "ann-1", "label": truth}])
    reports = _import(workspace, params)
    assert [r.batch_id for r in reports] == [batch_id]
    version = dataset.update_dataset(workspace)
    assert (version.tag, version.created, version.n_new) == ("data-v3", True, 0)
    relabel = {"item_id": corrected, "old_label": wrong_label, "new_label": truth, "batch_id": batch_id, "annotators": ["ann-1"]}
    assert version.relabels == [relabel]
    labeled = pd.read_parquet(workspace.labeled_path).set_index("item_id")
    assert labeled.loc[corrected, "label"] == truth and len(labeled) == 50 + len(item_ids)
    assert dataset.card_at(workspace, "data-v3")["relabels"] == [relabel]
    message = versioning.tag_message(workspace.registry_dir, "data-v3")
    assert f"Relabel 1 item: {corrected} {wrong_label} -> {truth} ({batch_id})" in message
    assert "labelled batches" not in message.lower()
    from labelloop.apps.lineage import data_corrections

    assert data_corrections(workspace, "data-v3")["relabels"] == [{"version": "data-v3", **relabel}]
    assert data_corrections(workspace, "data-v2")["relabels"] == []

    # Nothing changed since: neither the import nor the dataset stage does anything more.
    assert _import(workspace, params) == []
    again = dataset.update_dataset(workspace)
    assert (again.tag, again.created) == ("data-v3", False)


def test_late_rows_are_named_in_the_tag_message(workspace, tmp_path):
    drop = tmp_path / "drop"
    params = _params(workspace, vendor="filedrop", filedrop_url=str(drop))
    batch_id, item_ids, _ = _filedrop_round(workspace, params, drop, seed=0, answered_share=0.5)
    assert _import(workspace, params)[0].status == "partial"
    first = dataset.update_dataset(workspace)
    assert first.tag == "data-v2" and batch_id in versioning.tag_message(workspace.registry_dir, "data-v2")
    oracle = pd.read_parquet(workspace.simulator_dir / "oracle.parquet").set_index("item_id")["label"]
    _write_labels(drop, batch_id, [{"item_id": i, "annotator_id": "ann-1", "label": oracle[i]} for i in item_ids])
    assert _import(workspace, params)[0].status == "imported"
    late = dataset.update_dataset(workspace)
    message = versioning.tag_message(workspace.registry_dir, "data-v3")
    assert f"Add labelled batches {batch_id} ({len(item_ids) - len(item_ids) // 2} late rows)" in message
    assert (late.tag, late.batches, late.n_new) == ("data-v3", [batch_id], len(item_ids) - len(item_ids) // 2)


def test_an_excluded_item_stays_excluded_when_its_answer_is_corrected(workspace, tmp_path):
    drop = tmp_path / "drop"
    params = _params(workspace, vendor="filedrop", filedrop_url=str(drop))
    batch_id, _, answers = _filedrop_round(workspace, params, drop, seed=0, wrong=1)
    _import(workspace, params)
    dataset.update_dataset(workspace)
    dataset.rollback(workspace, "data-v1")
    truth = pd.read_parquet(workspace.simulator_dir / "oracle.parquet").set_index("item_id")["label"][answers[0]["item_id"]]
    _write_labels(drop, batch_id, [*answers, {"item_id": answers[0]["item_id"], "annotator_id": "ann-1", "label": truth}])
    assert [r.batch_id for r in _import(workspace, params)] == [batch_id]  # the correction is imported...
    after = dataset.update_dataset(workspace)
    assert (after.tag, after.created) == ("data-v3", False)  # ...and the excluded batch stays out
    assert _labeled_ids(workspace) == _ids_at(workspace, "data-v1")


def test_a_rollback_past_a_relabel_keeps_the_restored_label_until_a_readmit(workspace, tmp_path):
    drop = tmp_path / "drop"
    params = _params(workspace, vendor="filedrop", filedrop_url=str(drop))
    batch_id, _, answers = _filedrop_round(workspace, params, drop, seed=0, wrong=1)
    _import(workspace, params)
    dataset.update_dataset(workspace)
    item, wrong_label = answers[0]["item_id"], answers[0]["label"]
    truth = pd.read_parquet(workspace.simulator_dir / "oracle.parquet").set_index("item_id")["label"][item]
    _write_labels(drop, batch_id, [*answers, {"item_id": item, "annotator_id": "ann-1", "label": truth}])
    _import(workspace, params)
    assert dataset.update_dataset(workspace).relabels[0]["new_label"] == truth  # data-v3

    restored = dataset.rollback(workspace, "data-v2")  # the correction turned out wrong: back to data-v2's label
    assert restored.tag == "data-v4" and restored.excluded[0]["n_labels_kept"] == 1
    assert "undo relabels of " + batch_id in versioning.tag_message(workspace.registry_dir, "data-v4")
    after = dataset.update_dataset(workspace)
    assert (after.tag, after.created) == ("data-v4", False)
    assert pd.read_parquet(workspace.labeled_path).set_index("item_id").loc[item, "label"] == wrong_label

    readmitted = dataset.readmit(workspace, batch_id)  # a deliberate decision brings the corrected answer back
    assert readmitted.tag == "data-v5" and [r["item_id"] for r in readmitted.relabels] == [item]
    assert pd.read_parquet(workspace.labeled_path).set_index("item_id").loc[item, "label"] == truth


def test_a_batch_past_its_recheck_window_is_not_fetched_again(workspace, tmp_path):
    from datetime import UTC, datetime, timedelta

    drop = tmp_path / "drop"
    params = _params(workspace, vendor="filedrop", filedrop_url=str(drop))
    batch_id, _, answers = _filedrop_round(workspace, params, drop, seed=0, wrong=1)
    _import(workspace, params)
    _write_labels(drop, batch_id, [*answers, {**answers[0], "label": "other"}])
    later = datetime.now(UTC) + timedelta(days=params.import_.recheck_days + 1)
    assert labels.import_labels(workspace, params.import_, make_vendor(params.export, workspace.root), now=later) == []
    assert set(BatchStore(workspace).final_labels(batch_id)["label"]) == {a["label"] for a in answers}


# -- 3. the production line ----------------------------------------------------------------------------
def test_the_production_line_check_names_what_is_wrong_and_how_to_return(workspace):
    repo = workspace.registry_dir
    versioning.require_production_line(repo)  # a fresh workspace is on it

    versioning.git(repo, "checkout", "-q", "data-v1")
    with pytest.raises(versioning.VersioningError) as detached:
        versioning.require_production_line(repo)
    text = str(detached.value)
    assert "detached HEAD (data-v1)" in text and f"git -C {repo} checkout main" in text and "labelloop data checkout" in text
    versioning.git(repo, "checkout", "-q", "main")

    params = workspace.params_path.read_text()
    workspace.params_path.write_text(params.replace("max_depth: 4", "max_depth: 8"))  # what `dvc exp run -S` does
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    with pytest.raises(versioning.VersioningError) as edited:
        versioning.require_production_line(repo)
    text = str(edited.value)
    assert f"git -C {repo} checkout -- params.yaml" in text and "dvc.lock" in text and "Nothing was written" in text
    workspace.params_path.write_text(params)
    (repo / "dvc.lock").unlink()

    # What labelloop and DVC write themselves does not count: data files (ignored), an interrupted
    # version's card and pointer (the next dataset run commits them), DVC's temp files.
    pd.read_parquet(workspace.labeled_path).head(10).to_parquet(workspace.labeled_path)
    (workspace.card_path).write_text("{}\n")
    (repo / ".dvc" / "tmp" / "scratch").write_text("x")
    versioning.require_production_line(repo)


def test_a_cycle_style_write_is_refused_off_the_production_line(workspace):
    versioning.git(workspace.registry_dir, "checkout", "-q", "data-v1")
    with pytest.raises(versioning.VersioningError, match="off its production line"):
        dataset.rollback(workspace, "data-v1")
    assert versioning.data_tags(workspace.registry_dir) == ["data-v1"]


# -- 4. a separate checkout for dvc repro / dvc exp run ------------------------------------------------
def test_data_checkout_is_a_separate_clone_where_dvc_repro_and_exp_run_work(workspace, tmp_path):
    _round(workspace, _params(workspace), 0)
    repo = workspace.registry_dir
    head, live_params = versioning.head_sha(repo), workspace.params_path.read_bytes()
    checkout = versioning.checkout_to(repo, "data-v1", tmp_path / "v1")
    assert (checkout / "data" / "labeled.parquet").read_bytes() == versioning.read_at(repo, workspace.labeled_path, "data-v1")
    for needed in ("dvc.yaml", "params.yaml", "schema.json", "data/holdout.parquet"):
        assert (checkout / needed).exists(), needed

    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1", OMP_NUM_THREADS="1")

    def dvc(*args):
        result = subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=checkout, env=env, capture_output=True, text=True,
                                timeout=600, check=False)  # the assert shows dvc's output
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    dvc("repro")
    metrics = json.loads((checkout / "metrics.json").read_text())
    assert 0 < metrics["accuracy"] <= 1
    assert "up to date" in dvc("status")
    dvc("exp", "run", "-S", "train.max_depth=8")
    experiments = dvc("exp", "show", "--csv", "--param-deps")
    assert "train.max_depth" in experiments.splitlines()[0] and ",8," in experiments

    # The live registry saw none of it: same HEAD, same params, clean, still on its production line.
    assert versioning.head_sha(repo) == head and workspace.params_path.read_bytes() == live_params
    assert _git_clean(repo)
    versioning.require_production_line(repo)

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty directory"):
        versioning.checkout_to(repo, "data-v1", tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="unknown data tag 'data-v9'; known: data-v1, data-v2"):
        versioning.checkout_to(repo, "data-v9", tmp_path / "new")


# -- the command line: one error line naming what exists --------------------------------------------
@pytest.mark.parametrize("args", [["data", "versions", "data-v9"], ["data", "rollback", "data-v9"],
                                  ["data", "readmit", "batch-9"], ["data", "checkout", "data-v9", "--to", "{tmp}/co"]],
                         ids=["versions", "rollback", "readmit", "checkout"])
def test_data_commands_give_one_error_line_for_unknown_tags_and_batches(workspace, tmp_path, args):
    from typer.testing import CliRunner

    from labelloop.flows.cli import app

    saved = dict(os.environ)
    try:
        result = CliRunner().invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args] + ["-w", str(workspace.root)])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    assert ("data-v1" in lines[0]) if args[1] != "readmit" else ("excluded batches: (none)" in lines[0])
