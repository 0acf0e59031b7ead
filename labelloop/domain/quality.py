"""Label quality control: aggregation, agreement, gold questions, review queue, confident-learning flags.

Pure functions over pandas / numpy, plus two small persisted records (the gold tracker and the review
queue), both JSON written atomically and keyed by batch id so that re-running an import replaces that
batch's contribution instead of adding it twice.

Input annotations are one row per (item, annotator) answer with columns `item_id`, `annotator_id`,
`label` (the vendor contract's ANNOTATION_COLUMNS). Aggregation returns one row per item with
`AGGREGATION_COLUMNS`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from labelloop.core.io import read_json, write_json
from labelloop.adapters.label_validation import normalize_annotator_id

AGGREGATION_COLUMNS = ["item_id", "label", "n_votes", "agreement", "method", "needs_review", "review_reason"]
REVIEW_QUEUE_COLUMNS = ["item_id", "source_batch", "reason", "status", "sent_batch"]

# Review reasons (stable strings: they appear in files and reports).
REASON_NO_AGREEMENT = "no_agreement"
REASON_MODEL_CONTRADICTS = "model_contradicts"
REASON_ANNOTATOR_EXCLUDED = "annotator_excluded"
REASON_QUARANTINED = "quarantined"


def _check_columns(frame: pd.DataFrame, needed: Sequence[str], what: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; has {list(frame.columns)}")


def _empty_aggregation() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": pd.Series(dtype=object),
            "label": pd.Series(dtype=object),
            "n_votes": pd.Series(dtype="int64"),
            "agreement": pd.Series(dtype="float64"),
            "method": pd.Series(dtype=object),
            "needs_review": pd.Series(dtype=bool),
            "review_reason": pd.Series(dtype=object),
        }
    )


def _votes(annotations: pd.DataFrame) -> pd.DataFrame:
    _check_columns(annotations, ["item_id", "annotator_id", "label"], "annotations")
    frame = annotations[["item_id", "annotator_id", "label"]].copy()
    for column in frame.columns:
        frame[column] = frame[column].astype(str)
    return frame


# --------------------------------------------------------------------------------------------- voting
def majority_vote(annotations: pd.DataFrame, *, min_agreement: float = 0.5) -> pd.DataFrame:
    """One label per item: the most voted label.

    `agreement` is the winning label's share of the item's votes. An item needs review when the top
    labels tie, or when the winner's share is below `min_agreement` (reason `no_agreement`); its
    `label` is then the alphabetically first of the tied labels, kept only as a hint for reviewers.
    """
    if not 0 <= min_agreement <= 1:
        raise ValueError(f"min_agreement must be in [0, 1], got {min_agreement}")
    votes = _votes(annotations)
    if votes.empty:
        return _empty_aggregation()
    counts = votes.groupby(["item_id", "label"], sort=True).size().rename("count").reset_index()
    totals = counts.groupby("item_id")["count"].sum()
    counts = counts.sort_values(["item_id", "count", "label"], ascending=[True, False, True])
    top = counts.groupby("item_id").head(2)
    rows = []
    for item_id, group in top.groupby("item_id", sort=True):
        best = group.iloc[0]
        tie = len(group) > 1 and group.iloc[1]["count"] == best["count"]
        n_votes = int(totals[item_id])
        share = float(best["count"]) / n_votes
        review = bool(tie or share < min_agreement)
        rows.append(
            {
                "item_id": item_id,
                "label": best["label"],
                "n_votes": n_votes,
                "agreement": share,
                "method": "majority",
                "needs_review": review,
                "review_reason": REASON_NO_AGREEMENT if review else None,
            }
        )
    return pd.DataFrame(rows, columns=AGGREGATION_COLUMNS).astype({"n_votes": "int64", "needs_review": bool})


@dataclass(frozen=True)
class DawidSkeneResult:
    labels: pd.DataFrame  # AGGREGATION_COLUMNS + `posterior`
    posteriors: pd.DataFrame  # item_id index, one column per class
    confusion: dict[str, np.ndarray]  # annotator -> (K, K) row-stochastic, rows = true class
    priors: np.ndarray
    classes: list[str]
    n_iter: int
    converged: bool


def dawid_skene(
    annotations: pd.DataFrame,
    classes: Sequence[str] | None = None,
    *,
    gold: pd.Series | None = None,
    min_posterior: float = 0.5,
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 0.01,
    diagonal_prior: float = 1.0,
) -> DawidSkeneResult:
    """Dawid–Skene: EM over per-annotator confusion matrices and class priors.

    Starts from the majority-vote soft labels; `gold` (item_id -> true label) pins those items'
    posteriors, which anchors each annotator's confusion matrix on known answers. Priors and confusion
    matrices are fitted on overlap and gold items only; single-answer items get a posterior from them. `smoothing` is a
    Dirichlet pseudo-count that keeps matrices of annotators with few answers from collapsing to 0/1;
    `diagonal_prior` adds pseudo-counts on the diagonal (annotators are assumed mostly right until their
    answers say otherwise), which keeps EM from drifting to a permuted solution when many classes
    share few answers.
    An item needs review when its top posterior is below `min_posterior` (reason `no_agreement`).
    `agreement` stays the vote share of the chosen label, as in `majority_vote`.
    """
    votes = _votes(annotations)
    if classes is None:
        classes = sorted(votes["label"].unique())
    classes = [str(c) for c in classes]
    unknown = sorted(set(votes["label"]) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not in the label set {classes}")
    if votes.empty:
        empty = _empty_aggregation()
        empty["posterior"] = pd.Series(dtype="float64")
        return DawidSkeneResult(empty, pd.DataFrame(columns=classes), {}, np.full(len(classes), 1 / max(len(classes), 1)), classes, 0, True)
    items = sorted(votes["item_id"].unique())
    annotators = sorted(votes["annotator_id"].unique())
    k = len(classes)
    item_index = {v: i for i, v in enumerate(items)}
    annotator_index = {v: i for i, v in enumerate(annotators)}
    class_index = {v: i for i, v in enumerate(classes)}
    ii = votes["item_id"].map(item_index).to_numpy()
    aa = votes["annotator_id"].map(annotator_index).to_numpy()
    ll = votes["label"].map(class_index).to_numpy()
    n_items, n_annot = len(items), len(annotators)

    # counts[i, c] = votes for class c on item i (initial soft labels)
    counts = np.zeros((n_items, k))
    np.add.at(counts, (ii, ll), 1.0)
    posterior = counts / counts.sum(axis=1, keepdims=True)

    pinned = np.zeros(n_items, dtype=bool)
    pinned_rows = np.zeros((n_items, k))
    if gold is not None:
        for item_id, truth in gold.astype(str).items():
            idx = item_index.get(str(item_id))
            if idx is not None and truth in class_index:
                pinned[idx] = True
                pinned_rows[idx, class_index[truth]] = 1.0
        posterior[pinned] = pinned_rows[pinned]

    # Parameters are fitted on items that can tell annotators apart: several answers, or gold. Items with
    # a single answer only get a posterior (fitting on them lets EM explain everything with one class).
    informative = (counts.sum(axis=1) >= 2) | pinned
    fit_rows = informative[ii]
    converged = False
    n_iter = 0
    log_like_old = -np.inf
    for n_iter in range(1, max_iter + 1):
        # M-step: priors and confusion matrices from the soft labels.
        priors = (posterior[informative].sum(axis=0) + 1.0) / (informative.sum() + k)
        confusion = np.full((n_annot, k, k), smoothing) + diagonal_prior * np.eye(k)
        np.add.at(confusion, (aa[fit_rows], slice(None), ll[fit_rows]), posterior[ii[fit_rows]])
        confusion /= confusion.sum(axis=2, keepdims=True)
        # E-step: posterior over true classes for every item.
        log_post = np.tile(np.log(priors), (n_items, 1))
        np.add.at(log_post, ii, np.log(confusion[aa, :, ll]))
        log_norm = np.logaddexp.reduce(log_post, axis=1, keepdims=True)
        posterior = np.exp(log_post - log_norm)
        posterior[pinned] = pinned_rows[pinned]
        log_like = float(log_norm.sum())
        if abs(log_like - log_like_old) <= tol * max(1.0, abs(log_like)):
            converged = True
            break
        log_like_old = log_like

    best = posterior.argmax(axis=1)
    top = posterior.max(axis=1)
    ordered = np.sort(posterior, axis=1)
    tie = (ordered[:, -1] - ordered[:, -2] < 1e-9) if k > 1 else np.zeros(n_items, dtype=bool)
    n_votes = counts.sum(axis=1).astype(int)
    share = counts[np.arange(n_items), best] / n_votes
    review = (top < min_posterior) | tie
    labels = pd.DataFrame(
        {
            "item_id": items,
            "label": [classes[b] for b in best],
            "n_votes": n_votes,
            "agreement": share,
            "method": "dawid_skene",
            "needs_review": review.astype(bool),
            "review_reason": np.where(review, REASON_NO_AGREEMENT, None),
            "posterior": top,
        }
    )
    return DawidSkeneResult(
        labels=labels,
        posteriors=pd.DataFrame(posterior, index=pd.Index(items, name="item_id"), columns=classes),
        confusion={a: confusion[annotator_index[a]] for a in annotators},
        priors=priors,
        classes=classes,
        n_iter=n_iter,
        converged=converged,
    )


def aggregate(
    annotations: pd.DataFrame,
    method: Literal["majority", "dawid_skene"] = "majority",
    *,
    classes: Sequence[str] | None = None,
    min_agreement: float = 0.5,
    gold: pd.Series | None = None,
) -> pd.DataFrame:
    """`majority_vote` or `dawid_skene(...).labels` by name (the `import.aggregation` knob)."""
    if method == "majority":
        return majority_vote(annotations, min_agreement=min_agreement)
    if method == "dawid_skene":
        return dawid_skene(annotations, classes, gold=gold, min_posterior=min_agreement).labels
    raise ValueError(f"unknown aggregation {method!r}; allowed: majority, dawid_skene")


# ------------------------------------------------------------------------------------------ agreement
def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters over the same items; NaN when undefined (fewer than 2 items)."""
    a = np.asarray(a, dtype=str)
    b = np.asarray(b, dtype=str)
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs two equally long label lists, got {len(a)} and {len(b)}")
    if len(a) < 2:
        return float("nan")
    observed = float(np.mean(a == b))
    labels = np.union1d(a, b)
    pa = np.array([np.mean(a == c) for c in labels])
    pb = np.array([np.mean(b == c) for c in labels])
    expected = float(pa @ pb)
    if expected >= 1.0:
        return 1.0 if observed == 1.0 else float("nan")
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa(annotations: pd.DataFrame) -> float:
    """Fleiss' kappa over items with at least two answers (variable raters per item); NaN if none."""
    votes = _votes(annotations)
    table = votes.groupby(["item_id", "label"]).size().unstack(fill_value=0)
    n = table.sum(axis=1)
    table = table[n >= 2]
    n = n[n >= 2].to_numpy(dtype=float)
    if len(table) == 0:
        return float("nan")
    counts = table.to_numpy(dtype=float)
    p_item = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_bar = float(p_item.mean())
    p_class = counts.sum(axis=0) / n.sum()
    p_e = float((p_class**2).sum())
    if p_e >= 1.0:
        return 1.0 if p_bar == 1.0 else float("nan")
    return (p_bar - p_e) / (1.0 - p_e)


