"""Query-by-committee members: models of `train` on bootstrap resamples of the labelled set, one seed each.

Members are built like `train`'s model (LabelloopClassifier.from_params: the schema's pipeline and the
configured estimator, whichever it is), so they disagree only through the data they saw and their seed
(an estimator without a random_state, e.g. logistic regression, differs by its bootstrap alone).
Inference is batched and uses all cores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from labelloop.domain.acquisition.space import take

if TYPE_CHECKING:
    from labelloop.config import TrainParams
    from labelloop.model import LabelloopClassifier
    from labelloop.schema import Schema


def numeric_schema(rows: pd.DataFrame | np.ndarray, class_names: list[str]) -> Schema:
    """The schema of a float matrix (columns x0, x1, ...) or of a frame's columns, all numeric."""
    from labelloop.schema import Schema

    columns = list(map(str, rows.columns)) if isinstance(rows, pd.DataFrame) else [f"x{i}" for i in range(np.shape(rows)[1])]
    return Schema.numeric(columns, class_names)


def train_committee(
    rows: pd.DataFrame | np.ndarray,
    labels: np.ndarray,
    schema: Schema | list[str],
    *,
    size: int = 5,
    seed: int = 0,
    train_params: TrainParams | None = None,
) -> list[LabelloopClassifier]:
    """`size` members, each fitted on a bootstrap resample (stratified by label so no class vanishes).

    `rows`: the labelled rows as the model reads them (a frame with the schema's feature columns, or a
    float matrix for an all-numeric schema); `schema`: the workspace schema (a list of class names means
    an all-numeric schema of the matrix's columns).
    """
    from labelloop.config import TrainParams
    from labelloop.model import LabelloopClassifier

    if size < 2:
        raise ValueError(f"committee size must be at least 2, got {size}")
    if not isinstance(rows, pd.DataFrame):
        rows = np.asarray(rows, dtype=np.float64)
    if isinstance(schema, list):
        schema = numeric_schema(rows, schema)
    labels = np.asarray(labels).astype(str)
    if len(rows) != len(labels) or len(labels) == 0:
        raise ValueError(f"a committee needs a non-empty labelled set with one label per row "
                         f"({len(rows)} rows, {len(labels)} labels)")
    params = train_params if train_params is not None else TrainParams()
    rng = np.random.default_rng(seed)
    members = []
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for m in range(size):
        picked = np.concatenate([rng.choice(idx, len(idx), replace=True) for idx in by_class])
        model = LabelloopClassifier.from_params(params, schema, random_state=int(params.random_state) + 1 + m)
        model.fit(take(rows, picked), labels[picked])
        members.append(model)
    return members


def committee_probas(members: list[LabelloopClassifier], rows: pd.DataFrame | np.ndarray, *,
                     batch_rows: int = 200_000) -> np.ndarray:
    """(members, rows, classes) probabilities, predicted in row batches with all the CPUs this process may use."""
    from labelloop.core.threads import AUTO, resolve_n_jobs

    threads = resolve_n_jobs(AUTO)
    for model in members:
        model.set_n_jobs(threads)
    n_classes = len(members[0].classes_)
    out = np.empty((len(members), len(rows), n_classes), dtype=np.float64)
    for start in range(0, len(rows), batch_rows):
        block = take(rows, np.arange(start, min(start + batch_rows, len(rows))))
        for m, model in enumerate(members):
            out[m, start : start + len(block)] = model.predict_proba(block)
    return out
