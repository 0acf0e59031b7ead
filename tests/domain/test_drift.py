import numpy as np
import pandas as pd
import pytest

from labelloop.domain.drift import (
    DRIFTED,
    STABLE,
    categorical_drift,
    ks_statistic,
    measure_drift,
    numeric_drift,
    psi_numeric,
    text_lengths,
)


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_psi_and_ks_stay_low_on_the_same_distribution_and_flag_a_shift():
    rng = _rng()
    reference = rng.normal(0, 1, 20_000)
    same = rng.normal(0, 1, 20_000)
    shifted = rng.normal(0.8, 1, 20_000)
    stable = numeric_drift("x", reference, same, 10, 0.1, 0.2)
    moved = numeric_drift("x", reference, shifted, 10, 0.1, 0.2)
    assert stable.psi < 0.02 and stable.ks < 0.03 and stable.status == STABLE
    assert moved.psi >= 0.2 and moved.ks > 0.25 and moved.status == DRIFTED


def test_ks_matches_scipy():
    from scipy.stats import ks_2samp

    rng = _rng(1)
    a, b = rng.normal(0, 1, 3_000), rng.exponential(1, 2_000)
    assert ks_statistic(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)
    assert ks_statistic(np.array([np.nan]), b) is None


def test_missing_values_are_a_bin_of_their_own():
    rng = _rng(2)
    reference = rng.normal(0, 1, 10_000)
    current = rng.normal(0, 1, 10_000)
    current[: 3_000] = np.nan  # 30% missing where the training data had none: same values otherwise
    drift = numeric_drift("x", reference, current, 10, 0.1, 0.2)
    assert drift.missing_reference == 0 and drift.missing_current == pytest.approx(0.3)
    assert drift.status == DRIFTED
    assert drift.ks < 0.05  # the present values did not move: KS (present values only) says so
    psi, bins = psi_numeric(reference, current)
    assert bins == 11 and psi == pytest.approx(drift.psi)


def test_constant_reference_still_bins():
    psi, bins = psi_numeric(np.ones(1_000), np.ones(1_000))
    assert psi == pytest.approx(0.0) and bins == 1
    psi_moved, _ = psi_numeric(np.ones(1_000), np.full(1_000, 2.0))
    assert psi_moved > 1


def test_categorical_unseen_categories_get_their_bucket():
    rng = _rng(3)
    reference = pd.Series(rng.choice(["a", "b", "c"], 10_000, p=[0.5, 0.3, 0.2]))
    same = pd.Series(rng.choice(["a", "b", "c"], 10_000, p=[0.5, 0.3, 0.2]))
    stable = categorical_drift("plan", reference, same, 50, 0.1, 0.2)
    assert stable.psi < 0.01 and stable.unseen_share == 0 and stable.status == STABLE
    novel = same.copy()
    novel[:2_500] = "brand-new"
    novel[2_500:2_600] = None
    moved = categorical_drift("plan", reference, novel, 50, 0.1, 0.2)
    assert moved.unseen_share == pytest.approx(0.25) and moved.missing_current == pytest.approx(0.01)
    assert moved.status == DRIFTED


def test_rare_categories_are_pooled_not_unseen():
    reference = pd.Series(["a"] * 900 + [f"r{i}" for i in range(100)])
    current = pd.Series(["a"] * 900 + [f"r{i}" for i in range(100)])
    drift = categorical_drift("c", reference, current, 1, 0.1, 0.2)
    assert drift.unseen_share == 0 and drift.psi == pytest.approx(0.0)


def test_text_is_compared_by_length():
    assert np.array_equal(text_lengths(pd.Series(["ab", None, "abcd"])), np.array([2, np.nan, 4]), equal_nan=True)
    rng = _rng(4)
    words = np.array(["good", "bad", "fine", "terrible", "ok"])

    def texts(n, mean_words):
        counts = rng.poisson(mean_words, n) + 1
        return pd.Series([" ".join(rng.choice(words, k)) for k in counts])

    reference = pd.DataFrame({"review": texts(3_000, 10)})
    same = pd.DataFrame({"review": texts(3_000, 10)})
    longer = pd.DataFrame({"review": texts(3_000, 30)})
    quiet = measure_drift(reference, same, text=["review"])
    loud = measure_drift(reference, longer, text=["review"])
    assert quiet.columns[0].kind == "text" and not quiet.drifted
    assert [c.column for c in loud.drifted] == ["review"] and "review (length)" in loud.text()


