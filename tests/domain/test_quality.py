"""Unit tests of labelloop.domain.quality: aggregation, agreement, gold accuracy, CL flags, the QC plan and pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelloop.config import ImportParams
from labelloop.domain import quality as q


def answers(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["item_id", "annotator_id", "label"])


def noisy_crowd(n_items: int, accuracies: list[float], per_item: int, k: int = 4, seed: int = 0, systematic: bool = True):
    rng = np.random.default_rng(seed)
    classes = [f"c{i}" for i in range(k)]
    truth = rng.integers(k, size=n_items)
    rows = []
    for i, t in enumerate(truth):
        for a in rng.choice(len(accuracies), per_item, replace=False):
            if rng.random() < accuracies[a]:
                label = t
            else:
                label = (t + 1) % k if systematic else rng.choice([c for c in range(k) if c != t])
            rows.append((f"i{i}", f"a{a}", classes[label]))
    return answers(rows), pd.Series([classes[t] for t in truth], index=[f"i{i}" for i in range(n_items)]), classes


def accuracy(labels: pd.DataFrame, truth: pd.Series) -> float:
    return float((labels["label"].to_numpy() == truth.reindex(labels["item_id"]).to_numpy()).mean())


# ------------------------------------------------------------------------------------------ majority
def test_majority_vote_columns_agreement_and_ties():
    out = q.majority_vote(answers([
        ("x", "a", "cat"), ("x", "b", "cat"), ("x", "c", "dog"),
        ("y", "a", "cat"), ("y", "b", "dog"),
        ("z", "a", "dog"),
    ]))
    assert list(out.columns) == q.AGGREGATION_COLUMNS
    rows = out.set_index("item_id")
    assert rows.loc["x", "label"] == "cat" and rows.loc["x", "n_votes"] == 3
    assert rows.loc["x", "agreement"] == pytest.approx(2 / 3)
    assert not rows.loc["x", "needs_review"]
    assert rows.loc["y", "needs_review"] and rows.loc["y", "review_reason"] == q.REASON_NO_AGREEMENT
    assert rows.loc["z", "agreement"] == 1.0 and rows.loc["z", "n_votes"] == 1
    assert set(out["method"]) == {"majority"}


def test_majority_vote_min_agreement_sends_weak_winners_to_review():
    data = answers([("x", "a", "1"), ("x", "b", "1"), ("x", "c", "2"), ("x", "d", "3")])
    assert not q.majority_vote(data, min_agreement=0.5)["needs_review"].iloc[0]
    assert q.majority_vote(data, min_agreement=0.6)["needs_review"].iloc[0]
    with pytest.raises(ValueError, match="min_agreement"):
        q.majority_vote(data, min_agreement=1.5)


def test_majority_vote_empty_and_missing_columns():
    empty = q.majority_vote(answers([]))
    assert empty.empty and list(empty.columns) == q.AGGREGATION_COLUMNS
    with pytest.raises(ValueError, match="annotator_id"):
        q.majority_vote(pd.DataFrame({"item_id": ["x"], "label": ["a"]}))


# --------------------------------------------------------------------------------------- Dawid-Skene
def test_dawid_skene_beats_majority_with_systematic_spammers():
    data, truth, classes = noisy_crowd(1500, [0.92, 0.88, 0.85, 0.35, 0.3], per_item=3)
    mv = q.majority_vote(data)
    ds = q.dawid_skene(data, classes)
    assert ds.converged
    assert accuracy(ds.labels, truth) > accuracy(mv, truth) + 0.05
    # The recovered confusion matrices rank annotators by their true accuracy.
    diag = {a: float(np.mean(np.diag(m))) for a, m in ds.confusion.items()}
    assert diag["a0"] > diag["a3"] and diag["a1"] > diag["a4"]
    assert ds.labels["posterior"].between(0, 1).all()
    assert set(ds.labels["method"]) == {"dawid_skene"}


def test_dawid_skene_gold_pins_items_and_rejects_unknown_labels():
    data, truth, classes = noisy_crowd(200, [0.9, 0.6, 0.6], per_item=3, seed=1)
    gold = truth.iloc[:20]
    ds = q.dawid_skene(data, classes, gold=gold)
    pinned = ds.labels.set_index("item_id").loc[gold.index]
    assert (pinned["label"] == gold).all() and (pinned["posterior"] == 1.0).all()
    with pytest.raises(ValueError, match="not in the label set"):
        q.dawid_skene(data, classes[:2])


def test_dawid_skene_runs_at_least_one_iteration():
    data, _, classes = noisy_crowd(50, [0.9, 0.6, 0.6], per_item=3, seed=2)
    assert q.dawid_skene(data, classes, max_iter=1).n_iter == 1
    with pytest.raises(ValueError, match="max_iter must be at least 1"):  # it used to end in an UnboundLocalError
        q.dawid_skene(data, classes, max_iter=0)


def test_aggregate_dispatch():
    data = answers([("x", "a", "1"), ("x", "b", "1"), ("x", "c", "2")])
    assert q.aggregate(data, "majority")["method"].iloc[0] == "majority"
    assert q.aggregate(data, "dawid_skene", classes=["1", "2"])["label"].iloc[0] == "1"
    with pytest.raises(ValueError, match="allowed"):
        q.aggregate(data, "median")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- agreement
def test_cohen_kappa_known_values():
    assert q.cohen_kappa(list("aabb"), list("aabb")) == pytest.approx(1.0)
    # Classic example: observed .7, expected .5 -> .4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert q.cohen_kappa(a, b) == pytest.approx(0.4)
    assert np.isnan(q.cohen_kappa(["a"], ["a"]))
    with pytest.raises(ValueError):
        q.cohen_kappa(["a", "b"], ["a"])


def test_fleiss_kappa_matches_wikipedia_example():
    # Fleiss (1971) example from Wikipedia: 10 items, 14 raters, 5 categories -> kappa 0.210
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]
    rows = []
    for i, counts in enumerate(table):
        rater = 0
        for category, n in enumerate(counts):
            for _ in range(n):
                rows.append((f"i{i}", f"r{rater}", f"c{category}"))
                rater += 1
    assert q.fleiss_kappa(answers(rows)) == pytest.approx(0.210, abs=1e-3)


def test_agreement_report_only_counts_overlap_items():
    data = answers([("x", "a", "1"), ("x", "b", "1"), ("y", "a", "1"), ("y", "b", "2"), ("z", "a", "2"),
                    ("w", "a", "2"), ("w", "b", "2")])
    report = q.agreement_report(data)
    assert report["n_items"] == 4 and report["n_overlap_items"] == 3
    assert report["percent_agreement"] == pytest.approx(2 / 3)
    assert len(report["cohen_kappa_pairs"]) == 1 and report["cohen_kappa_pairs"][0]["n_items"] == 3
    assert np.isfinite(report["fleiss_kappa"])
    assert np.isnan(q.agreement_report(answers([("x", "a", "1")]))["fleiss_kappa"])


# ---------------------------------------------------------------------------------------------- gold
def test_gold_accuracy_sums_batches_and_low_accuracy_needs_enough_answers():
    gold = pd.Series({"g1": "1", "g2": "2", "g3": "1"})
    batch = answers([("g1", "good", "1"), ("g2", "good", "2"), ("g3", "good", "1"),
                     ("g1", "bad", "2"), ("g2", "bad", "2"), ("g3", "bad", "2"), ("x", "bad", "1")])
    record = q.gold_record(q.gold_answers(batch, gold))
    assert record == {"bad": [3, 1], "good": [3, 3]}  # `x` is not a gold item
    one = q.gold_accuracy([record]).set_index("annotator_id")
    assert one.loc["bad", "accuracy"] == pytest.approx(1 / 3) and one.loc["good", "accuracy"] == 1.0
    assert q.low_accuracy_annotators(one.reset_index(), threshold=0.7, min_answers=5) == []  # too few answers yet
    two = q.gold_accuracy([record, {"bad\u200b": [3, 1]}])  # a look-alike id is the same annotator
    assert two.set_index("annotator_id").loc["bad", "n_gold"] == 6
    assert q.low_accuracy_annotators(two, threshold=0.7, min_answers=5) == ["bad"]


def test_exclude_annotators_requeues_items_left_without_answers():
    data = answers([("x", "bad", "1"), ("y", "bad", "1"), ("y", "ok", "2")])
    kept, dropped, requeue = q.exclude_annotators(data, ["bad"])
    assert len(kept) == 1 and len(dropped) == 2 and requeue == ["x"]


# ---------------------------------------------------------------------------------- confident learning
def test_confident_learning_flags_confident_contradictions_only():
    labels = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "label": ["cat", "cat", "dog", "dog"]})
    probas = pd.DataFrame({"item_id": ["a", "b", "c", "d"],
                           "proba_cat": [0.9, 0.03, 0.2, 0.55], "proba_dog": [0.1, 0.97, 0.8, 0.45]})
    flags = q.confident_learning_flags(labels, probas, min_confidence=0.9).set_index("item_id")
    assert flags.loc["b", "flagged"] and flags.loc["b", "model_label"] == "dog"
    assert not flags.loc["a", "flagged"] and not flags.loc["c", "flagged"]
    assert not flags.loc["d", "flagged"]  # contradiction, but not confident
    with pytest.raises(ValueError, match="proba_"):
        q.confident_learning_flags(labels, probas[["item_id"]])


# ------------------------------------------------------------------------------------- export helpers
def test_plan_quality_items_adds_gold_overlap_and_respects_guard():
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(20)], "f": range(20), "utility": np.linspace(1, 0, 20)})
    gold_pool = pd.DataFrame({"item_id": [f"g{i}" for i in range(10)], "f": range(10), "label": ["a"] * 10})
    plan = q.plan_quality_items(items, gold_pool=gold_pool, gold_share=0.1, overlap_share=0.25,
                                overlap_annotators=3, max_batch_size=25, seed=3)
    assert len(plan) == 22 and plan["is_gold"].sum() == 2  # gold is extra: the 20 new items all stay
    assert (plan.loc[plan["is_gold"], "gold_label"] == "a").all()
    assert (plan.loc[plan["is_gold"], "annotators_wanted"] == 3).all()
    assert plan.loc[plan["is_gold"], "utility"].isin(items["utility"]).all()  # not spottable by score
    new = plan[~plan["is_gold"]]
    assert set(new["item_id"]) == set(items["item_id"])
    assert (new["annotators_wanted"] == 3).sum() == round(0.25 * 20)
    assert "label" not in plan.columns
    with pytest.raises(ValueError, match="gold_share"):
        q.plan_quality_items(items, gold_share=2)
    with pytest.raises(ValueError, match="max_batch_size"):
        q.plan_quality_items(items, max_batch_size=19)


def test_plan_quality_items_extras_fill_the_room_gold_then_review_then_easy():
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(10)], "utility": np.linspace(1, 0, 10), "confidence": 0.4})
    gold_pool = pd.DataFrame({"item_id": [f"g{i}" for i in range(5)], "label": ["a"] * 5})
    review = pd.DataFrame({"item_id": ["r1", "r2", "r3"], "utility": 0.5, "confidence": 0.5, "is_gold": False,
                           "annotators_wanted": 1})
    easy_pool = pd.DataFrame({"item_id": ["e1", "e2", "e3", "i0"], "confidence": [0.99, 0.97, 0.6, 1.0]})
    plan = q.plan_quality_items(items, gold_pool=gold_pool, gold_share=0.2, review_items=review, easy_pool=easy_pool,
                                easy_share=0.2, overlap_annotators=2, max_batch_size=14, seed=0)
    assert len(plan) == 14
    assert plan["is_gold"].sum() == 2 and sorted(plan.loc[plan["is_review"], "item_id"]) == ["r1", "r2"]
    assert plan["is_easy"].sum() == 0  # no room left: r3 and the easy items wait
    assert (plan.loc[plan["is_review"], "annotators_wanted"] == 2).all()  # a second look needs several eyes
    roomy = q.plan_quality_items(items, review_items=review, easy_pool=easy_pool, easy_share=0.2, seed=0)
    assert sorted(roomy.loc[roomy["is_easy"], "item_id"]) == ["e1", "e2"]  # most confident, not already in
    assert set(items["item_id"]) <= set(roomy["item_id"]) and len(roomy) == 15


def test_cost_helpers():
    assert q.batch_cost(120, 0.05) == {"labels_bought": 120, "cost": pytest.approx(6.0)}
    assert q.cost_per_point(6.0, 0.03) == pytest.approx(2.0)
    assert np.isnan(q.cost_per_point(6.0, 0.0))


# --------------------------------------------------------------------------------------- whole pass
def test_run_quality_control_excludes_spammer_and_flags_review():
    gold = pd.Series({f"g{i}": "1" for i in range(6)})
    rows = []
    for g in gold.index:
        rows += [(g, "good", "1"), (g, "spam", "2")]
    rows += [("x", "spam", "2"), ("y", "good", "1"), ("y", "spam", "2"), ("z", "good", "1"), ("z", "other", "2")]
    report = q.run_quality_control(answers(rows), classes=["1", "2"], gold=gold,
                                   params=ImportParams(min_gold_accuracy=0.6, min_gold_answers=5))
    assert report.excluded_annotators == ["spam"]
    assert report.requeue == ["x"]
    assert set(report.accepted["item_id"]) == {"y"}  # spam's vote removed; gold never accepted
    review = report.review.set_index("item_id")["reason"]
    assert review["z"] == q.REASON_NO_AGREEMENT and review["x"] == q.REASON_ANNOTATOR_EXCLUDED
    assert report.summary["n_requeued"] == 1
    assert report.gold_answers.set_index("annotator_id")["n_gold"].to_dict() == {"good": 6, "spam": 6}


def test_run_quality_control_counts_earlier_batches_gold_and_flags_contradictions_only_when_asked():
    data = answers([("g1", "u1", "cat"), ("a", "u2", "cat"), ("b", "u2", "dog")])
    probas = pd.DataFrame({"item_id": ["a", "b"], "proba_cat": [0.01, 0.5], "proba_dog": [0.99, 0.5]})
    gold = pd.Series({"g1": "dog"})
    default = q.run_quality_control(data, classes=["cat", "dog"], gold=gold, probas=probas, params=ImportParams())
    assert not default.final["model_flagged"].any()  # import.contradiction_confidence defaults to 0: off
    assert default.excluded_annotators == [] and set(default.accepted["item_id"]) == {"a", "b"}
    strict = ImportParams(min_gold_accuracy=0.5, min_gold_answers=3, contradiction_confidence=0.95)
    report = q.run_quality_control(data, classes=["cat", "dog"], gold=gold, probas=probas, params=strict,
                                   earlier_gold=[{"u1": [2, 0]}])
    assert report.excluded_annotators == ["u1"]  # 0 of 3 gold answers right, over two batches
    assert report.gold.set_index("annotator_id").loc["u1", "n_gold"] == 3
    assert report.final.set_index("item_id").loc["a", "review_reason"] == q.REASON_MODEL_CONTRADICTS
    assert set(report.accepted["item_id"]) == {"b"}


def test_dawid_skene_stays_sane_with_many_classes_and_few_answers():
    # 26 classes, ~2 answers per item: without a diagonal prior EM can drift to a permuted solution.
    data, truth, classes = noisy_crowd(60, [0.9, 0.85, 0.8, 0.8, 0.5], per_item=1, k=26, seed=4, systematic=False)
    ds = q.dawid_skene(data, classes)
    mv = q.majority_vote(data)
    assert accuracy(ds.labels, truth) >= accuracy(mv, truth) - 0.02


# ------------------------------------------------------------------------------ normalised annotators
ALICE_SPELLINGS = ["alice", "alice\u200b", " alice ", "\ufeffal\u2060ice", "ａｌｉｃｅ", "al\u200cice\u200d"]


def test_normalize_annotator_id_one_spelling_per_person():
    assert {q.normalize_annotator_id(s) for s in ALICE_SPELLINGS} == {"alice"}
    assert q.normalize_annotator_id("José") == q.normalize_annotator_id("Jose\u0301") == "José"  # NFC/NFD forms meet
    assert q.normalize_annotator_id("Bob Smith") == "Bob Smith"  # inner spaces and case are kept
    for nothing in (None, float("nan"), pd.NA, "", "   ", "\u200b\u2060\ufeff"):
        assert q.normalize_annotator_id(nothing) is None


# --------------------------------------------------------------------------- label-error repair (CL)
def test_find_label_errors_recovers_known_flipped_labels():
    rng = np.random.default_rng(0)
    n, k = 600, 3
    truth = rng.integers(k, size=n)
    # Out-of-fold probabilities of a decent model: most mass on the true class, some rows uncertain.
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), truth] += rng.uniform(1.5, 5.0, size=n)
    probas = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    given = truth.copy()
    flipped = rng.choice(n, size=60, replace=False)
    given[flipped] = (truth[flipped] + rng.integers(1, k, size=60)) % k
    flags = q.find_label_errors(given, probas)
    found = set(np.flatnonzero(flags.flagged))
    precision = len(found & set(flipped)) / len(found)
    recall = len(found & set(flipped)) / len(flipped)
    assert precision >= 0.6 and recall >= 0.7, (precision, recall)
    assert (flags.suggested[flipped][np.isin(flipped, list(found))] == truth[flipped][np.isin(flipped, list(found))]).mean() > 0.9
    assert np.allclose(flags.thresholds, [probas[given == j, j].mean() for j in range(k)])
    assert np.isnan(flags.margin[~flags.flagged]).all() and (flags.margin[flags.flagged] > 0).all()
    assert (flags.suggested[~flags.flagged] == -1).all()


def test_find_label_errors_rule_on_a_hand_made_case():
    probas = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    given = np.array([0, 0, 0, 1, 1, -1])
    flags = q.find_label_errors(given, probas)
    # thresholds: class 0 = mean(0.9, 0.8, 0.3) = 0.667; class 1 = mean(0.4, 0.8) = 0.6
    assert flags.thresholds == pytest.approx([2 / 3, 0.6])
    # row 2: p0 0.3 < 0.667 and p1 0.7 >= 0.6 -> flagged, suggests 1; row 3: p1 0.4 < 0.6 but p0 0.6 < 0.667 -> not;
    # row 5 has no given label.
    assert flags.flagged.tolist() == [False, False, True, False, False, False]
    assert flags.suggested.tolist() == [-1, -1, 1, -1, -1, -1] and flags.margin[2] == pytest.approx(0.4)
    assert not q.find_label_errors(np.array([1, 1]), np.array([[0.9, 0.1], [0.8, 0.2]])).flagged.any()  # nobody given 0
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        q.find_label_errors(np.array([2]), np.array([[0.5, 0.5]]))


# ----------------------------------------------------------------------- guess shown, guess effect
def test_gold_questions_are_split_and_decoys_hide_the_minority_condition():
    is_gold = np.array([True] * 6 + [False] * 20)
    has_guess = np.ones(26, dtype=bool)
    always = q.assign_guess_conditions(is_gold, has_guess, "always", 0.5, seed=1)
    assert list(always[is_gold]).count("before") == 3 and list(always[is_gold]).count("after") == 3
    assert list(always[~is_gold]).count("after") == 3 and list(always[~is_gold]).count("before") == 17  # 3 decoys
    after = q.assign_guess_conditions(is_gold, has_guess, "after_answer", 0.5, seed=1)
    assert list(after[~is_gold]).count("before") == 3 and list(after[~is_gold]).count("after") == 17
    assert set(q.assign_guess_conditions(is_gold, has_guess, "always", 1.0)) == {"before"}  # no experiment: no decoys
    assert set(q.assign_guess_conditions(is_gold, has_guess, "after_answer", 0.0)) == {"after"}
    assert set(q.assign_guess_conditions(is_gold, has_guess, "never", 0.5)) == {"never"}
    no_guess = has_guess.copy()
    no_guess[[0, 10]] = False
    assert q.assign_guess_conditions(is_gold, no_guess, "always", 0.5)[[0, 10]].tolist() == ["never", "never"]
    with pytest.raises(ValueError, match="show_guess"):
        q.assign_guess_conditions(is_gold, has_guess, "sometimes", 0.5)


def test_gold_accuracy_with_and_without_the_guess():
    gold = pd.Series({"g1": "cat", "g2": "dog", "g3": "cat", "g4": "dog"})
    conditions = pd.Series({"g1": "before", "g2": "before", "g3": "after", "g4": "never"})
    guesses = pd.Series({"g1": "dog", "g2": "dog", "g3": "dog", "g4": None}, dtype=object)
    votes = answers([("g1", "a", "dog"), ("g2", "a", "dog"), ("g3", "a", "cat"), ("g4", "a", "dog"),
                     ("g1", "b", "cat"), ("g3", "b", "dog"), ("x", "b", "cat")])  # x is not gold
    record = q.guess_condition_record(votes, gold, conditions, guesses)
    assert record == {"a": {"with_guess": [2, 1, 1, 1], "without_guess": [2, 2, 1, 0]},
                      "b": {"with_guess": [1, 1, 1, 0], "without_guess": [1, 0, 1, 1]}}
    summary = q.guess_condition_summary([record, record])
    assert summary["with_guess"] == {"answers": 6, "correct": 4, "accuracy": pytest.approx(4 / 6), "on_wrong_guess": 4,
                                     "followed_wrong_guess": 0.5}
    assert summary["without_guess"]["accuracy"] == pytest.approx(4 / 6)
    assert summary["per_annotator"]["b"] == {"with_guess": 1.0, "without_guess": 0.0}
    assert q.guess_condition_summary([])["with_guess"]["accuracy"] is None
