from prefect import task

from labelloop import batches
from labelloop.config import ExportParams
from labelloop.workspace import Workspace
from labelloop.tasks.vendor import workspace_vendor


@task(name="export-batches", retries=3, retry_delay_seconds=[2, 10, 30])
def export_batches(workspace: str, params: ExportParams) -> list[str]:
    """Send selected batches to the vendor (idempotent per batch id, so a retry is safe)."""
    ws = Workspace.at(workspace)
    return batches.export_batches(ws, params, workspace_vendor(ws, params))
