from prefect import task

from labelloop.batches import BatchMeta
from labelloop.config import SelectParams, TrainParams
from labelloop.stages import select
from labelloop.tasks.environment import open_workspace


@task(name="select-batch")
def select_batch(workspace: str, params: SelectParams, train: TrainParams) -> BatchMeta | None:
    """Score the pool with the current champion and write the next batch."""
    return select.select_next_batch(open_workspace(workspace), params, train)
