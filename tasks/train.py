from prefect import task

from labelloop.config import GateParams, TrainParams
from labelloop.stages import train
from labelloop.tasks.environment import open_workspace


@task(name="train-challenger", retries=2, retry_delay_seconds=[5, 30])
def train_challenger(workspace: str, params: TrainParams, gate: GateParams | None = None) -> train.TrainResult:
    """One MLflow run per (data tag, params); a retry returns the version already registered (and its seed
    twins, `gate.seed_twins`, already kept)."""
    return train.train_challenger(open_workspace(workspace), params, gate)


@task(name="needs-retrain", retries=2, retry_delay_seconds=[2, 10])
def needs_retrain(workspace: str, params: TrainParams, data_tag: str) -> bool:
    """True unless a model for this data version and these params has already been gated."""
    return train.needs_retrain(open_workspace(workspace), params, data_tag)
