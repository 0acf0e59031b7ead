from prefect import task

from labelloop.config import ExportParams, TrainParams
from labelloop.stages import export
from labelloop.tasks.environment import open_workspace
from labelloop.tasks.vendor import workspace_vendor


@task(name="export-batches", retries=3, retry_delay_seconds=[2, 10, 30])
def export_batches(workspace: str, params: ExportParams, train: TrainParams | None = None) -> list[str]:
    """Send selected batches to the vendor (idempotent per batch id, so a retry is safe); `train` is the run's
    model settings (gold questions' held-out guesses)."""
    ws = open_workspace(workspace)
    return export.export_batches(ws, params, workspace_vendor(ws, params), train=train)
