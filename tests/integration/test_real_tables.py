"""`init` then three cycles, no manual encoding, on the tables teams bring (issue 14's "done when"):
churn (numeric + categorical), fine-food reviews (text) and a table with an id column and missing values.

Real Prefect API, MLflow, git + DVC and GX, through the same parent flow `labelloop cycle` runs. Row
counts are cut (the full tables are the benchmarks' job) so the three take about a minute in all.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.adapters import tracking, versioning
from labelloop.history import load_history

pytestmark = pytest.mark.slow

# ../shared/datasets beside the checkout (the project's data), or the machine's copy when the checkout is elsewhere (CI clones).
_CANDIDATES = [Path(__file__).resolve().parents[2].parent / "shared" / "datasets", Path("/work/shared/datasets")]
DATASETS = next((p for p in _CANDIDATES if p.exists()), _CANDIDATES[0])


def _id_and_missing_table(n=1500, seed=0):
    """An exported table as teams have them: class-sorted, a row id first, holes in the numbers and the codes."""
    rng = np.random.default_rng(seed)
    label = np.sort(rng.choice(["benign", "malignant"], n, p=[0.6, 0.4]))
    sick = label == "malignant"
    frame = pd.DataFrame({
        "patient_id": np.arange(1000, 1000 + n),
        "mean radius": rng.normal(12, 2, n) + 4 * sick,
        "mean texture": rng.normal(18, 4, n) + 2 * sick,
        "clinic": rng.choice(["north", "south", "east"], n).astype(object),
        "label": label,
    })
    frame.loc[rng.random(n) < 0.15, "mean radius"] = np.nan
    frame.loc[rng.random(n) < 0.10, "clinic"] = None
    return frame


def _source(name: str, tmp_path: Path) -> Path:
    if name == "id_missing":
        frame = _id_and_missing_table()
    else:
        frame = pd.read_parquet(DATASETS / f"{name}.parquet").sample(n=1500, random_state=0)
    path = tmp_path / f"{name}.parquet"
    frame.to_parquet(path)
    return path


@pytest.mark.parametrize(("name", "roles"), [
    ("churn", {"state": "categorical", "international_plan": "categorical", "total_day_minutes": "numeric"}),
    ("fine_foods", {"text": "text"}),
    ("id_missing", {"patient_id": "id", "mean radius": "numeric", "clinic": "categorical"}),
])
def test_init_then_three_cycles_on_a_real_table(name, roles, prefect_api, tmp_path):
    from labelloop.apps.init import init_workspace
    from labelloop.config import Params
    from labelloop.flows.cycle import active_learning_cycle

    if not DATASETS.exists() and name != "id_missing":
        pytest.skip(f"{DATASETS} is not on this machine")
    params = Params().with_overrides(
        dataset={"source": str(_source(name, tmp_path))}, production={"rows_per_cycle": 300},
        select={"batch_size": 40, "audit_fraction": 0}, train={"n_estimators": 40, "max_depth": 4},  # exact row counts
    )
    ws = init_workspace(tmp_path / "ws", params)
    schema = ws.schema()
    assert {c: schema.column(c).role for c in roles} == roles

    records = [active_learning_cycle(str(ws.root)) for _ in range(3)]

    assert [r.data_tag for r in records] == ["data-v2", "data-v3", "data-v4"]
    labeled = pd.read_parquet(ws.labeled_path)
    assert len(labeled) == params.dataset.seed_size + 3 * 40 and labeled.item_id.is_unique
    # Nothing was encoded on the way: the labelled set holds the raw values of every stored column.
    for column in schema.categorical_columns + schema.text_columns:
        assert labeled[column].dropna().map(type).eq(str).all(), column
    if name == "id_missing":
        assert labeled["mean radius"].isna().any()  # missing values reached training, as missing
        assert labeled["patient_id"].notna().all()  # the id travelled with the rows
    history = load_history(ws)
    assert len(history) == 4 and all(h.champion_accuracy is not None for h in history)
    champion = tracking.alias_version(ws, params.train.model_name if params.train.model_name != "labelloop-classifier"
                                      else ws.params().train.model_name, tracking.CHAMPION)
    assert champion is not None
    model = tracking.load_model(ws, ws.params().train.model_name, champion)
    holdout = pd.read_parquet(ws.holdout_path)
    accuracy = float((model.predict(holdout) == holdout["label"].to_numpy()).mean())
    majority = float(holdout["label"].value_counts(normalize=True).iloc[0])
    assert accuracy > majority  # it learned from the roles it was given, not a constant
    if name == "id_missing":
        names = " ".join(model.pipeline_.named_steps["features"].get_feature_names_out())
        assert "patient_id" not in names
    assert versioning.data_tags(ws.registry_dir)[-1] == "data-v4"
