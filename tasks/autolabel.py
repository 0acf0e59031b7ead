from prefect import task

from labelloop.config import Params
from labelloop.stages import autolabel
from labelloop.tasks.environment import open_workspace


@task(name="autolabel")
def run_autolabel(workspace: str, params: Params) -> dict:
    """Auto-label the pool rows the champion is sure of (at thresholds with a measured precision bound) and hold
    back the cycle's check items; the report as a dict."""
    return autolabel.run_autolabel(open_workspace(workspace), params).to_dict()
