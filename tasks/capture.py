from prefect import task

from labelloop.config import CaptureParams
from labelloop.stages import capture
from labelloop.tasks.environment import open_workspace


@task(name="capture-low-confidence")
def capture_predictions(workspace: str, params: CaptureParams) -> capture.CaptureReport:
    return capture.capture(open_workspace(workspace), params)
