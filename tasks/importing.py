from prefect import task

from labelloop.config import ExportParams, ImportParams, TrainParams
from labelloop.stages import importing
from labelloop.tasks import events
from labelloop.tasks.environment import open_workspace
from labelloop.tasks.vendor import workspace_vendor


@task(name="import-labels", retries=3, retry_delay_seconds=[2, 10, 30])
def import_labels(workspace: str, params: ImportParams, export: ExportParams,
                  train: TrainParams | None = None) -> list[importing.ImportReport]:
    """Fetch, archive, validate and aggregate the vendor's answers (a rerun recomputes the same labels); `train`
    is the run's model settings (the label-error scan's out-of-fold models). Labels that landed are then
    announced once (`labelloop.labels.imported`, `tasks/events.py`): a rerun that lands nothing sends nothing."""
    ws = open_workspace(workspace)
    reports = importing.import_labels(ws, params, workspace_vendor(ws, export), train=train)
    events.announce_labels(ws)
    return reports
