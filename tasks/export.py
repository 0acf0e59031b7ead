from prefect import task

from labelloop.config import ExportParams
from labelloop.stages import export
from labelloop.tasks.environment import open_workspace
from labelloop.tasks.vendor import workspace_vendor


@task(name="export-batches", retries=3, retry_delay_seconds=[2, 10, 30])
def export_batches(workspace: str, params: ExportParams) -> list[str]:
    """Send selected batches to the vendor (idempotent per batch id, so a retry is safe)."""
    ws = open_workspace(workspace)
    return export.export_batches(ws, params, workspace_vendor(ws, params))