def agreement_report(annotations: pd.DataFrame, *, min_common: int = 2) -> dict[str, Any]:
    """Agreement on overlap items: raw agreement, Fleiss' kappa, pairwise and mean Cohen's kappa."""
    votes = _votes(annotations).drop_duplicates(["item_id", "annotator_id"], keep="last")
    per_item = votes.groupby("item_id")["annotator_id"].nunique()
    overlap_items = per_item[per_item >= 2].index
    overlap = votes[votes["item_id"].isin(overlap_items)]
    unanimous = overlap.groupby("item_id")["label"].nunique().eq(1)
    pairs = []
    wide = overlap.pivot(index="item_id", columns="annotator_id", values="label") if len(overlap) else pd.DataFrame()
    for a, b in itertools.combinations(sorted(wide.columns), 2):
        both = wide[[a, b]].dropna()
        if len(both) >= min_common:
            pairs.append({"a": a, "b": b, "n_items": int(len(both)), "kappa": cohen_kappa(both[a], both[b])})
    kappas = [p["kappa"] for p in pairs if not np.isnan(p["kappa"])]
    return {
        "n_items": int(per_item.size),
        "n_overlap_items": int(len(overlap_items)),
        "percent_agreement": float(unanimous.mean()) if len(unanimous) else float("nan"),
        "fleiss_kappa": fleiss_kappa(overlap) if len(overlap) else float("nan"),
        "cohen_kappa_mean": float(np.mean(kappas)) if kappas else float("nan"),
        "cohen_kappa_pairs": pairs,
    }


