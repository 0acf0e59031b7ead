from prefect import task

from labelloop.apps import serving
from labelloop.config import ProductionParams
from labelloop.stages import production
from labelloop.tasks.environment import open_workspace


@task(name="serve-traffic")
def serve_traffic(workspace: str, params: ProductionParams, model_name: str) -> dict:
    """The champion scores the next slice of traffic through the serving code path; predictions go to the log."""
    ws = open_workspace(workspace)
    return production.serve_traffic(ws, params.rows_per_cycle, lambda X, ids: serving.score_for_log(ws, model_name, X, ids))
