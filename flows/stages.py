"""One Prefect flow per stage. Each reads the durable output of the stage before it, so any can run alone.

Every flow takes the workspace path and, optionally, its `params.yaml` section as a typed model:
left empty it is read from the workspace, given (from the UI or the CLI) it overrides the file for
this run only and is validated together with the rest of the file.

Inside a cycle each stage runs as a task of the cycle's flow run (`stage_task`): the same function, named
after the stage, with its own logs and artifacts under the cycle's run and its inner tasks nested under it.
A flow run per stage cost about 0.4 s of Prefect bookkeeping each, nine times a cycle (docs/benchmarks.md,
"Where a cycle's time goes"); a stage stays rerunnable on its own through its flow and deployment.

Run by the cycle, a stage gets `resolved`: the cycle's params (file + the run's overrides), resolved
once, so every stage of one run uses exactly the same settings — select rescoring with the model that
train names, the gate judging that model, the import with that run's vendor settings. Every stage
holds the workspace lock, refuses a registry that is off its production line, and records the params it
used (`reports/stage-params.jsonl`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from prefect import Flow, Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from labelloop.adapters import versioning
from labelloop.apps.reports import batch_markdown, gate_markdown, gate_run_links, import_markdown, record_stage_params
from labelloop.config import (
    DEFAULT_MODEL_NAME,
    CaptureParams,
    ExportParams,
    GateParams,
    ImportParams,
    Params,
    ProductionParams,
    SelectParams,
    TrainParams,
)
from labelloop.core.lock import workspace_lock
from labelloop.domain.gate import GateDecision
from labelloop.stages.capture import CaptureReport
from labelloop.stages.dataset import DatasetVersion
from labelloop.stages.monitor import monitored_columns
from labelloop.stages.train import TrainResult
from labelloop.tasks.capture import capture_predictions
from labelloop.tasks.dataset import update_dataset
from labelloop.tasks.environment import open_workspace
from labelloop.tasks.export import export_batches
from labelloop.tasks.gate import bandit_reward, decide, promote, record
from labelloop.tasks.importing import import_labels
from labelloop.tasks.production import serve_traffic
from labelloop.tasks.select import select_batch
from labelloop.tasks.train import train_challenger
from labelloop.workspace import Workspace

DEFAULT_WORKSPACE = "./workspace"
P = ParamSpec("P")
R = TypeVar("R")


def resolve(workspace: str, resolved: Params | None = None, **overrides) -> tuple[Workspace, Params]:
    """The workspace and the params of this run: `resolved` (a parent run's) or the file as it is now,
    plus overrides, validated as one file.

    A section given as a model overrides only the fields that were set on it: a custom run from the
    Prefect UI that fills in `batch_size` changes that one key and keeps the rest of params.yaml (not the
    model's class defaults)."""
    ws = open_workspace(workspace).require()
    return ws, (resolved if resolved is not None else ws.params()).with_overrides(
        **{name: set_fields(name, value) for name, value in overrides.items()})


def set_fields(name: str, section):
    """The keys a section model was given (nested models alike), as a dict of overrides; None stays None."""
    if not isinstance(section, BaseModel):
        return section
    given = section.model_dump(mode="json", exclude_unset=True)
    if name == "train" and given.get("model_name") == DEFAULT_MODEL_NAME:
        given.pop("model_name")  # the default name means this workspace's model (init renamed it), never the literal
    return given


@contextmanager
def stage_run(stage: str, sections: tuple[str, ...], workspace: str, resolved: Params | None,
              **overrides) -> Iterator[tuple[Workspace, Params]]:
    """Resolve the params, hold the workspace lock, clear what a killed run left in the registry, check
    the registry is on its production line (before any write), and record which params this stage ran with."""
    ws, p = resolve(workspace, resolved, **overrides)
    with workspace_lock(ws):
        # The lock proves no other labelloop process runs here: clear what a killed one left inside git/DVC.
        versioning.recover_registry(ws.registry_dir)
        versioning.require_production_line(ws.registry_dir)
        record_stage_params(ws, stage, p, sections, _flow_run_ids())
        yield ws, p


def stage_task(stage_flow: Flow[P, R]) -> Task[P, R]:
    """The stage `stage_flow` as a task of the calling flow's run (the cycle, the retrain flow): the same
    function and name, no flow run of its own. No retries here (the stage's I/O tasks retry with backoff
    inside) and no cache: a stage always runs, and is idempotent on its own durable state."""
    from prefect.cache_policies import NO_CACHE

    return task(name=stage_flow.name, cache_policy=NO_CACHE)(stage_flow.fn)


def _flow_run_ids() -> dict[str, str | None]:
    """The stage's flow run (the cycle's, when it runs as a task of one), the root run, and its task run if any."""
    from prefect.runtime import flow_run, task_run

    return {"flow_run_id": flow_run.id, "root_flow_run_id": flow_run.root_flow_run_id, "task_run_id": task_run.id}


@flow(name="production")
def production_flow(workspace: str = DEFAULT_WORKSPACE, params: ProductionParams | None = None,
                    resolved: Params | None = None) -> dict:
    with stage_run("production", ("production", "train"), workspace, resolved, production=params) as (ws, p):
        return serve_traffic(str(ws.root), p.production, p.train.model_name)


@flow(name="capture")
def capture_flow(workspace: str = DEFAULT_WORKSPACE, params: CaptureParams | None = None,
                 resolved: Params | None = None) -> CaptureReport:
    with stage_run("capture", ("capture",), workspace, resolved, capture=params) as (ws, p):
        report = capture_predictions(str(ws.root), p.capture)
        create_markdown_artifact(key="capture", markdown=report.markdown(), description=report.summary())
        logger = get_run_logger()
        (logger.warning if report.parts_lost or report.parts_pending else logger.info)(report.summary())
        return report


@flow(name="select")
def select_flow(workspace: str = DEFAULT_WORKSPACE, params: SelectParams | None = None,
                resolved: Params | None = None) -> str | None:
    from labelloop.batches import BatchStore

    with stage_run("select", ("select", "train"), workspace, resolved, select=params) as (ws, p):
        meta = select_batch(str(ws.root), p.select, p.train)
        if meta is None:
            return None
        items = BatchStore(ws).items(meta.batch_id)
        if meta.bandit:
            get_run_logger().info(f"auto: batch drawn by {meta.bandit['arm']} (p = {meta.bandit['probability']:.2f})")
        create_markdown_artifact(key="batch", markdown=batch_markdown(meta, items, p.export.price_per_label),
                                 description=f"batch {meta.batch_id}")
        return meta.batch_id


@flow(name="export")
def export_flow(workspace: str = DEFAULT_WORKSPACE, params: ExportParams | None = None,
                resolved: Params | None = None) -> list[str]:
    with stage_run("export", ("export",), workspace, resolved, export=params) as (ws, p):
        return export_batches(str(ws.root), p.export, p.train)


@flow(name="import")
def import_flow(workspace: str = DEFAULT_WORKSPACE, params: ImportParams | None = None,
                resolved: Params | None = None) -> list:
    with stage_run("import", ("import", "export"), workspace, resolved, import_=params) as (ws, p):
        reports = import_labels(str(ws.root), p.import_, p.export, p.train)
        create_markdown_artifact(key="import", markdown=import_markdown(reports), description="labels imported")
        return reports


@flow(name="dataset")
def dataset_flow(workspace: str = DEFAULT_WORKSPACE, resolved: Params | None = None) -> DatasetVersion:
    with stage_run("dataset", ("dataset",), workspace, resolved) as (ws, _):
        version = update_dataset(str(ws.root))
        get_run_logger().info(describe_version(version))
        return version


@flow(name="train")
def train_flow(workspace: str = DEFAULT_WORKSPACE, params: TrainParams | None = None,
               resolved: Params | None = None) -> TrainResult:
    with stage_run("train", ("train",), workspace, resolved, train=params) as (ws, p):
        result = train_challenger(str(ws.root), p.train, p.gate)  # gate.seed_twins: the gate's seed twins
        get_run_logger().info(describe_training(result))
        return result


@flow(name="gate")
def gate_flow(workspace: str = DEFAULT_WORKSPACE, params: GateParams | None = None,
              resolved: Params | None = None, expected_challenger: str | None = None) -> GateDecision:
    """Decide, record, move the alias. `expected_challenger` (set by the cycle) is the version this run
    trained: gating any other version fails loudly instead of ending green."""
    with stage_run("gate", ("gate", "train"), workspace, resolved, gate=params) as (ws, p):
        model_name = p.train.model_name
        # The per-segment audit guard groups by the segment monitor's columns (one definition of a segment).
        segments = monitored_columns(ws, p) if p.gate.max_segment_accuracy_drop < 1 else []
        decision = decide(str(ws.root), model_name, p.gate, segments)
        if expected_challenger is not None and decision.challenger_version != str(expected_challenger):
            raise RuntimeError(
                f"the gate would judge version {decision.challenger_version} of {model_name!r}, but this run trained "
                f"version {expected_challenger}; nothing recorded or promoted (was the challenger alias moved by another run?)")
        # select.strategy auto: the batches this challenger trained on earn their arm's reward (once each).
        paid = bandit_reward(str(ws.root), model_name, decision.challenger_version, p.select.bandit)
        if paid:
            get_run_logger().info(paid)
        if decision.challenger_version == decision.champion_version:
            # A rerun after promotion: the decision on that version stands as recorded (reasons say why).
            get_run_logger().info("; ".join(decision.reasons))
            return decision
        record(str(ws.root), model_name, decision, p.gate)
        if decision.promote:
            promote(str(ws.root), model_name, decision)
        links = gate_run_links(ws, model_name, decision)
        create_markdown_artifact(key="gate", markdown=gate_markdown(decision, ws.tracking_uri, links),
                                 description=f"gate: {decision.label}")
        return decision


# Each stage as a task of the calling flow's run (see the module docstring): the flow's own function, once.
production_stage = stage_task(production_flow)
capture_stage = stage_task(capture_flow)
select_stage = stage_task(select_flow)
export_stage = stage_task(export_flow)
import_stage = stage_task(import_flow)
dataset_stage = stage_task(dataset_flow)
train_stage = stage_task(train_flow)
gate_stage = stage_task(gate_flow)


def describe_version(version: DatasetVersion) -> str:
    """One line a person reads after the dataset stage: what changed, or that nothing had to."""
    if not version.created:
        return f"{version.tag} up to date ({version.n_rows} rows; no new or corrected labels)"
    changes = [f"+{version.n_new} rows" + (f" from {', '.join(version.batches)}" if version.batches else "")]
    if version.relabels:
        changes.append(f"{len(version.relabels)} relabelled")
    if version.readmitted:
        changes.append(f"re-admitted {', '.join(version.readmitted)}")
    if version.excluded:
        changes.append(f"excluded {', '.join(e.get('batch_id', '?') for e in version.excluded)}")
    return f"{version.tag} created: {version.n_rows} rows ({'; '.join(changes)})"


def describe_training(result: TrainResult) -> str:
    if result.created:
        return f"trained version {result.version} on {result.data_tag}"
    return f"version {result.version} already trained on {result.data_tag} with these params; nothing retrained"
