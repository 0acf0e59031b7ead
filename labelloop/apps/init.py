"""`labelloop init`: a new workspace from a labelled source table.

The source is split once, with a fixed seed, into
- a holdout (fixed, versioned under its own tag, never labelled into the training set),
- a seed set (the first data version, `data-v1`),
- the rest: with `simulate_traffic`, an unlabelled production stream plus its hidden truth
  (the oracle the simulated annotators answer from).
"""

from __future__ import annotations

import shutil
import uuid
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from labelloop.adapters import versioning
from labelloop.columns import ITEM_ID, LABEL
from labelloop.config import DEFAULT_MODEL_NAME, Params, dump_params
from labelloop.core.io import write_json, write_parquet, write_text
from labelloop.core.redact import redact_uri
from labelloop.core.retry import DEFAULT_RETRY, RetryPolicy
from labelloop.model import AUTO, resolve_estimator
from labelloop.schema import InferredSchema, Schema, SchemaOverrides, as_text, conform, infer_schema
from labelloop.workspace import Workspace, WorkspaceError

# The datasets the package ships for `labelloop demo --dataset NAME` (see labelloop/resources/README.md).
SHIPPED_DATASETS: dict[str, str] = {"satellite": "satellite.parquet", "reviews": "reviews.parquet"}


def shipped_dataset_path(name: str = "satellite") -> Path:
    if name not in SHIPPED_DATASETS:
        raise ValueError(f"unknown shipped dataset {name!r}; allowed: {', '.join(SHIPPED_DATASETS)}")
    return Path(str(resources.files("labelloop.resources").joinpath(SHIPPED_DATASETS[name])))


def schema_warnings(workspace: Workspace) -> list[str]:
    """What init warned about the source's columns (ids, leakage, near-constant, dropped)."""
    import json

    return list(json.loads(workspace.ready_marker.read_text()).get("schema_warnings", []))


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    raise ValueError(f"dataset {path}: unsupported format {path.suffix!r}; allowed: .parquet, .csv, .tsv")


def schema_overrides(params: Params) -> SchemaOverrides:
    section = params.schema_
    return SchemaOverrides(tuple(section.id_columns), tuple(section.numeric_columns), tuple(section.categorical_columns),
                           tuple(section.text_columns), tuple(section.drop_columns))


def prepare_source(source: pd.DataFrame, params: Params) -> tuple[pd.DataFrame, InferredSchema]:
    """The source as the workspace stores it (item_id, ids and features in canonical types, label) and its schema."""
    inferred = infer_schema(source, params.dataset.label_column, schema_overrides(params))
    schema = inferred.schema
    frame = conform(source, schema, schema.stored_columns)
    for column in schema.id_columns:  # ids as text: one type whatever the source used
        frame[column] = frame[column].astype(object)
    frame[LABEL] = [as_text(v) for v in source[params.dataset.label_column].to_numpy(dtype=object)]
    frame = frame.reset_index(drop=True)
    frame.insert(0, ITEM_ID, [f"r{i:07d}" for i in range(len(frame))])
    # The model's input is the schema's; the stored label column is always `label`.
    return frame, InferredSchema(Schema(schema.columns, schema.class_names, LABEL), inferred.warnings)


