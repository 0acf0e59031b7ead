from prefect import task

from labelloop import production, tracking
from labelloop.config import ProductionParams
from labelloop.workspace import Workspace


@task(name="serve-traffic")
def serve_traffic(workspace: str, params: ProductionParams, model_name: str) -> dict:
    """The champion scores the next slice of traffic; its predictions go to the prediction log."""
    ws = Workspace.at(workspace)
    champion = tracking.champion_model(ws, model_name)
    if champion is None:
        raise RuntimeError(f"model {model_name!r} has no champion yet; run the train and gate stages first")
    version, model = champion
    return production.serve_traffic(ws, params.rows_per_cycle, model.predict_proba, version)
