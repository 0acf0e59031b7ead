"""Scale-out flow: capture + scoring over a partitioned prediction log as Dask work (prefect-dask).

One Prefect task per log part, run by `DaskTaskRunner` on a LocalCluster (default) or on an existing
Dask scheduler (`scheduler_address`, e.g. tcp://10.0.0.5:8786). The per-part logic and the merge are
`labelloop.adapters.dask.scan_partition` / `merge_scans`, the same code a single process runs.
With a workspace, rows are validated against its schema (categorical, text and id columns, nullability;
unseen categories counted per column); without one, the pool's numeric columns are the features.

    from labelloop.flows.distributed import scale_out_scan_flow
    scale_out_scan_flow(pool="workspace/predictions", workspace="workspace", batch_size=100)
"""

from __future__ import annotations

import time

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from labelloop.adapters import dask as distributed


@task(name="scan-log-part", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def scan_part_task(path: str, log_schema: dict, threshold: float, strategy: str, top_k: int, workspace: str | None,
                   model_name: str | None) -> distributed.PartScan:
    """One part; `log_schema` is the schema as JSON (`Schema.to_json`: a parameter Prefect can record)."""
    from labelloop.schema import Schema

    model = None
    if workspace and model_name:
        from labelloop.adapters import tracking
        from labelloop.tasks.environment import open_workspace

        champion = tracking.champion_model(open_workspace(workspace), model_name)  # cached per worker process
        model = champion[1] if champion else None
    return distributed.scan_partition(path, Schema.from_json(log_schema), threshold=threshold, strategy=strategy, top_k=top_k,
                                      model=model)


def _schema(pool: str, workspace: str | None) -> dict:
    """The schema the parts are validated against, as JSON: the workspace's, or the pool's numeric columns."""
    if workspace:
        from labelloop.tasks.environment import open_workspace

        return open_workspace(workspace).schema().to_json()
    import pyarrow.parquet as pq

    from labelloop.domain.acquisition.pool import _numeric_schema_columns, default_feature_columns, proba_columns

    schema = pq.read_schema(distributed.list_parts(pool)[0])
    names = list(schema.names)
    features = default_feature_columns(names, numeric=_numeric_schema_columns(schema))
    return distributed.as_schema(features, proba_columns(names)).to_json()


@flow(name="scale-out-scan-parts")
def _scan_parts(parts: list[str], log_schema: dict, threshold: float, strategy: str, top_k: int, workspace: str | None,
                model_name: str | None) -> list[distributed.PartScan]:
    futures = scan_part_task.map(parts, log_schema=unmapped(log_schema), threshold=threshold, strategy=strategy, top_k=top_k,
                                 workspace=workspace, model_name=model_name)
    return [f.result() for f in futures]


@flow(name="scale-out-scan")
def scale_out_scan_flow(pool: str, workspace: str | None = None, threshold: float = 0.9, strategy: str = "margin",
                        batch_size: int = 100, rescore: bool = False, scheduler_address: str | None = None,
                        n_workers: int = 2) -> dict:
    """Validate, filter low-confidence, (re)score and keep the best `batch_size` rows of every part, on Dask."""
    from prefect_dask import DaskTaskRunner

    if scheduler_address:
        runner = DaskTaskRunner(address=scheduler_address)
    else:
        runner = DaskTaskRunner(cluster_class="distributed.LocalCluster",
                                cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "dashboard_address": None})
    parts = distributed.list_parts(pool)
    log_schema = _schema(pool, workspace)
    model_name = None
    if rescore:
        if not workspace:
            raise ValueError("rescore=True needs a workspace (its champion scores the pool)")
        from labelloop.tasks.environment import open_workspace

        model_name = open_workspace(workspace).params().train.model_name
    started = time.perf_counter()
    # prefect-dask's runner is a TaskRunner[PrefectDaskFuture]; with_options is typed for TaskRunner[PrefectFuture].
    scan_parts = _scan_parts.with_options(task_runner=runner)  # type: ignore[arg-type]
    scans = scan_parts(parts, log_schema, threshold, strategy, batch_size, workspace, model_name)
    mode = f"dask ({scheduler_address or f'LocalCluster x{n_workers}'})"
    result = distributed.merge_scans(scans, batch_size, time.perf_counter() - started, mode)
    create_markdown_artifact(key="scale-out-scan", description="capture + scoring on Dask", markdown=(
        f"## Scale-out scan\n\n| | |\n|---|---|\n| parts | {result.parts} |\n| rows read | {result.rows_read} |\n"
        f"| quarantined | {result.rows_quarantined} |\n| low confidence | {result.rows_low_confidence} |\n"
        f"| top candidates | {len(result.top)} |\n| rows/s | {result.rows_per_second:,.0f} |\n| mode | {result.mode} |"
        + "".join(f"\n| unseen categories in `{column}` (drift, kept) | {count} |"
                  for column, count in result.unseen_categories.items())))
    return {"parts": result.parts, "rows_read": result.rows_read, "rows_quarantined": result.rows_quarantined,
            "rows_low_confidence": result.rows_low_confidence, "top_ids": result.top[distributed.ID].tolist(),
            "top_utilities": result.top["utility"].tolist(), "seconds": result.seconds,
            "unseen_categories": result.unseen_categories}
