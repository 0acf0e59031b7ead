"""Label quality control, pure logic: aggregation, agreement, gold accuracy, confident-learning flags,
the export's quality-control plan and cost arithmetic.

Functions over pandas / numpy, no file I/O. The persisted records are elsewhere: the gold tracker
and the import's validation in `labelloop.stages.importing`, the review queue in `labelloop.batches`.

Input annotations are one row per (item, annotator) answer with columns `item_id`, `annotator_id`,
`label` (the vendor contract's ANNOTATION_COLUMNS). Aggregation returns one row per item with
`AGGREGATION_COLUMNS`.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from labelloop.columns import ANNOTATOR_ID, CONFIDENCE, ITEM_ID, LABEL, PROBA_PREFIX
from labelloop.config import ImportParams

AGGREGATION_COLUMNS = [ITEM_ID, LABEL, "n_votes", "agreement", "method", "needs_review", "review_reason"]

# Review reasons (stable strings: they appear in files and reports).
REASON_NO_AGREEMENT = "no_agreement"
REASON_MODEL_CONTRADICTS = "model_contradicts"
REASON_ANNOTATOR_EXCLUDED = "annotator_excluded"
REASON_LABEL_ERROR = "label_error"  # the error scan: out-of-fold probabilities say the label is likely wrong

# When an annotator sees the model's guess (`export.show_guess`; a plan's `guess_shown` column).
GUESS_BEFORE = "before"  # with the item, before answering
GUESS_AFTER = "after"  # only once the item is answered (file drop: the `after_answer` field)
GUESS_NEVER = "never"  # not at all (no guess, context none, show_guess never)


def require_columns(frame: pd.DataFrame, needed: Sequence[str], what: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; has {list(frame.columns)}")


def normalize_annotator_id(value: Any) -> str | None:
    """One spelling per annotator: Unicode NFKC, invisible format characters removed, whitespace trimmed.

    `alice`, `alice\u200b`, ` alice ` and the full-width `ａｌｉｃｅ` are one annotator. Format characters
    (Unicode category Cf: zero-width space/joiners U+200B..U+200D, word joiner U+2060, BOM U+FEFF, soft
    hyphen, bidi controls) render as nothing, so two ids that differ only by them look identical.
    Returns None for a missing id or one with nothing left.
    """
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    text = unicodedata.normalize("NFKC", str(value))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip()
    return text or None


def _empty_aggregation() -> pd.DataFrame:
    return pd.DataFrame(
        {
            ITEM_ID: pd.Series(dtype=object),
            LABEL: pd.Series(dtype=object),
            "n_votes": pd.Series(dtype="int64"),
            "agreement": pd.Series(dtype="float64"),
            "method": pd.Series(dtype=object),
            "needs_review": pd.Series(dtype=bool),
            "review_reason": pd.Series(dtype=object),
        }
    )


def _votes(annotations: pd.DataFrame) -> pd.DataFrame:
    require_columns(annotations, [ITEM_ID, ANNOTATOR_ID, LABEL], "annotations")
    frame = annotations[[ITEM_ID, ANNOTATOR_ID, LABEL]].copy()
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
    counts = votes.groupby([ITEM_ID, LABEL], sort=True).size().rename("count").reset_index()
    totals = counts.groupby(ITEM_ID)["count"].sum()
    counts = counts.sort_values([ITEM_ID, "count", LABEL], ascending=[True, False, True])
    top = counts.groupby(ITEM_ID).head(2)
    rows = []
    for item_id, group in top.groupby(ITEM_ID, sort=True):
        best = group.iloc[0]
        tie = len(group) > 1 and group.iloc[1]["count"] == best["count"]
        n_votes = int(totals[item_id])
        share = float(best["count"]) / n_votes
        review = bool(tie or share < min_agreement)
        rows.append(
            {
                ITEM_ID: item_id,
                LABEL: best[LABEL],
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
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    votes = _votes(annotations)
    if classes is None:
        classes = sorted(votes[LABEL].unique())
    classes = [str(c) for c in classes]
    unknown = sorted(set(votes[LABEL]) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not in the label set {classes}")
    if votes.empty:
        empty = _empty_aggregation()
        empty["posterior"] = pd.Series(dtype="float64")
        uniform_priors = np.full(len(classes), 1 / max(len(classes), 1))
        return DawidSkeneResult(empty, pd.DataFrame(columns=classes), {}, uniform_priors, classes, 0, True)
    items = sorted(votes[ITEM_ID].unique())
    annotators = sorted(votes[ANNOTATOR_ID].unique())
    k = len(classes)
    item_index = {v: i for i, v in enumerate(items)}
    annotator_index = {v: i for i, v in enumerate(annotators)}
    class_index = {v: i for i, v in enumerate(classes)}
    ii = votes[ITEM_ID].map(item_index).to_numpy()
    aa = votes[ANNOTATOR_ID].map(annotator_index).to_numpy()
    ll = votes[LABEL].map(class_index).to_numpy()
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
    while True:  # at least one iteration (max_iter >= 1), so priors and confusion are always set
        n_iter += 1
        # M-step: priors and confusion matrices from the soft labels.
        priors = (posterior[informative].sum(axis=0) + 1.0) / (informative.sum() + k)
        confusion = np.full((n_annot, k, k), smoothing) + diagonal_prior * np.eye(k)
        # numpy's stubs type ufunc.at indices as one array; a tuple of index arrays and slices is documented and works.
        np.add.at(confusion, (aa[fit_rows], slice(None), ll[fit_rows]), posterior[ii[fit_rows]])  # type: ignore[arg-type]
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
        if n_iter >= max_iter:
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
            ITEM_ID: items,
            LABEL: [classes[b] for b in best],
            "n_votes": n_votes,
            "agreement": share,
            "method": "dawid_skene",
            "needs_review": review.astype(bool),
            # numpy's stubs reject None as a value of np.where; it gives an object array with None where False.
            "review_reason": np.where(review, REASON_NO_AGREEMENT, None),  # type: ignore[call-overload]
            "posterior": top,
        }
    )
    return DawidSkeneResult(
        labels=labels,
        posteriors=pd.DataFrame(posterior, index=pd.Index(items, name=ITEM_ID), columns=classes),
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
    rater_a = np.asarray(a, dtype=str)
    rater_b = np.asarray(b, dtype=str)
    if len(rater_a) != len(rater_b):
        raise ValueError(f"cohen_kappa needs two equally long label lists, got {len(rater_a)} and {len(rater_b)}")
    if len(rater_a) < 2:
        return float("nan")
    observed = float(np.mean(rater_a == rater_b))
    labels = np.union1d(rater_a, rater_b)
    pa = np.array([np.mean(rater_a == c) for c in labels])
    pb = np.array([np.mean(rater_b == c) for c in labels])
    expected = float(pa @ pb)
    if expected >= 1.0:
        return 1.0 if observed == 1.0 else float("nan")
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa(annotations: pd.DataFrame) -> float:
    """Fleiss' kappa over items with at least two answers (variable raters per item); NaN if none."""
    votes = _votes(annotations)
    table = votes.groupby([ITEM_ID, LABEL]).size().unstack(fill_value=0)
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
    votes = _votes(annotations).drop_duplicates([ITEM_ID, ANNOTATOR_ID], keep="last")
    per_item = votes.groupby(ITEM_ID)[ANNOTATOR_ID].nunique()
    overlap_items = per_item[per_item >= 2].index
    overlap = votes[votes[ITEM_ID].isin(overlap_items)]
    unanimous = overlap.groupby(ITEM_ID)[LABEL].nunique().eq(1)
    pairs = []
    wide = overlap.pivot(index=ITEM_ID, columns=ANNOTATOR_ID, values=LABEL) if len(overlap) else pd.DataFrame()
    for a, b in itertools.combinations(sorted(wide.columns), 2):
        both = wide[[a, b]].dropna()
        if len(both) >= min_common:
            pairs.append({"a": a, "b": b, "n_items": len(both), "kappa": cohen_kappa(both[a], both[b])})
    kappas = [p["kappa"] for p in pairs if not np.isnan(p["kappa"])]
    return {
        "n_items": int(per_item.size),
        "n_overlap_items": len(overlap_items),
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
    on_gold = votes[votes[ITEM_ID].isin(truth.index)].copy()
    on_gold["correct"] = on_gold[LABEL].to_numpy() == truth.reindex(on_gold[ITEM_ID]).to_numpy()
    summary = on_gold.groupby(ANNOTATOR_ID).agg(n_gold=("correct", "size"), n_correct=("correct", "sum"))
    return summary.astype("int64").reset_index()


def gold_record(answers: pd.DataFrame) -> dict[str, list[int]]:
    """One batch's `gold_answers(...)` as annotator -> [n_gold, n_correct] (the gold tracker's entry)."""
    require_columns(answers, [ANNOTATOR_ID, "n_gold", "n_correct"], "gold answers")
    return {str(a): [int(n), int(c)] for a, n, c in zip(answers[ANNOTATOR_ID], answers["n_gold"], answers["n_correct"])}


def gold_accuracy(records: Iterable[Mapping[str, Sequence[int]]]) -> pd.DataFrame:
    """Per annotator over several batches' `gold_record`s: `n_gold`, `n_correct` and `accuracy`."""
    totals: dict[str, list[int]] = {}
    for record in records:
        for annotator, (n_gold, n_correct) in record.items():
            # Records written before ids were normalised merge into the one annotator they name.
            acc = totals.setdefault(normalize_annotator_id(annotator) or annotator, [0, 0])
            acc[0] += n_gold
            acc[1] += n_correct
    frame = pd.DataFrame(
        [{ANNOTATOR_ID: a, "n_gold": n, "n_correct": c} for a, (n, c) in sorted(totals.items())],
        columns=[ANNOTATOR_ID, "n_gold", "n_correct"],
    )
    frame["accuracy"] = (frame["n_correct"] / frame["n_gold"].where(frame["n_gold"] > 0)).astype(float)
    return frame


def low_accuracy_annotators(summary: pd.DataFrame, threshold: float, min_answers: int = 5) -> list[str]:
    """Annotators of a `gold_accuracy` summary with at least `min_answers` gold answers and accuracy below `threshold`."""
    bad = summary[(summary["n_gold"] >= min_answers) & (summary["accuracy"] < threshold)]
    return sorted(bad[ANNOTATOR_ID].tolist())


def exclude_annotators(annotations: pd.DataFrame, excluded: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Split off the answers of excluded annotators.

    Returns (kept, dropped, requeue): `requeue` lists the items that had answers and now have none,
    which must be labelled again (the next export sends them).
    """
    excluded = {str(a) for a in excluded}
    is_out = annotations[ANNOTATOR_ID].astype(str).isin(excluded)
    kept, dropped = annotations[~is_out].copy(), annotations[is_out].copy()
    requeue = sorted(set(dropped[ITEM_ID].astype(str)) - set(kept[ITEM_ID].astype(str)))
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
    require_columns(labels, [ITEM_ID, LABEL], "labels")
    require_columns(probas, [ITEM_ID], "probas")
    proba_cols = [c for c in probas.columns if c.startswith(PROBA_PREFIX)]
    if not proba_cols:
        raise ValueError("probas has no proba_<class> columns")
    classes = [c.removeprefix(PROBA_PREFIX) for c in proba_cols]
    merged = labels[[ITEM_ID, LABEL]].astype({ITEM_ID: str, LABEL: str}).merge(
        probas.astype({ITEM_ID: str})[[ITEM_ID, *proba_cols]], on=ITEM_ID, how="left", validate="one_to_one"
    )
    p = merged[proba_cols].to_numpy(dtype=float)
    has_proba = ~np.isnan(p).any(axis=1)
    given = merged[LABEL].to_numpy()
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
            ITEM_ID: merged[ITEM_ID],
            LABEL: merged[LABEL],
            # numpy's stubs reject None as a value of np.where (valid: an object array).
            "model_label": np.where(np.isfinite(best_p), model_label, None),  # type: ignore[call-overload]
            "model_proba": np.where(np.isfinite(best_p), best_p, np.nan),
            "given_label_proba": given_p,
            "flagged": flagged.astype(bool),
        }
    )


@dataclass(frozen=True)
class LabelErrorFlags:
    flagged: np.ndarray  # (n,) bool: the given label is likely wrong
    suggested: np.ndarray  # (n,) int: the class the probabilities point to instead (-1 where not flagged)
    thresholds: np.ndarray  # (k,) per-class self-confidence thresholds (inf for a class nobody was given)
    margin: np.ndarray  # (n,) p[suggested] - p[given] where flagged, NaN elsewhere: how confidently wrong


def find_label_errors(given: np.ndarray, probas: np.ndarray) -> LabelErrorFlags:
    """Confident learning (Northcutt et al. 2021) over out-of-fold probabilities: which given labels are likely wrong.

    `given`: (n,) class index of each item's label (-1: unknown, never flagged); `probas`: (n, k) out-of-fold
    probabilities (each row scored by a model that did not train on it). Per class j the threshold t_j is the
    mean probability of j over the items labelled j (its self-confidence). An item is flagged when its given
    label's probability is below that label's threshold while some other class j reaches its own t_j; the
    suggested class is the most probable such j. A class nobody was given has no threshold (inf).
    """
    probas = np.asarray(probas, dtype=np.float64)
    given = np.asarray(given, dtype=np.int64)
    if probas.ndim != 2 or len(probas) != len(given):
        raise ValueError(f"find_label_errors needs (n,) labels and (n, k) probabilities, got {given.shape} and {probas.shape}")
    n, k = probas.shape
    if len(given) and (given.max(initial=-1) >= k or given.min(initial=0) < -1):
        raise ValueError(f"label indices must be in [-1, {k - 1}]")
    thresholds = np.full(k, np.inf)
    for j in range(k):
        mine = given == j
        if mine.any():
            thresholds[j] = float(probas[mine, j].mean())
    known = given >= 0
    rows = np.arange(n)
    p_given = np.where(known, probas[rows, np.clip(given, 0, None)], np.nan)
    above = probas >= thresholds[None, :]
    if n:
        above[rows[known], given[known]] = False  # "another class": the given one does not count
    candidate = np.where(above, probas, -np.inf)
    suggested = candidate.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    has_other = np.isfinite(candidate[rows, suggested]) if n else np.zeros(0, dtype=bool)
    below_own = known & (p_given < np.where(known, thresholds[np.clip(given, 0, None)], np.inf))
    flagged = below_own & has_other
    margin = np.where(flagged, probas[rows, suggested] - p_given, np.nan) if n else np.zeros(0)
    return LabelErrorFlags(flagged=flagged, suggested=np.where(flagged, suggested, -1), thresholds=thresholds, margin=margin)


# ------------------------------------------------------------------------------ guess shown or not
def assign_guess_conditions(is_gold: np.ndarray, has_guess: np.ndarray, show_guess: str, gold_guess_share: float,
                            seed: int = 0) -> np.ndarray:
    """When each item of an export shows the model's guess: GUESS_BEFORE, GUESS_AFTER or GUESS_NEVER.

    Items follow `show_guess` (always: before; after_answer: after; never: never) except two groups, so that
    annotator accuracy can be compared with and without a visible guess: `gold_guess_share` of the gold
    questions show it before the answer and the rest after; and as many real items as there are gold
    questions in the condition the mode does not use get that condition too (decoys), so the condition never
    tells a gold question apart. An item without a guess is GUESS_NEVER.
    """
    if show_guess not in ("always", "after_answer", "never"):
        raise ValueError(f"show_guess must be always, after_answer or never, got {show_guess!r}")
    if not 0 <= gold_guess_share <= 1:
        raise ValueError(f"gold_guess_share must be in [0, 1], got {gold_guess_share}")
    is_gold = np.asarray(is_gold, dtype=bool)
    has_guess = np.asarray(has_guess, dtype=bool)
    out = np.full(len(is_gold), GUESS_NEVER, dtype=object)
    if show_guess == "never":
        return out
    usual, other = (GUESS_BEFORE, GUESS_AFTER) if show_guess == "always" else (GUESS_AFTER, GUESS_BEFORE)
    rng = np.random.default_rng(seed)
    out[has_guess] = usual
    gold = np.flatnonzero(is_gold & has_guess)
    n_before = round(gold_guess_share * len(gold))
    shuffled = rng.permutation(gold)
    out[shuffled[:n_before]] = GUESS_BEFORE
    out[shuffled[n_before:]] = GUESS_AFTER
    n_other = int((out[gold] == other).sum())
    real = np.flatnonzero(~is_gold & has_guess)
    if n_other and len(real):
        out[rng.choice(real, size=min(n_other, len(real)), replace=False)] = other
    return out


def guess_condition_record(annotations: pd.DataFrame, gold: pd.Series, conditions: pd.Series,
                           guesses: pd.Series) -> dict[str, dict[str, list[int]]]:
    """Per annotator and condition (`with_guess`: shown before answering; `without_guess`: after or never),
    on gold questions: [answers, correct, answers where the guess was wrong, of those, answers equal to the
    wrong guess]. `gold`, `conditions`, `guesses` are indexed by item id. JSON-ready (the gold tracker keeps it)."""
    votes = _votes(annotations)
    gold = gold.astype(str)
    gold.index = gold.index.astype(str)
    votes = votes[votes[ITEM_ID].isin(gold.index)]
    record: dict[str, dict[str, list[int]]] = {}
    for annotator, item_id, label in zip(votes[ANNOTATOR_ID], votes[ITEM_ID], votes[LABEL], strict=True):
        condition = "with_guess" if str(conditions.get(item_id, GUESS_NEVER)) == GUESS_BEFORE else "without_guess"
        guess = guesses.get(item_id)
        guess = None if guess is None or (isinstance(guess, float) and np.isnan(guess)) else str(guess)
        truth = gold[item_id]
        counts = record.setdefault(annotator, {}).setdefault(condition, [0, 0, 0, 0])
        counts[0] += 1
        counts[1] += int(label == truth)
        if guess is not None and guess != truth:
            counts[2] += 1
            counts[3] += int(label == guess)
    return record


def guess_condition_summary(records: Iterable[Mapping[str, Mapping[str, Sequence[int]]]]) -> dict[str, Any]:
    """`guess_condition_record`s summed: per condition answers, correct, accuracy, answers on a wrong guess and
    the share of those that followed it; and per annotator the accuracy in each condition."""
    totals: dict[str, list[int]] = {"with_guess": [0, 0, 0, 0], "without_guess": [0, 0, 0, 0]}
    per_annotator: dict[str, dict[str, list[int]]] = {}
    for record in records:
        for annotator, conditions in record.items():
            mine = per_annotator.setdefault(annotator, {})
            for condition, counts in conditions.items():
                if condition not in totals:
                    continue
                totals[condition] = [a + int(b) for a, b in zip(totals[condition], counts, strict=True)]
                mine[condition] = [a + int(b) for a, b in zip(mine.get(condition, [0, 0, 0, 0]), counts, strict=True)]

    def stats(counts: Sequence[int]) -> dict[str, Any]:
        n, correct, wrong_guess, followed = counts
        return {"answers": n, "correct": correct, "accuracy": correct / n if n else None,
                "on_wrong_guess": wrong_guess, "followed_wrong_guess": followed / wrong_guess if wrong_guess else None}

    summary: dict[str, Any] = {condition: stats(counts) for condition, counts in totals.items()}
    summary["per_annotator"] = {
        annotator: {condition: (counts[1] / counts[0] if counts[0] else None) for condition, counts in conditions.items()}
        for annotator, conditions in sorted(per_annotator.items())}
    return summary


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
    out[ITEM_ID] = out[ITEM_ID].astype(str)
    n_new = len(out)
    if max_batch_size is not None and n_new > max_batch_size:
        raise ValueError(f"the batch has {n_new} new items, above max_batch_size={max_batch_size}")
    room = (max_batch_size - n_new) if max_batch_size is not None else None
    for flag in ("is_gold", "is_review", "is_easy"):
        out[flag] = False
    out["gold_label"] = None
    parts = [out]
    taken = set(out[ITEM_ID])

    def fit(count: int) -> int:
        nonlocal room
        if room is None:
            return count
        count = min(count, room)
        room -= count
        return count

    n_gold = fit(round(gold_share * n_new))
    if n_gold and gold_pool is not None and len(gold_pool):
        require_columns(gold_pool, [ITEM_ID, LABEL], "gold pool")
        pool = gold_pool[~gold_pool[ITEM_ID].astype(str).isin(taken)]
        picked = pool.iloc[rng.permutation(len(pool))[: min(n_gold, len(pool))]].copy()
        picked[ITEM_ID] = picked[ITEM_ID].astype(str)
        picked["gold_label"] = picked.pop(LABEL).astype(str)
        picked["is_gold"] = True
        if "utility" in out.columns and n_new:
            # A gold row borrows a real utility so sorting by score does not single it out at the vendor.
            picked["utility"] = rng.choice(out["utility"].to_numpy(), size=len(picked))
        parts.append(picked)
        taken |= set(picked[ITEM_ID])
    if review_items is not None and len(review_items):
        require_columns(review_items, [ITEM_ID], "review items")
        review = review_items[~review_items[ITEM_ID].astype(str).isin(taken)].drop_duplicates(ITEM_ID)
        review = review.head(fit(len(review))).copy()
        review[ITEM_ID] = review[ITEM_ID].astype(str)
        review["is_review"] = True
        # The source batch's marks (gold, easy, its annotators_wanted) do not carry over to the re-send.
        parts.append(review.drop(columns=[LABEL, "gold_label", "is_gold", "is_easy", "annotators_wanted"], errors="ignore"))
        taken |= set(review[ITEM_ID])
    n_easy = fit(round(easy_share * n_new))
    if n_easy and easy_pool is not None and len(easy_pool):
        require_columns(easy_pool, [ITEM_ID, CONFIDENCE], "easy pool")
        easy = easy_pool[~easy_pool[ITEM_ID].astype(str).isin(taken)]
        easy = easy.sort_values(CONFIDENCE, ascending=False, kind="stable").head(n_easy).copy()
        easy[ITEM_ID] = easy[ITEM_ID].astype(str)
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
    n_overlap = round(overlap_share * len(plain))
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
    gold: pd.DataFrame  # `gold_accuracy` over the earlier batches and this one
    gold_answers: pd.DataFrame = field(default_factory=pd.DataFrame)  # this batch's `gold_answers`, for the tracker
    summary: dict[str, Any] = field(default_factory=dict)


def run_quality_control(
    annotations: pd.DataFrame,
    *,
    classes: Sequence[str],
    params: ImportParams,
    gold: pd.Series | None = None,
    earlier_gold: Iterable[Mapping[str, Sequence[int]]] = (),
    probas: pd.DataFrame | None = None,
) -> QualityReport:
    """Gold accuracy -> exclusion -> aggregation -> review flags, for one batch's validated answers.

    `gold` maps the batch's gold item ids to their known labels; `earlier_gold` holds the other
    batches' `gold_record`s, so an annotator's accuracy counts every batch. Gold items are aggregated
    (so their agreement is visible) but never `accepted`: their label is already known. The knobs are
    the `import` section: `probas` (item_id + proba_<class>) only flags labels when
    `params.contradiction_confidence` > 0.
    """
    gold = gold.astype(str) if gold is not None else pd.Series(dtype=str)
    gold.index = gold.index.astype(str)
    answers = gold_answers(annotations, gold)
    gold_summary = gold_accuracy([*earlier_gold, gold_record(answers)])
    excluded = (low_accuracy_annotators(gold_summary, params.min_gold_accuracy, params.min_gold_answers)
                if params.min_gold_accuracy > 0 else [])
    kept, dropped, requeue = exclude_annotators(annotations, excluded)
    final = aggregate(kept, params.aggregation, classes=classes, min_agreement=params.min_agreement,
                      gold=gold if len(gold) else None)
    final["is_gold"] = final[ITEM_ID].isin(gold.index)
    final["model_flagged"] = False
    if probas is not None and params.contradiction_confidence > 0 and len(final):
        flags = confident_learning_flags(final[[ITEM_ID, LABEL]], probas, min_confidence=params.contradiction_confidence)
        flagged = set(flags.loc[flags["flagged"], ITEM_ID])
        hit = final[ITEM_ID].isin(flagged) & ~final["is_gold"] & ~final["needs_review"]
        final.loc[hit, "needs_review"] = True
        final.loc[hit, "review_reason"] = REASON_MODEL_CONTRADICTS
        final["model_flagged"] = final[ITEM_ID].isin(flagged)
    review = final.loc[final["needs_review"] & ~final["is_gold"], [ITEM_ID, "review_reason"]].rename(
        columns={"review_reason": "reason"})
    review = pd.concat([review, pd.DataFrame({ITEM_ID: [r for r in requeue if r not in set(gold.index)],
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
        gold_answers=answers,
    )
    report.summary = {
        "n_annotations": len(annotations),
        "n_items": len(final),
        "n_accepted": len(accepted),
        "n_review": len(review),
        "n_model_contradicts": int((final["review_reason"] == REASON_MODEL_CONTRADICTS).sum()),
        "n_requeued": len(requeue),
        "excluded_annotators": list(excluded),
        "method": params.aggregation,
        "fleiss_kappa": report.agreement["fleiss_kappa"],
        "cohen_kappa_mean": report.agreement["cohen_kappa_mean"],
        "percent_agreement": report.agreement["percent_agreement"],
    }
    return report