# ----------------------------------------------------------------------------------------------- gold
def gold_answers(annotations: pd.DataFrame, gold: pd.Series) -> pd.DataFrame:
    """Per annotator: `n_gold` answers on gold items and `n_correct` among them."""
    votes = _votes(annotations)
    truth = gold.astype(str)
    truth.index = truth.index.astype(str)
    on_gold = votes[votes["item_id"].isin(truth.index)].copy()
    on_gold["correct"] = on_gold["label"].to_numpy() == truth.reindex(on_gold["item_id"]).to_numpy()
    summary = on_gold.groupby("annotator_id").agg(n_gold=("correct", "size"), n_correct=("correct", "sum"))
    return summary.astype("int64").reset_index()


class GoldTracker:
    """Each annotator's answers on gold items across batches, persisted as JSON (atomic writes).

    Recording a batch twice replaces that batch's counts, so a re-run import does not double count.
    An annotator is excluded once they have answered at least `min_answers` gold items and their
    accuracy over all batches is below `threshold`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        data = read_json(self.path, default=None) or {"batches": {}}
        if not isinstance(data, dict) or not isinstance(data.get("batches"), dict):
            raise ValueError(f"{self.path} is not a gold tracker file (expected a 'batches' mapping)")
        self._batches: dict[str, dict[str, list[int]]] = data["batches"]

    def record(self, batch_id: str, answers: pd.DataFrame) -> None:
        """Store one batch's `gold_answers(...)` (replacing any earlier record of the batch)."""
        _check_columns(answers, ["annotator_id", "n_gold", "n_correct"], "gold answers")
        entry = {str(r.annotator_id): [int(r.n_gold), int(r.n_correct)] for r in answers.itertuples(index=False)}
        if self._batches.get(batch_id) == entry:
            return
        self._batches[batch_id] = entry
        write_json(self.path, {"batches": self._batches})

    def summary(self) -> pd.DataFrame:
        totals: dict[str, list[int]] = {}
        for entry in self._batches.values():
            for annotator, (n_gold, n_correct) in entry.items():
                # Records written before ids were normalised merge into the one annotator they name.
                acc = totals.setdefault(normalize_annotator_id(annotator) or annotator, [0, 0])
                acc[0] += n_gold
                acc[1] += n_correct
        frame = pd.DataFrame(
            [{"annotator_id": a, "n_gold": n, "n_correct": c} for a, (n, c) in sorted(totals.items())],
            columns=["annotator_id", "n_gold", "n_correct"],
        )
        frame["accuracy"] = (frame["n_correct"] / frame["n_gold"].where(frame["n_gold"] > 0)).astype(float)
        return frame

    def excluded(self, threshold: float, min_answers: int = 5) -> list[str]:
        s = self.summary()
        bad = s[(s["n_gold"] >= min_answers) & (s["accuracy"] < threshold)]
        return sorted(bad["annotator_id"].tolist())


