from prefect import task

from labelloop.stages import capture
from labelloop.config import CaptureParams
from labelloop.workspace import Workspace


@task(name="capture-low-confidence")
def capture_predictions(workspace: str, params: CaptureParams) -> capture.CaptureReport:
    return capture.capture(Workspace.at(workspace), params)
