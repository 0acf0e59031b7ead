"""Query-by-committee members: XGBoost models on bootstrap resamples of the labelled set, one seed each.

Members use the same settings as `train` (LabelloopClassifier.from_params) so they disagree only
through the data they saw and their seed. Inference is batched and uses all cores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from labelloop.config import TrainParams
    from labelloop.model import LabelloopClassifier


def train_committee(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    *,
    size: int = 5,
    seed: int = 0,
    train_params: TrainParams | None = None,
) -> list[LabelloopClassifier]:
    """`size` members, each fitted on a bootstrap resample (stratified by label so no class vanishes)."""
    from labelloop.config import TrainParams
    from labelloop.model import LabelloopClassifier

    if size < 2:
        raise ValueError(f"committee size must be at least 2, got {size}")
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    if len(features) != len(labels) or len(labels) == 0:
        raise ValueError(f"a committee needs a non-empty labelled set with one label per row "
                         f"({len(features)} rows, {len(labels)} labels)")
    params = train_params if train_params is not None else TrainParams()
    rng = np.random.default_rng(seed)
    members = []
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for m in range(size):
        rows = np.concatenate([rng.choice(idx, len(idx), replace=True) for idx in by_class])
        model = LabelloopClassifier.from_params(params, class_names, random_state=int(params.random_state) + 1 + m)
        model.fit(features[rows], labels[rows])
        members.append(model)
    return members


def committee_probas(members: list[LabelloopClassifier], features: np.ndarray, *, batch_rows: int = 200_000) -> np.ndarray:
    """(members, rows, classes) probabilities, predicted in row batches with all the CPUs this process may use."""
    from labelloop.core.threads import AUTO, resolve_n_jobs

    features = np.asarray(features, dtype=np.float32)
    threads = resolve_n_jobs(AUTO)
    for model in members:
        booster = getattr(model, "booster_", None)
        if booster is not None:
            booster.set_params(n_jobs=threads)
    n_classes = len(members[0].classes_)
    out = np.empty((len(members), len(features), n_classes), dtype=np.float64)
    for start in range(0, len(features), batch_rows):
        block = features[start : start + batch_rows]
        for m, model in enumerate(members):
            out[m, start : start + len(block)] = model.predict_proba(block)
    return out