def exclude_annotators(annotations: pd.DataFrame, excluded: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Split off the answers of excluded annotators.

    Returns (kept, dropped, requeue): `requeue` lists the items that had answers and now have none,
    which must be labelled again (the next export sends them).
    """
    excluded = {str(a) for a in excluded}
    is_out = annotations["annotator_id"].astype(str).isin(excluded)
    kept, dropped = annotations[~is_out].copy(), annotations[is_out].copy()
    requeue = sorted(set(dropped["item_id"].astype(str)) - set(kept["item_id"].astype(str)))
    return kept, dropped, requeue


# ---------------------------------------------------------------------------------- confident learning
def confident_learning_flags(
    labels: pd.DataFrame,
    probas: pd.DataFrame,
    *,
    min_confidence: float = 0.9,
    thresholds: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Flag labels the model contradicts with high confidence (confident-learning style).

    `labels`: `item_id`, `label`. `probas`: `item_id` + one `proba_<class>` column per class (the
    prediction log's layout). Per class j the threshold t_j is the mean predicted probability of j over
    the items labelled j (Northcutt et al.'s per-class self-confidence), unless `thresholds` gives it.
    An item is flagged when the class the model is confidently sure of (p_j >= t_j, largest such p_j)
    is not the given label and that probability is at least `min_confidence`.
    Returns `item_id`, `label`, `model_label`, `model_proba`, `given_label_proba`, `flagged`.
    """
    _check_columns(labels, ["item_id", "label"], "labels")
    _check_columns(probas, ["item_id"], "probas")
    proba_cols = [c for c in probas.columns if c.startswith("proba_")]
    if not proba_cols:
        raise ValueError("probas has no proba_<class> columns")
    classes = [c[len("proba_"):] for c in proba_cols]
    merged = labels[["item_id", "label"]].astype({"item_id": str, "label": str}).merge(
        probas.astype({"item_id": str})[["item_id", *proba_cols]], on="item_id", how="left", validate="one_to_one"
    )
    p = merged[proba_cols].to_numpy(dtype=float)
    has_proba = ~np.isnan(p).any(axis=1)
    given = merged["label"].to_numpy()
    if thresholds is None:
        thresholds = {}
        for j, c in enumerate(classes):
            mask = (given == c) & has_proba
            thresholds[c] = float(p[mask, j].mean()) if mask.any() else 1.0
    t = np.array([thresholds.get(c, 1.0) for c in classes])
    confident = np.where(p >= t, p, -np.inf)
    best = confident.argmax(axis=1)
    best_p = confident[np.arange(len(p)), best] if len(p) else np.array([])
    model_label = np.array([classes[b] for b in best], dtype=object) if len(p) else np.array([], dtype=object)
    col_of = {c: j for j, c in enumerate(classes)}
    given_p = np.array([p[i, col_of[g]] if g in col_of else np.nan for i, g in enumerate(given)])
    flagged = has_proba & np.isfinite(best_p) & (model_label != given) & (best_p >= min_confidence)
    return pd.DataFrame(
        {
            "item_id": merged["item_id"],
            "label": merged["label"],
            "model_label": np.where(np.isfinite(best_p), model_label, None),
            "model_proba": np.where(np.isfinite(best_p), best_p, np.nan),
            "given_label_proba": given_p,
            "flagged": flagged.astype(bool),
        }
    )


# -------------------------------------------------------------------------------------- review queue
class ReviewQueue:
    """Items whose labels need another look; the next export sends the pending ones again.

    Persisted as JSON (atomic). Keyed by (item_id, source_batch): adding the same batch twice is a
    no-op, so a re-run import does not duplicate entries. `mark_sent` records the export that took an
    item; `resolve` closes items once a later import gave them an accepted label.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        data = read_json(self.path, default=None) or {"items": []}
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise ValueError(f"{self.path} is not a review queue file (expected an 'items' list)")
        self._items: list[dict[str, Any]] = data["items"]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self._items, columns=REVIEW_QUEUE_COLUMNS)

    def _save(self) -> None:
        write_json(self.path, {"items": self._items})

    def add(self, source_batch: str, entries: pd.DataFrame) -> int:
        """Add `item_id` + `reason` rows found by one import; returns how many were new."""
        _check_columns(entries, ["item_id", "reason"], "review entries")
        known = {(e["item_id"], e["source_batch"]) for e in self._items}
        added = 0
        for row in entries.itertuples(index=False):
            key = (str(row.item_id), source_batch)
            if key in known:
                continue
            known.add(key)
            self._items.append({"item_id": key[0], "source_batch": source_batch, "reason": str(row.reason),
                                "status": "pending", "sent_batch": None})
            added += 1
        if added:
            self._save()
        return added

    def pending(self, max_sends: int | None = None) -> list[str]:
        """Item ids waiting to be sent again (each once, in the order they were queued).

        With `max_sends`, items already re-sent that many times are left out: a label that keeps
        failing review (e.g. the model keeps contradicting a unanimous crowd) needs a human reviewer,
        not another paid round of the same crowd.
        """
        sends: dict[str, set[str]] = {}
        for entry in self._items:
            if entry["sent_batch"] is not None:
                sends.setdefault(entry["item_id"], set()).add(entry["sent_batch"])
        seen: dict[str, None] = {}
        for entry in self._items:
            if entry["status"] == "pending" and (max_sends is None or len(sends.get(entry["item_id"], ())) < max_sends):
                seen.setdefault(entry["item_id"], None)
        return list(seen)

    def mark_sent(self, item_ids: Iterable[str], batch_id: str) -> None:
        ids = {str(i) for i in item_ids}
        changed = False
        for entry in self._items:
            if entry["status"] == "pending" and entry["item_id"] in ids:
                entry["status"], entry["sent_batch"] = "sent", batch_id
                changed = True
        if changed:
            self._save()

    def resolve(self, item_ids: Iterable[str]) -> None:
        ids = {str(i) for i in item_ids}
        changed = False
        for entry in self._items:
            if entry["status"] == "sent" and entry["item_id"] in ids:
                entry["status"] = "resolved"
                changed = True
        if changed:
            self._save()


# -------------------------------------------------------------------------------- export-side helpers
def plan_quality_items(
    items: pd.DataFrame,
    *,
    gold_pool: pd.DataFrame | None = None,
    gold_share: float = 0.0,
    overlap_share: float = 0.0,
    overlap_annotators: int = 3,
    max_batch_size: int | None = None,
    easy_pool: pd.DataFrame | None = None,
    easy_share: float = 0.0,
    review_items: pd.DataFrame | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Mark a batch for quality control before export.

    `items` are the batch's new items (the selection budget). On top of them, outside that budget:

    - `round(gold_share * n)` gold items drawn from `gold_pool` (rows with known `label`, which is
      dropped from the row; `gold_label` keeps it on our side for the import), `is_gold`;
    - `review_items` (items the review queue sends again), `is_review`, each asked of
      `overlap_annotators` annotators so the second look can settle it;
    - `round(easy_share * n)` easy items: the most confident rows of `easy_pool` (`item_id`,
      `confidence`, not already in the batch), `is_easy` — they keep annotators motivated and check
      that confident predictions are right.

    `overlap_annotators` annotators are asked for a share `overlap_share` of the new and easy items;
    gold items always get them, so every annotator meets gold questions. `max_batch_size` (annotator
    fatigue guard) caps the total: new items are never dropped (ValueError if they alone exceed it);
    the extras fill the room left in the order gold, review, easy, and review items that do not fit
    are simply not in the plan (they stay pending for the next export).
    """
    for name, share in (("gold_share", gold_share), ("overlap_share", overlap_share), ("easy_share", easy_share)):
        if not 0 <= share <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    if overlap_annotators < 1:
        raise ValueError(f"overlap_annotators must be >= 1, got {overlap_annotators}")
    rng = np.random.default_rng(seed)
    out = items.copy()
    out["item_id"] = out["item_id"].astype(str)
    n_new = len(out)
    if max_batch_size is not None and n_new > max_batch_size:
        raise ValueError(f"the batch has {n_new} new items, above max_batch_size={max_batch_size}")
    room = (max_batch_size - n_new) if max_batch_size is not None else None
    for flag in ("is_gold", "is_review", "is_easy"):
        out[flag] = False
    out["gold_label"] = None
    parts = [out]
    taken = set(out["item_id"])

    def fit(count: int) -> int:
        nonlocal room
        if room is None:
            return count
        count = min(count, room)
        room -= count
        return count

    n_gold = fit(int(round(gold_share * n_new)))
    if n_gold and gold_pool is not None and len(gold_pool):
        _check_columns(gold_pool, ["item_id", "label"], "gold pool")
        pool = gold_pool[~gold_pool["item_id"].astype(str).isin(taken)]
        picked = pool.iloc[rng.permutation(len(pool))[: min(n_gold, len(pool))]].copy()
        picked["item_id"] = picked["item_id"].astype(str)
        picked["gold_label"] = picked.pop("label").astype(str)
        picked["is_gold"] = True
        if "utility" in out.columns and n_new:
            # A gold row borrows a real utility so sorting by score does not single it out at the vendor.
            picked["utility"] = rng.choice(out["utility"].to_numpy(), size=len(picked))
        parts.append(picked)
        taken |= set(picked["item_id"])
    if review_items is not None and len(review_items):
        _check_columns(review_items, ["item_id"], "review items")
        review = review_items[~review_items["item_id"].astype(str).isin(taken)].drop_duplicates("item_id")
        review = review.head(fit(len(review))).copy()
        review["item_id"] = review["item_id"].astype(str)
        review["is_review"] = True
        # The source batch's marks (gold, easy, its annotators_wanted) do not carry over to the re-send.
        parts.append(review.drop(columns=["label", "gold_label", "is_gold", "is_easy", "annotators_wanted"], errors="ignore"))
        taken |= set(review["item_id"])
    n_easy = fit(int(round(easy_share * n_new)))
    if n_easy and easy_pool is not None and len(easy_pool):
        _check_columns(easy_pool, ["item_id", "confidence"], "easy pool")
        easy = easy_pool[~easy_pool["item_id"].astype(str).isin(taken)]
        easy = easy.sort_values("confidence", ascending=False, kind="stable").head(n_easy).copy()
        easy["item_id"] = easy["item_id"].astype(str)
        easy["is_easy"] = True
        parts.append(easy)
    columns = list(out.columns)
    out = pd.concat([p[[c for c in columns if c in p.columns]] for p in parts], ignore_index=True)
    for flag in ("is_gold", "is_review", "is_easy"):
        out[flag] = out[flag].fillna(False).astype(bool)
    if len(parts) > 1:
        out = out.iloc[rng.permutation(len(out))].reset_index(drop=True)  # gold must not sit at the end
    wanted = np.ones(len(out), dtype=int)
    plain = np.flatnonzero(~(out["is_gold"] | out["is_review"]).to_numpy(dtype=bool))
    n_overlap = int(round(overlap_share * len(plain)))
    if n_overlap:
        wanted[rng.choice(plain, size=n_overlap, replace=False)] = overlap_annotators
    wanted[(out["is_gold"] | out["is_review"]).to_numpy(dtype=bool)] = max(overlap_annotators, 1)
    out["annotators_wanted"] = wanted
    return out


def batch_cost(n_labels: int, price_per_label: float) -> dict[str, float]:
    """Labels bought and their cost for one batch (every answer is paid, overlap and gold included)."""
    if n_labels < 0 or price_per_label < 0:
        raise ValueError("n_labels and price_per_label must be >= 0")
    return {"labels_bought": int(n_labels), "cost": float(n_labels) * float(price_per_label)}


def cost_per_point(total_cost: float, holdout_gain: float) -> float:
    """Cost per percentage point of holdout gain (`holdout_gain` as a fraction); NaN without gain."""
    points = holdout_gain * 100.0
    return float(total_cost / points) if points > 0 else float("nan")


# ------------------------------------------------------------------------------------ one-call QC pass
@dataclass
class QualityReport:
    final: pd.DataFrame  # AGGREGATION_COLUMNS (+ is_gold, model flags): one row per labelled item
    accepted: pd.DataFrame  # final rows usable for training: not gold, not needing review
    review: pd.DataFrame  # item_id, reason: items for the review queue
    requeue: list[str]  # items that lost all answers to excluded annotators
    excluded_annotators: list[str]
    dropped_annotations: pd.DataFrame
    agreement: dict[str, Any]
    gold: pd.DataFrame  # tracker summary after this batch
    summary: dict[str, Any] = field(default_factory=dict)


def run_quality_control(
    annotations: pd.DataFrame,
    *,
    batch_id: str,
    classes: Sequence[str],
    gold: pd.Series | None = None,
    tracker: GoldTracker | None = None,
    method: Literal["majority", "dawid_skene"] = "majority",
    min_agreement: float = 0.5,
    min_gold_accuracy: float = 0.0,
    min_gold_answers: int = 5,
    probas: pd.DataFrame | None = None,
    contradiction_confidence: float = 0.9,
) -> QualityReport:
    """Gold tracking -> exclusion -> aggregation -> review flags, for one batch's validated answers.

    `gold` maps the batch's gold item ids to their known labels. Gold items are aggregated (so their
    agreement is visible) but never `accepted`: their label is already known.
    """
    gold = gold.astype(str) if gold is not None else pd.Series(dtype=str)
    gold.index = gold.index.astype(str)
    if tracker is not None:
        tracker.record(batch_id, gold_answers(annotations, gold))
        excluded = tracker.excluded(min_gold_accuracy, min_gold_answers) if min_gold_accuracy > 0 else []
        gold_summary = tracker.summary()
    else:
        answers = gold_answers(annotations, gold)
        answers["accuracy"] = answers["n_correct"] / answers["n_gold"]
        bad = answers[(answers["n_gold"] >= min_gold_answers) & (answers["accuracy"] < min_gold_accuracy)]
        excluded = sorted(bad["annotator_id"])
        gold_summary = answers
    kept, dropped, requeue = exclude_annotators(annotations, excluded)
    final = aggregate(kept, method, classes=classes, min_agreement=min_agreement, gold=gold if len(gold) else None)
    final["is_gold"] = final["item_id"].isin(gold.index)
    final["model_flagged"] = False
    if probas is not None and len(final):
        flags = confident_learning_flags(final[["item_id", "label"]], probas, min_confidence=contradiction_confidence)
        flagged = set(flags.loc[flags["flagged"], "item_id"])
        hit = final["item_id"].isin(flagged) & ~final["is_gold"] & ~final["needs_review"]
        final.loc[hit, "needs_review"] = True
        final.loc[hit, "review_reason"] = REASON_MODEL_CONTRADICTS
        final["model_flagged"] = final["item_id"].isin(flagged)
    review = final.loc[final["needs_review"] & ~final["is_gold"], ["item_id", "review_reason"]].rename(
        columns={"review_reason": "reason"})
    review = pd.concat([review, pd.DataFrame({"item_id": [r for r in requeue if r not in set(gold.index)],
                                              "reason": REASON_ANNOTATOR_EXCLUDED})], ignore_index=True)
    accepted = final[~final["needs_review"] & ~final["is_gold"]].reset_index(drop=True)
    report = QualityReport(
        final=final,
        accepted=accepted,
        review=review.reset_index(drop=True),
        requeue=requeue,
        excluded_annotators=list(excluded),
        dropped_annotations=dropped,
        agreement=agreement_report(kept),
        gold=gold_summary,
    )
    report.summary = {
        "n_annotations": int(len(annotations)),
        "n_items": int(len(final)),
        "n_accepted": int(len(accepted)),
        "n_review": int(len(review)),
        "n_model_contradicts": int((final["review_reason"] == REASON_MODEL_CONTRADICTS).sum()),
        "n_requeued": len(requeue),
        "excluded_annotators": list(excluded),
        "method": method,
        "fleiss_kappa": report.agreement["fleiss_kappa"],
        "cohen_kappa_mean": report.agreement["cohen_kappa_mean"],
        "percent_agreement": report.agreement["percent_agreement"],
    }
    return report


# ------------------------------------------------------------------------------ the import QC pass
@dataclass(frozen=True)
class QualityParams:
    """The `import` section's quality knobs (defaults = QC off except majority vote)."""

    aggregation: Literal["majority", "dawid_skene"] = "majority"
    min_agreement: float = 0.5
    min_gold_accuracy: float = 0.0  # 0 = never exclude
    min_gold_answers: int = 5
    contradiction_confidence: float = 0.0  # 0 = no confident-learning flags

    @classmethod
    def from_params(cls, params: Any) -> QualityParams:
        """From an ImportParams-like object; knobs it does not have keep their defaults."""
        values = {name: getattr(params, name) for name in cls.__dataclass_fields__ if hasattr(params, name)}
        return cls(**values)


@dataclass
class ImportOutcome:
    answers: pd.DataFrame  # validated answers (one per item x annotator)
    quarantined: pd.DataFrame  # rejected answers and final labels, with `expectation`, `reason`, `stage`
    final: pd.DataFrame  # every aggregated item (AGGREGATION_COLUMNS + is_gold, model_flagged)
    labels: pd.DataFrame  # the labels to add to the dataset: item_id, label, n_votes, agreement, method
    review: pd.DataFrame  # item_id, reason: sent again by the next export
    pending: list[str]  # batch items with no answer yet (left for a later import)
    report: QualityReport


def process_import(
    annotations: pd.DataFrame,
    batch_items: pd.DataFrame,
    label_set: Sequence[str],
    *,
    batch_id: str,
    params: QualityParams,
    state_dir: str | Path | None = None,
    probas: pd.DataFrame | None = None,
) -> ImportOutcome:
    """Validate -> gold tracking / exclusion -> aggregation -> model-contradiction flags -> final checks.

    `batch_items` has `item_id` and optionally `is_gold` + `gold_label` (see `plan_quality_items`).
    With `state_dir`, the gold tracker (`gold_tracker.json`) and the review queue (`review_queue.json`)
    are updated there, both keyed by batch id: running the same import twice changes nothing more.
    The caller archives the raw payload first and writes `outcome.labels` / `outcome.quarantined`.
    """
    from labelloop.adapters.label_validation import validate_annotations, validate_final_labels

    _check_columns(batch_items, ["item_id"], "batch items")
    item_ids = batch_items["item_id"].astype(str).tolist()
    gold = pd.Series(dtype=str)
    if "is_gold" in batch_items.columns and "gold_label" in batch_items.columns:
        marked = batch_items[batch_items["is_gold"].fillna(False).astype(bool)]
        gold = pd.Series(marked["gold_label"].astype(str).to_numpy(), index=marked["item_id"].astype(str).to_numpy())
    answers, bad_answers = validate_annotations(annotations, item_ids, label_set)
    tracker = GoldTracker(Path(state_dir) / "gold_tracker.json") if state_dir is not None else None
    report = run_quality_control(
        answers,
        batch_id=batch_id,
        classes=label_set,
        gold=gold,
        tracker=tracker,
        method=params.aggregation,
        min_agreement=params.min_agreement,
        min_gold_accuracy=params.min_gold_accuracy,
        min_gold_answers=params.min_gold_answers,
        probas=probas if params.contradiction_confidence > 0 else None,
        contradiction_confidence=params.contradiction_confidence,
    )
    labels, bad_final = validate_final_labels(report.accepted, item_ids, label_set)
    quarantined = pd.concat(
        [bad_answers.assign(stage="answer"), bad_final.assign(stage="final_label")], ignore_index=True
    ) if len(bad_answers) or len(bad_final) else bad_answers.assign(stage=pd.Series(dtype=object))
    answered = set(answers["item_id"]) | set(report.dropped_annotations["item_id"].astype(str))
    pending = [i for i in item_ids if i not in answered]
    if state_dir is not None:
        queue = ReviewQueue(Path(state_dir) / "review_queue.json")
        queue.add(batch_id, report.review)
        queue.resolve(labels["item_id"])
    keep = ["item_id", "label", "n_votes", "agreement", "method"]
    return ImportOutcome(answers, quarantined, report.final, labels[keep].reset_index(drop=True),
                         report.review, pending, report)
