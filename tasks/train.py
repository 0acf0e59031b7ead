from prefect import task

from labelloop.adapters import tracking
from labelloop.config import TrainParams
from labelloop.workspace import Workspace


@task(name="train-challenger", retries=2, retry_delay_seconds=[5, 30])
def train_challenger(workspace: str, params: TrainParams) -> tracking.TrainResult:
    """One MLflow run per (data tag, params); a retry returns the version already registered."""
    return tracking.train_challenger(Workspace.at(workspace), params)