def init_workspace(path: str | Path, params: Params | None = None, simulate_traffic: bool = True,
                   retry: RetryPolicy = DEFAULT_RETRY) -> Workspace:
    """Create a workspace in a new or empty directory; its first versions are pushed with `retry`.

    Refuses an existing workspace and any other non-empty directory (init never writes into, nor
    removes, what it did not create). An init that fails part-way removes everything it created, so
    the next attempt starts clean.
    """
    workspace = Workspace.at(path)
    if workspace.exists():
        raise WorkspaceError(f"{workspace.root} already holds a labelloop workspace; choose another path or delete it")
    if workspace.root.exists() and (not workspace.root.is_dir() or any(workspace.root.iterdir())):
        raise WorkspaceError(f"{workspace.root} exists and is not an empty directory; `labelloop init` needs a new or "
                             "empty directory (it neither writes into nor removes what it did not create)")
    params = params or Params()
    source_path = Path(params.dataset.source) if params.dataset.source else shipped_dataset_path()
    frame, inferred = prepare_source(read_table(source_path), params)
    schema = inferred.schema
    if params.train.estimator == AUTO:
        # Written out, so every later run (and a reader of params.yaml) sees which estimator the workspace uses.
        params = params.with_overrides(train={"estimator": resolve_estimator(AUTO, schema)})

    # The directory init creates first (the root itself, or its highest missing parent): what a failure removes.
    first_created = next((p for p in reversed([workspace.root, *workspace.root.parents]) if not p.exists()), None)
    try:
        _create(workspace, params, frame, schema, source_path, simulate_traffic, retry, inferred.warnings)
    except BaseException:  # a failure or an interrupt: leave nothing half-made behind
        if first_created is not None:
            shutil.rmtree(first_created, ignore_errors=True)
        else:  # the root existed, empty: everything in it is ours
            for child in list(workspace.root.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    return workspace


def _create(workspace: Workspace, params: Params, frame: pd.DataFrame, schema: Schema, source_path: Path,
            simulate_traffic: bool, retry: RetryPolicy, schema_warnings: list[str]) -> None:
    # The id namespaces this workspace's projects on a shared vendor server (batch ids repeat across
    # workspaces) and its registered model on a shared tracking server.
    workspace_id = uuid.uuid4().hex[:12]
    if params.train.model_name == DEFAULT_MODEL_NAME:
        params = params.with_overrides(train={"model_name": f"labelloop-{workspace_id}"})
    remote_url = params.dataset.remote_url
    if remote_url and redact_uri(remote_url) != remote_url:
        # Its credentials live in the registry's git-ignored .dvc/config.local (set_remote), never in params.yaml.
        params = params.with_overrides(dataset={"remote_url": redact_uri(remote_url)})

    workspace.root.mkdir(parents=True, exist_ok=True)
    for directory in (workspace.predictions_dir, workspace.batches_dir, workspace.state_dir, workspace.quarantine_dir,
                      workspace.reports_dir, workspace.artifacts_dir):
        directory.mkdir(parents=True, exist_ok=True)
    write_text(workspace.gitignore_path, "*\n")

    rest, holdout = train_test_split(
        frame, test_size=params.dataset.holdout_fraction, stratify=frame["label"], random_state=params.dataset.split_seed
    )
    seed_size = min(params.dataset.seed_size, len(rest) - 1)
    stream, seed = train_test_split(rest, test_size=seed_size, stratify=None, random_state=params.dataset.split_seed)

    versioning.init_registry(workspace.registry_dir, workspace.dvc_remote_dir)
    if remote_url:
        versioning.set_remote(workspace.registry_dir, remote_url)
    write_text(workspace.params_path, dump_params(params))
    write_json(workspace.schema_path, schema.to_json())
    write_text(workspace.pipeline_path, pipeline_template())
    write_parquet(workspace.holdout_path, holdout.sort_values(ITEM_ID).reset_index(drop=True))
    versioning.commit_version(workspace.registry_dir, [workspace.holdout_path], "Fixed holdout set", tag=versioning.HOLDOUT_TAG,
                              retry=retry)

    seed = seed.sort_values(ITEM_ID).reset_index(drop=True)
    seed["batch_id"] = "seed"
    seed["source"] = "seed"
    write_parquet(workspace.labeled_path, seed)
    from labelloop.stages.dataset import write_card

    write_card(workspace, seed)
    versioning.commit_version(workspace.registry_dir, [workspace.labeled_path], "data-v1: seed set", tag=None, retry=retry)

    if simulate_traffic:
        shuffled = stream.sample(frac=1.0, random_state=np.random.RandomState(params.dataset.split_seed)).reset_index(drop=True)
        write_parquet(workspace.traffic_path, shuffled.drop(columns=["label"]))
        # The seed set is in the oracle too: the simulated crowd answers gold questions drawn from it.
        oracle = pd.concat([shuffled[[ITEM_ID, "label"]], seed[[ITEM_ID, "label"]]], ignore_index=True)
        write_parquet(workspace.oracle_path, oracle)
    # The marker last: its presence means a complete workspace.
    write_json(workspace.ready_marker, {"created_from": str(source_path), "classes": schema.class_names,
                                        "workspace_id": workspace_id, "schema_warnings": schema_warnings})


def pipeline_template() -> str:
    """The DVC pipeline every workspace registry carries (the repo's top-level dvc.yaml)."""
    return resources.files("labelloop.resources").joinpath("dvc.yaml").read_text()
