from prefect import task

from labelloop import batches
from labelloop.adapters import tracking
from labelloop.config import SelectParams, TrainParams
from labelloop.workspace import Workspace


@task(name="select-batch")
def select_batch(workspace: str, params: SelectParams, train: TrainParams) -> batches.BatchMeta | None:
    """Score the pool with the current champion and write the next batch."""
    ws = Workspace.at(workspace)
    champion = tracking.champion_model(ws, train.model_name)
    version, model = champion if champion else (None, None)
    rescore = (lambda frame: tracking.predict_in_batches(model, frame)) if model is not None else None
    context = batches.selection_context(ws, params, train, rescore)
    return batches.select_batch(ws, params, rescore=rescore, champion_version=version, context=context)
