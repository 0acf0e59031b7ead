from prefect import task

from labelloop.stages import importing as labels
from labelloop.config import ExportParams, ImportParams
from labelloop.workspace import Workspace
from labelloop.tasks.vendor import workspace_vendor


@task(name="import-labels", retries=3, retry_delay_seconds=[2, 10, 30])
def import_labels(workspace: str, params: ImportParams, export: ExportParams) -> list[labels.ImportReport]:
    """Fetch, archive, validate and aggregate the vendor's answers (a rerun recomputes the same labels)."""
    ws = Workspace.at(workspace)
    return labels.import_labels(ws, params, workspace_vendor(ws, export))
