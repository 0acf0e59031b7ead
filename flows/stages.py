"""One Prefect flow per stage. Each reads the durable output of the stage before it, so any can run alone.

Every flow takes the workspace path and, optionally, its `params.yaml` section as a typed model:
left empty it is read from the workspace, given (from the UI or the CLI) it overrides the file for
this run only and is validated together with the rest of the file.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from labelloop.capture import CaptureReport
from labelloop.config import (
    CaptureParams,
    ExportParams,
    GateParams,
    ImportParams,
    Params,
    ProductionParams,
    SelectParams,
    TrainParams,
)
from labelloop.dataset import DatasetVersion
from labelloop.gate import GateDecision
from labelloop.reports import batch_markdown, gate_markdown, gate_run_links, import_markdown
from labelloop.tracking import TrainResult
from labelloop.workspace import Workspace
from tasks.capture import capture_predictions
from tasks.dataset import update_dataset
from tasks.export import export_batches
from tasks.gate import decide, promote, record
from tasks.importing import import_labels
from tasks.production import serve_traffic
from tasks.select import select_batch
from tasks.train import train_challenger

DEFAULT_WORKSPACE = "./workspace"


def resolve(workspace: str, **overrides) -> tuple[Workspace, Params]:
    """The workspace and its params with this run's overrides, validated as one file."""
    ws = Workspace.at(workspace).require()
    return ws, ws.params().with_overrides(**overrides)


@flow(name="production")
def production_flow(workspace: str = DEFAULT_WORKSPACE, params: ProductionParams | None = None) -> dict:
    ws, p = resolve(workspace, production=params)
    return serve_traffic(str(ws.root), p.production, p.train.model_name)


@flow(name="capture")
def capture_flow(workspace: str = DEFAULT_WORKSPACE, params: CaptureParams | None = None) -> CaptureReport:
    ws, p = resolve(workspace, capture=params)
    return capture_predictions(str(ws.root), p.capture)


@flow(name="select")
def select_flow(workspace: str = DEFAULT_WORKSPACE, params: SelectParams | None = None) -> str | None:
    from labelloop.batches import BatchStore

    ws, p = resolve(workspace, select=params)
    meta = select_batch(str(ws.root), p.select, p.train)
    if meta is None:
        return None
    items = BatchStore(ws).items(meta.batch_id)
    create_markdown_artifact(key="batch", markdown=batch_markdown(meta, items, p.export.price_per_label),
                             description=f"batch {meta.batch_id}")
    return meta.batch_id


@flow(name="export")
def export_flow(workspace: str = DEFAULT_WORKSPACE, params: ExportParams | None = None) -> list[str]:
    ws, p = resolve(workspace, export=params)
    return export_batches(str(ws.root), p.export)


@flow(name="import")
def import_flow(workspace: str = DEFAULT_WORKSPACE, params: ImportParams | None = None) -> list:
    ws, p = resolve(workspace, import_=params)
    reports = import_labels(str(ws.root), p.import_, p.export)
    create_markdown_artifact(key="import", markdown=import_markdown(reports), description="labels imported")
    return reports


@flow(name="dataset")
def dataset_flow(workspace: str = DEFAULT_WORKSPACE) -> DatasetVersion:
    ws, _ = resolve(workspace)
    return update_dataset(str(ws.root))


@flow(name="train")
def train_flow(workspace: str = DEFAULT_WORKSPACE, params: TrainParams | None = None) -> TrainResult:
    ws, p = resolve(workspace, train=params)
    return train_challenger(str(ws.root), p.train)


@flow(name="gate")
def gate_flow(workspace: str = DEFAULT_WORKSPACE, params: GateParams | None = None) -> GateDecision:
    ws, p = resolve(workspace, gate=params)
    decision = decide(str(ws.root), p.train.model_name, p.gate)
    if decision.challenger_version == decision.champion_version:
        return decision  # a rerun after promotion: the decision on that version stands as recorded
    record(str(ws.root), p.train.model_name, decision)
    if decision.promote:
        promote(str(ws.root), p.train.model_name, decision)
    links = gate_run_links(ws, p.train.model_name, decision)
    create_markdown_artifact(key="gate", markdown=gate_markdown(decision, ws.tracking_uri, links), description=f"gate: {decision.label}")
    return decision
