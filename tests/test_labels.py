import pandas as pd

from labelloop.labels import majority_vote, validate_answers


def _answers(rows):
    return pd.DataFrame(rows, columns=["item_id", "annotator_id", "label", "annotation_id"])


def test_unknown_item_unknown_label_null_and_duplicate_are_quarantined_with_reasons():
    answers = _answers([
        ("i1", "ann1", "cat", "1"),
        ("i9", "ann1", "cat", "2"),        # not in this batch
        ("i2", "ann1", "zebra", "3"),      # not in the label set
        ("i3", "ann1", None, "4"),         # no label
        ("i1", "ann1", "dog", "5"),        # the same annotator twice on one item
    ])
    accepted, quarantined = validate_answers(answers, {"i1", "i2", "i3"}, ["cat", "dog"])
    assert accepted[["item_id", "label"]].values.tolist() == [["i1", "cat"]]
    reasons = dict(zip(quarantined.annotation_id, quarantined.reason, strict=True))
    assert "ExpectColumnValuesToBeInSet(item_id" in reasons["2"]
    assert "ExpectColumnValuesToBeInSet(label" in reasons["3"]
    assert "ExpectColumnValuesToNotBeNull(label)" in reasons["4"]
    assert "duplicate annotation" in reasons["5"]


def test_majority_vote_with_agreement_and_threshold():
    answers = _answers([("i1", "a", "cat", "1"), ("i1", "b", "cat", "2"), ("i1", "c", "dog", "3"),
                        ("i2", "a", "cat", "4"), ("i2", "b", "dog", "5")])
    final = majority_vote(answers, min_agreement=0.6).set_index("item_id")
    assert final.loc["i1", "label"] == "cat"
    assert abs(final.loc["i1", "agreement"] - 2 / 3) < 1e-9
    assert "i2" not in final.index  # a 50/50 split does not reach 0.6
    loose = majority_vote(answers, min_agreement=0.5).set_index("item_id")
    assert loose.loc["i2", "label"] == "cat"  # ties broken by label name, deterministically