def test_report_over_a_frame_names_drifted_columns_and_samples_big_windows():
    rng = _rng(5)
    n = 5_000
    reference = pd.DataFrame({"x": rng.normal(0, 1, n), "y": rng.normal(0, 1, n),
                              "plan": rng.choice(["a", "b"], n)})
    current = pd.DataFrame({"x": rng.normal(0, 1, 3 * n), "y": rng.normal(2, 1, 3 * n),
                            "plan": rng.choice(["a", "b"], 3 * n)})
    report = measure_drift(reference, current, numeric=["x", "y"], categorical=["plan"],
                           reference_confidence=rng.beta(8, 2, n), current_confidence=rng.beta(2, 2, 3 * n),
                           max_rows=4_000, confidence_reference="holdout")
    assert [c.column for c in report.drifted] == ["y", "confidence"] or [c.column for c in report.drifted] == ["confidence", "y"]
    assert report.current_rows == 4_000 and report.current_rows_total == 3 * n and report.sampled
    assert "sampled uniformly to 4,000" in report.markdown()
    assert report.text().startswith("drift: 2 of 4 columns drifted (PSI ≥ 0.2)")
    metrics = report.metrics()
    assert metrics["drift.columns_drifted"] == 2 and metrics["drift.psi.y"] >= 0.2 and metrics["drift.psi.x"] < 0.1
    assert "drift.ks.x" in metrics and "drift.unseen_share.plan" in metrics and "drift.ks.plan" not in metrics


def test_too_few_rows_are_not_compared():
    frame = pd.DataFrame({"x": np.arange(10.0)})
    report = measure_drift(frame, frame, numeric=["x"], min_rows=100)
    assert report.skipped and report.columns == () and report.metrics() == {}
    assert report.text() == "drift: not measured (reference has 10 rows and window has 10 rows, fewer than 100)"


def test_a_million_row_window_is_cheap_once_sampled():
    rng = _rng(6)
    reference = pd.DataFrame({f"x{i}": rng.normal(0, 1, 2_000) for i in range(5)})
    current = pd.DataFrame({f"x{i}": rng.normal(0, 1, 1_000_000) for i in range(5)})
    report = measure_drift(reference, current, numeric=list(reference.columns), max_rows=100_000)
    assert report.current_rows == 100_000 and not report.drifted


def test_categorical_drift_keeps_each_top_categorys_shares_for_the_segment_monitor():
    reference = pd.Series(["a"] * 600 + ["b"] * 300 + ["c"] * 100)
    current = pd.Series(["a"] * 300 + ["b"] * 300 + ["c"] * 300 + ["new"] * 100)
    drift = categorical_drift("plan", reference, current, 2, 0.1, 0.2)
    assert drift.categories == (("a", 0.6, 0.3), ("b", 0.3, 0.3))  # the top max_categories, most frequent first


def test_brief_is_the_cycle_lines_drift_part():
    from labelloop.domain.drift import brief

    rng = _rng(8)
    n = 2_000
    reference = pd.DataFrame({"x": rng.normal(0, 1, n), "y": rng.normal(0, 1, n)})
    current = pd.DataFrame({"x": rng.normal(0, 1, n), "y": rng.normal(3, 1, n)})
    report = measure_drift(reference, current, numeric=["x", "y"], reference_confidence=rng.beta(8, 2, n),
                           current_confidence=rng.beta(8, 2, n))
    text = brief(report.to_dict())
    assert text.startswith("drift 1/3 drifted (y), confidence PSI 0.0")
    assert brief(measure_drift(reference, reference, numeric=["x"]).to_dict()) == "drift 0/1"
    skipped = measure_drift(reference[:10], current, numeric=["x"])
    assert brief(skipped.to_dict()) == "drift not measured (reference has 10 rows, fewer than 500)"
