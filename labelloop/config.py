"""Typed configuration: one strict pydantic model per `params.yaml` section.

Each section is named like the stage that reads it. The same models are the parameter types of the
Prefect flows, so a per-run override from the UI is validated exactly like the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


class ConfigError(ValueError):
    """Invalid configuration; the message names the key and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ProductionParams(Section):
    """The simulated production traffic the champion scores each cycle."""

    rows_per_cycle: int = Field(800, gt=0, description="Traffic rows scored by the champion per cycle.")


DriftReference = Literal["labeled", "holdout"]


class DriftParams(Section):
    """Drift of each capture window against the training data (labelloop/domain/drift.py): PSI per feature column
    (numeric at the reference's quantiles, categorical per category with an "unseen" bucket, text by its length;
    missing values a bin of their own), the KS statistic beside it for numeric and text length, and the same
    for the model's confidence. Reported in the capture report, reports/drift.jsonl and `labelloop status`."""

    sample_rows: int = Field(
        100_000, ge=0, description="Each side is sampled uniformly to at most this many rows (bounds the cost of a "
        "1M-row window); 0 turns the drift report off."
    )
    min_rows: int = Field(
        500, ge=1, description="Windows (or references) with fewer rows are not compared: PSI on them is noise (10 bins, "
        "800-row windows, no drift: PSI's 99th percentile 0.24 with 100 reference rows, 0.13 with 200, 0.07 with 500)."
    )
    bins: int = Field(10, ge=2, le=100, description="Numeric and text-length bins, cut at the reference's quantiles.")
    max_categories: int = Field(
        50, ge=1, description="Categorical: the reference's most frequent categories kept as bins; rarer ones pooled as other."
    )
    moderate_psi: float = Field(0.1, gt=0, description="A column with PSI at or above this is reported as moderate drift.")
    drifted_psi: float = Field(0.2, gt=0, description="A column with PSI at or above this is reported as drifted.")
    reference: DriftReference = Field(
        "holdout", description="The features are compared with: holdout = the holdout fixed at init (a uniform sample of "
        "the population the models are judged on; large from the first cycle); labeled = the labelled (training) set at "
        "the current data version (biased by selection: active learning picks unusual rows, which reads as drift)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> DriftParams:
        if self.moderate_psi > self.drifted_psi:
            raise ValueError(f"moderate_psi ({self.moderate_psi}) must not exceed drifted_psi ({self.drifted_psi})")
        return self


class CaptureParams(Section):
    confidence_threshold: float = Field(
        0.9, gt=0, le=1, description="Predictions with confidence below this become candidates."
    )
    max_rows_per_run: int = Field(1_000_000, gt=0, description="Cap on new log rows read per capture run.")
    unreadable_part_attempts: int = Field(
        3, ge=1, description="A log part that cannot be read (e.g. its producer is still writing it) stays unread and is "
        "retried; it is quarantined as lost only after failing this many capture runs in a row, unchanged in between."
    )
    unreadable_part_min_age_seconds: float = Field(
        3600.0, ge=0,
        description="...and only once it has not been modified for this long (a part still growing is never given up).",
    )
    drift: DriftParams = DriftParams()
    audit_sample_rows: int = Field(
        1000, ge=1, description="Audit candidates kept per capture window: a uniform random sample of ALL the window's "
        "rows (every confidence), each with its inclusion probability min(1, audit_sample_rows / window rows); "
        "select draws `select.audit_fraction` of each batch from them (labelloop/domain/audit.py)."
    )


# The names `params.yaml` may choose; the acquisition tables (labelloop/domain/acquisition/registry.py) and the
# vendor table (labelloop/adapters/vendors/__init__.py) are keyed by exactly these (tests check it).
StrategyName = Literal[
    "least_confidence", "margin", "ratio", "entropy", "random", "vote_entropy", "kl_consensus", "bald",
    "information_density", "expected_error_reduction", "hybrid",
]
SelectorName = Literal["topk", "cluster", "coreset", "hybrid"]
VendorName = Literal["simulated", "filedrop", "label-studio"]
HybridExplore = Literal["random", "representative"]
HybridDiversity = Literal["cluster", "coreset", "none"]
HybridQuotaBalance = Literal["batch", "labelled"]
HybridExploitWeighting = Literal["none", "inverse_labelled"]


class HybridParams(Section):
    """The hybrid selector's settings (used whenever it runs: the `hybrid` strategy, or `selector: hybrid`).

    A batch is filled in three shares: exploit (the most useful rows, spread out by `diversity`), quota
    (round-robin over the groups: predicted class or `select.group_column`) and explore (rows drawn
    regardless of utility). Defaults are the mix the label-efficiency benchmarks found best (docs/benchmarks.md).
    """

    exploit_fraction: float = Field(
        0.7, ge=0, le=1, description="Share of the batch taken by utility (the three fractions are normalised to sum to 1)."
    )
    quota_fraction: float = Field(
        0.2, ge=0, le=1, description="Share filled round-robin over the groups, the least-picked group first."
    )
    explore_fraction: float = Field(0.1, ge=0, le=1, description="Share drawn regardless of utility.")
    explore: HybridExplore = Field(
        "random", description="random: uniform rows; representative: the rows nearest k-means centroids of the pool."
    )
    diversity: HybridDiversity = Field(
        "cluster",
        description="How the exploit share is spread out: k-means clusters, greedy k-center (coreset) or none (plain top-k).",
    )
    top_m_factor: int = Field(
        10, ge=1, description="The diversity step looks at the top top_m_factor × (exploit share) rows by utility."
    )
    representative_sample: int = Field(
        20_000, ge=1, description="explore: representative fits its k-means on at most this many eligible rows."
    )
    min_quota_groups: int = Field(
        0, ge=0,
        description="Quotas only when the eligible rows span at least this many groups (0 = always); "
        "else the share is exploited.",
    )
    quota_balance: HybridQuotaBalance = Field(
        "batch",
        description="batch: count this batch's picks per group; labelled: also count the labelled rows, so the rarest "
        "labelled group fills first.",
    )
    exploit_weighting: HybridExploitWeighting = Field(
        "none",
        description="inverse_labelled: rank the exploit share by utility × "
        "(mean labelled count / the row's group's labelled count).",
    )

    @model_validator(mode="after")
    def _some_share(self) -> HybridParams:
        if self.exploit_fraction + self.quota_fraction + self.explore_fraction <= 0:
            raise ValueError("exploit_fraction, quota_fraction and explore_fraction are all 0; one must be positive")
        return self


# `auto` is not a strategy of the registry: it is the bandit (labelloop/domain/acquisition/bandit.py) choosing one
# registered strategy (an arm, `select.bandit.arms`) per batch.
AUTO_STRATEGY = "auto"
SelectStrategy = Literal[StrategyName, "auto"]
BASELINE_ARM = "random"
DEFAULT_ARMS: tuple[StrategyName, ...] = ("random", "margin", "hybrid")
# What the bandit pays a batch on (labelloop/domain/acquisition/bandit.py `batch_gain`).
GainMeasure = Literal["accuracy", "probability"]


class BanditParams(Section):
    """`select.strategy: auto`: EXP3 with a probability floor over `arms`, paid the importance-weighted gain (in
    `gain_measure`) each batch brought on the audit items (labelloop/domain/acquisition/bandit.py); state in
    state/bandit.json."""

    arms: list[StrategyName] = Field(
        default_factory=lambda: list(DEFAULT_ARMS),
        description="Registered strategies the bandit chooses among; must include random (the baseline).",
    )
    gamma: float = Field(
        0.3, gt=0, le=1, description="Exploration: once the warm-up batches are paid, every arm keeps a probability of at least "
        "gamma / (number of arms); random starts at that floor (labelloop/domain/acquisition/bandit.py).")
    eta: float = Field(0.5, gt=0, description="Learning rate of the log-weights (EXP3).")
    reward_scale: float = Field(
        0.02, gt=0, description="An accuracy gain of this much (0.02 = 2 points) on the audit items pays reward 1, no "
        "gain 0.5, a loss of this much 0.",
    )
    # The four below are measured in docs/benchmarks.md ("select.strategy: auto"); 0, 0, 1, accuracy = plain EXP3.
    random_start: float = Field(
        -4.0, le=0, description="The random arm's starting log-weight, the others' being 0: -4 starts it at its floor "
        "gamma / (number of arms) (a fallback, not a candidate to spread the first batches over), 0 = equal weights. "
        "Applies to a new state only (state/bandit.json keeps the learnt weights).",
    )
    warmup: int = Field(
        2, ge=0, description="Measured batches left out of the reward baseline (the seed model's first batches gain "
        "much more under any arm): the first warmup + 1 batches are paid 0.5 and the floor applies once they are "
        "recorded; 0 = the first batch is paid against a baseline of 0, the floor from the start.",
    )
    random_decay: float = Field(
        0.5, gt=0, le=1, description="Once random has been measured, its floor is gamma / (number of arms) times "
        "random_decay ** n, n = its batches paid after the warm-up (the floor guards against random before it is "
        "measured; after, its share is what the EXP3 weights give it, rising when it is paid more than the others). "
        "1 = no decay: random keeps the floor.",
    )
    gain_measure: GainMeasure = Field(
        "accuracy", description="What a batch is paid on: accuracy = the importance-weighted accuracy gain on the audit "
        "items; probability = the gain in the probability the model gives their true class (smoother, no verdict "
        "changed in the benchmarks).",
    )

    @field_validator("arms", mode="before")
    @classmethod
    def _arms(cls, value: object) -> object:
        # Before the Literal check, so an unknown arm is named with the allowed ones.
        if not isinstance(value, (list, tuple)):
            return value
        arms, allowed = [str(v) for v in value], sorted(get_args(StrategyName))
        unknown = [a for a in arms if a not in allowed]
        if unknown:
            raise ValueError(f"unknown arm {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
        repeated = sorted({a for a in arms if arms.count(a) > 1})
        if repeated:
            raise ValueError(f"arm {', '.join(map(repr, repeated))} named twice; name each arm once")
        if BASELINE_ARM not in arms:
            raise ValueError(f"the arms must include {BASELINE_ARM!r} (the baseline auto must not fall behind); got "
                             f"{', '.join(arms) or 'none'}; allowed: {', '.join(allowed)}")
        return value


class SelectParams(Section):
    strategy: SelectStrategy = Field(
        "hybrid", description="Acquisition strategy (see `labelloop strategies`); hybrid = best in docs/benchmarks.md; "
        "auto = a bandit choosing among select.bandit.arms per batch by the accuracy gain measured on audit items."
    )
    selector: SelectorName = Field(
        "topk", description="How utilities become a batch (the hybrid strategy brings its own selector)."
    )
    batch_size: int = Field(100, gt=0)
    seed: int = Field(0, ge=0, description="Random seed; the batch records it.")
    chunk_size: int = Field(200_000, gt=0, description="Rows scored per chunk (bounds memory).")
    committee_size: int = Field(
        5, ge=2, le=50, description="Members of the XGBoost committee (vote_entropy, kl_consensus, bald)."
    )
    calibration: Literal["temperature", "isotonic"] | None = Field(
        None, description="Calibrate the champion's probabilities before scoring (fitted on the holdout); ECE is reported."
    )
    group_column: str | None = Field(None, description="Hybrid quotas per value of this pool column; null = predicted class.")
    audit_fraction: float = Field(
        0.1, ge=0, le=1,
        description="Audit items each batch also labels, as a share of batch_size (rounded; 0 = off): drawn uniformly at "
        "random from the capture windows' audit candidates (all traffic, not only low-confidence rows), never by the "
        "strategy, with their sampling probability recorded; they give unbiased estimates of the champion's accuracy "
        "on live traffic (labelloop/domain/audit.py, README 'The audit sample') and the rewards of select.strategy auto.",
    )
    hybrid: HybridParams = HybridParams()
    bandit: BanditParams = BanditParams()

    @property
    def audit_items(self) -> int:
        """Audit items per batch: round(audit_fraction × batch_size), at least 1 when the fraction is positive."""
        return 0 if self.audit_fraction == 0 else max(1, round(self.audit_fraction * self.batch_size))

    @field_validator("strategy", "selector", mode="before")
    @classmethod
    def _known(cls, value: object, info: ValidationInfo) -> object:
        # Before the Literal check, so the message reads like the CLI's other choice errors.
        allowed = (*get_args(StrategyName), AUTO_STRATEGY) if info.field_name == "strategy" else get_args(SelectorName)
        if value not in allowed:
            raise ValueError(f"unknown {info.field_name} {value!r}; allowed: {', '.join(sorted(allowed))}")
        return value


class SimulatedVendorParams(Section):
    annotators: int = Field(1, ge=1, le=20, description="Simulated annotators.")
    error_rate: float = Field(0.0, ge=0, lt=1, description="Chance an annotator answers a wrong class.")
    error_rates: list[float] | None = Field(
        None, description="Per-annotator error rates (one per annotator); null = error_rate for everyone."
    )
    noise: Literal["uniform", "confusion"] = Field(
        "uniform",
        description="uniform: a wrong answer is any other class; confusion: each annotator confuses each "
        "class with a few others (a fixed random confusion matrix per annotator).",
    )
    delay_imports: int = Field(
        0, ge=0, le=20, description="Answers come back spread over this many later imports (0 = all at once)."
    )
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _rates_match_annotators(self) -> SimulatedVendorParams:
        if self.error_rates is not None:
            if len(self.error_rates) != self.annotators:
                raise ValueError(
                    f"error_rates has {len(self.error_rates)} entries but annotators={self.annotators}; give one per annotator"
                )
            bad = [r for r in self.error_rates if not 0 <= r < 1]
            if bad:
                raise ValueError(f"error_rates must be in [0, 1), got {bad}")
        return self


class ExportParams(Section):
    vendor: VendorName = "simulated"
    columns: list[str] | None = Field(
        None, description="Id and feature columns allowed to leave for the vendor; null = all of them (ids included)."
    )
    max_batch_size: int = Field(
        500, gt=0, description="Guard against annotator fatigue: most items one export sends (new + gold + review + easy)."
    )
    price_per_label: float = Field(
        0.0, ge=0, description="Price of one answer; every answer is paid (overlap and gold included)."
    )
    gold_share: float = Field(
        0.0, ge=0, le=1,
        description="Gold questions added per batch, as a share of its new items: drawn from the labelled seed set, "
        "their true label stays on our side (0 = off).",
    )
    overlap_share: float = Field(
        0.0, ge=0, le=1, description="Share of new items asked of `overlap_annotators` annotators (0 = one answer each)."
    )
    overlap_annotators: int = Field(
        3, ge=2, le=3, description="Annotators per overlap item, gold question and re-sent review item (2 or 3)."
    )
    easy_share: float = Field(
        0.0, ge=0, le=1,
        description="Easy items added per batch, as a share of its new items: the pool's most confident predictions (0 = off).",
    )
    review_resend: bool = Field(True, description="Send the review queue's pending items again with the next export.")
    max_review_sends: int = Field(
        2, ge=1, le=10, description="Times one item is re-sent for review before it is left to a human reviewer."
    )
    context: Literal["none", "guess", "guess+why"] = Field(
        "guess",
        description="What tasks carry besides the item: none; guess (the model's label and confidence); guess+why (also "
        "the features pushing toward and away from it: TreeSHAP for XGBoost, coefficients x values for linear models, "
        "none for other estimators; labelloop/explain.py).",
    )
    show_guess: Literal["always", "after_answer", "never"] = Field(
        "always",
        description="When annotators see the guess: always (with the item; Label Studio pre-fills it), after_answer (file "
        "drop: a separate `after_answer` field the vendor shows once the item is answered; Label Studio cannot, so it "
        "gets no guess), never (no guess leaves). A visible guess can anchor annotators: see gold_guess_share.",
    )
    gold_guess_share: float = Field(
        0.5, ge=0, le=1,
        description="Share of gold questions that show a guess before the answer (the rest: only after), when context "
        "is not none and show_guess is not never; the import reports annotator accuracy with and without it. The "
        "guess on a gold question comes from a model fitted without that question.",
    )
    why_features: int = Field(3, ge=1, le=10, description="guess+why: features listed toward and away from the guess.")
    simulated: SimulatedVendorParams = SimulatedVendorParams()
    filedrop_url: str | None = Field(None, description="fsspec URL of the drop; default <workspace>/filedrop.")
    label_studio_url: str = Field("http://127.0.0.1:8080", description="Token comes from LABEL_STUDIO_API_KEY.")


class ErrorScanParams(Section):
    """Label-error repair after each import: out-of-fold probabilities over the labelled set, confident-learning
    flags (labelloop/domain/quality.py `find_label_errors`), flagged items asked again through the review queue."""

    enabled: bool = Field(
        False, description="Scan after every import that brought labels (off by default: each scan fits `folds` models "
        "and every re-asked item is paid overlap_annotators times).",
    )
    folds: int = Field(5, ge=2, le=10, description="Cross-validation folds for the out-of-fold probabilities.")
    max_rows: int = Field(
        5000, ge=20, description="Rows the scan fits on at most: the seed rows and the newest labels (bounds its cost).")
    min_rows: int = Field(100, ge=20, description="No scan before the labelled set has this many rows.")
    max_flags: int = Field(
        5, ge=1, description="Flagged items queued per scan at most, the most confidently wrong first (bounds the re-ask cost; "
        "the benchmark found the first few the most often really wrong).")
    n_estimators: int = Field(
        50, ge=1, description="Trees per fold model (XGBoost, random forest): cheaper than `train`; other estimators use "
        "the train settings.")


class ImportParams(Section):
    aggregation: Literal["majority", "dawid_skene"] = "majority"
    min_agreement: float = Field(
        0.5, ge=0, le=1, description="Share of votes the winning label needs; below it, the item goes to review."
    )
    min_gold_accuracy: float = Field(
        0.0, ge=0, le=1, description="Exclude annotators below this accuracy on gold questions (0 = off)."
    )
    min_gold_answers: int = Field(5, ge=1, description="Gold answers an annotator needs before the threshold applies.")
    contradiction_confidence: float = Field(
        0.0, ge=0, le=1, description="Flag labels the model contradicts with at least this confidence for review (0 = off)."
    )
    recheck_days: float = Field(
        3.0, ge=0, description="Fetch fully imported batches again for this many days after their import, so a vendor's "
        "corrected answers reach the labelled set as relabels (0 = never)."
    )
    error_scan: ErrorScanParams = ErrorScanParams()


class DatasetParams(Section):
    source: str | None = Field(
        None, description="Labelled parquet/CSV the demo draws seed, holdout and traffic from; null = shipped satellite set."
    )
    label_column: str = "label"
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    seed_size: int = Field(50, gt=0, description="Labelled rows the first model is trained on.")
    split_seed: int = Field(0, ge=0)
    remote_url: str | None = Field(
        None,
        description="DVC remote for data versions (e.g. s3://bucket/labelloop with the dvc-s3 extra); "
        "null = <workspace>/dvc-remote.",
    )


class AutolabelParams(Section):
    """Auto-labels (labelloop/domain/autolabel.py, labelloop/stages/autolabel.py): after select, pool rows the
    champion is sure of get its label without a human, at per-class confidence thresholds chosen so the precision of
    auto-labels, estimated on human-labelled check items above the same thresholds, has a one-sided Clopper-Pearson
    lower bound of at least min_precision. Re-measured every cycle; below the target auto-labelling pauses itself."""

    enabled: bool = Field(False, description="Auto-label confident pool rows after each select (off by default).")
    min_precision: float = Field(
        0.98, gt=0.5, lt=1, description="The lower confidence bound of the auto-labels' precision must reach this.")
    confidence: float = Field(
        0.95, ge=0.5, lt=1, description="Confidence level of that one-sided lower bound (Clopper-Pearson).")
    min_confidence: float = Field(
        0.9, gt=0, lt=1, description="No threshold below this; held-back check items are drawn among pool rows at or "
        "above it.")
    max_rows: int = Field(2000, ge=1, description="Auto-labels per cycle at most (the most confident rows first).")
    holdback_share: float = Field(
        0.2, ge=0, lt=1, description="Check items per cycle, as a share of select.batch_size: pool rows at or above "
        "min_confidence, drawn uniformly, sent to humans anyway (a check batch beside the cycle's batch; the simulator "
        "takes them out of the batch).")
    min_checked_per_class: int = Field(
        10, ge=1, description="A class needs this many checked items above its threshold, else it gets no auto-labels.")
    min_checked: int = Field(
        100, ge=1, description="Checked items above the thresholds (all classes) needed before any auto-label: with no "
        "errors, the 95% bound reaches 0.98 only from about 150.")
    check_holdout: bool = Field(
        False, description="The fixed holdout also serves as check items, scored by the champion (never trained on it): "
        "a uniform human-labelled sample, so thresholds from the first cycle; the holdout then also steers the "
        "thresholds, not only the gate.")
    choose_share: float = Field(
        0.5, ge=0, lt=1, description="Share of the check items (a fixed split: an item keeps its side) that place the "
        "per-class thresholds; the others only measure the precision bound at them, so the bound is not inflated by "
        "thresholds fitted to the same items. 0 = the same items do both (optimistic with many classes).")


class MonitorParams(Section):
    """Segment monitoring (labelloop/domain/segments.py): per segment, labels, holdout accuracy, audit accuracy and
    window share, each cycle (reports/segments.jsonl, `labelloop status`); a drifted or under-performing segment of
    `select.group_column` gets `segment_boost` times its share of the hybrid selector's quota."""

    segments: list[str] = Field(
        default_factory=list, description="Columns whose values are segments (e.g. [country, plan]); empty = "
        "select.group_column when it is set.")
    segment_boost: float = Field(
        2.0, ge=1, le=10, description="Hybrid quota weight of a drifted or under-performing group_column segment (1 = off).")
    underperform_margin: float = Field(
        0.05, ge=0, le=1, description="A segment whose accuracy (audit, else holdout) is this far below the overall "
        "under-performs.")
    drift_ratio: float = Field(
        1.5, gt=1, description="A segment whose share of the last capture window is at least this times its share of "
        "the drift reference data has drifted.")
    min_rows: int = Field(30, ge=1, description="Rows a segment needs (holdout or audit) before its accuracy is judged.")


DEFAULT_MODEL_NAME = "labelloop-classifier"


class TextParams(Section):
    """How the pipeline turns each text column into features."""

    vectorizer: Literal["tfidf", "hashing"] = Field(
        "tfidf", description="tfidf: learned vocabulary (word and character n-grams); hashing: fixed-size, no vocabulary "
        "(for very large or open vocabularies).",
    )
    word_ngrams: tuple[int, int] = Field((1, 2), description="Word n-gram range.")
    char_ngrams: tuple[int, int] | None = Field(
        None, description="Character n-gram range within word boundaries, e.g. [2, 5] (robust to typos and rare word "
        "forms); null = words only. Off by default: on fine_foods [2, 5] made each pool transform 8× slower (7.7 s vs "
        "0.9 s) and the full-pool accuracy lower (0.79 vs 0.81, docs/benchmarks.md).",
    )
    max_features: int = Field(20_000, gt=0, description="Features per analyzer (word, char) and text column.")
    min_df: int = Field(2, ge=1, description="tfidf: ignore n-grams in fewer documents than this.")
    selection_components: int = Field(
        64, ge=2, le=1024,
        description="Selection's feature space for text (density, cluster, coreset, hybrid): TruncatedSVD of the "
        "pipeline's features to this many dimensions.",
    )

    @field_validator("word_ngrams", "char_ngrams")
    @classmethod
    def _ngram_range(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 1 <= value[0] <= value[1] <= 10:
            raise ValueError(f"an n-gram range is [low, high] with 1 <= low <= high <= 10, got {list(value)}")
        return value


class SchemaParams(Section):
    """Column roles forced over what `labelloop init` infers (the same as its --id-col, --text-col, ... options)."""

    id_columns: list[str] = Field(default_factory=list, description="Row identifiers: kept with the rows, never features.")
    numeric_columns: list[str] = Field(
        default_factory=list, description="Read as numbers (an id column named here is a feature).")
    categorical_columns: list[str] = Field(default_factory=list, description="Read as categories (values as strings).")
    text_columns: list[str] = Field(default_factory=list, description="Free text, vectorised by the pipeline.")
    drop_columns: list[str] = Field(default_factory=list, description="Not stored, not used.")


class TrainParams(Section):
    model_name: str = Field(
        DEFAULT_MODEL_NAME, min_length=1,
        description="Registered model name. Left at labelloop-classifier, `labelloop init` writes labelloop-<workspace id> "
        "into the workspace's params.yaml, so workspaces sharing a tracking server never share a model; any other name is kept.",
    )
    n_estimators: int = Field(200, gt=0)
    max_depth: int = Field(6, gt=0)
    learning_rate: float = Field(0.1, gt=0, le=1)
    subsample: float = Field(1.0, gt=0, le=1)
    n_jobs: int | Literal["auto"] = Field(
        "auto", description='XGBoost threads: "auto" = the CPUs this process may use (affinity and cgroup quota, '
        'capped by OMP_NUM_THREADS), or a positive integer.',
    )
    random_state: int = Field(0, ge=0)
    estimator: str = Field(
        "auto",
        description="The classifier at the end of the pipeline: auto (xgboost, or logistic_regression when the schema "
        "has text columns: XGBoost over tens of thousands of sparse n-grams took 150 s per fit on 3,750 reviews against "
        "3 s, at the same accuracy), xgboost, logistic_regression, random_forest, "
        "hist_gradient_boosting, or the dotted path of any importable scikit-learn classifier class with predict_proba "
        "(e.g. sklearn.svm.SVC with estimator_params {probability: true}). n_estimators, max_depth, learning_rate and "
        "subsample are XGBoost's; every estimator takes estimator_params.",
    )
    estimator_params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the estimator class, checked against its parameters.",
    )
    text: TextParams = TextParams()

    @field_validator("n_jobs", mode="before")
    @classmethod
    def _n_jobs(cls, value: object) -> int | str:
        from labelloop.core.threads import check_n_jobs

        return check_n_jobs(value)

    @model_validator(mode="after")
    def _estimator_known(self) -> TrainParams:
        if self.estimator in ("auto", "xgboost") and not self.estimator_params:
            return self  # the defaults: no need to import the model stack to check them
        from labelloop.estimators import check_estimator

        check_estimator(self.estimator, self.estimator_params)
        return self


class StopParams(Section):
    """Stop rules, evaluated after every cycle and reported with it (labelloop/stop_rules.py)."""

    label_budget: int | None = Field(None, gt=0, description="Stop once the labelled set has this many labels (null = off).")
    target_metric: float | None = Field(
        None, description="Stop once the champion's gate.primary_metric reaches this (null = off)."
    )
    plateau_gain_per_100: float | None = Field(
        0.002, ge=0,
        description="Plateau: gain of the primary metric per 100 labels below this over the last plateau_cycles cycles "
        "(null = off).",
    )
    plateau_cycles: int = Field(3, ge=1)
    stable_agreement: float | None = Field(
        0.99, gt=0, le=1,
        description="Stabilising predictions: consecutive models agree on this share of the stop set (null = off).",
    )
    stable_cycles: int = Field(2, ge=1)
    stop_set_size: int = Field(1000, gt=0, description="Unlabelled rows drawn once from the prediction log to compare models on.")
    halt: bool = Field(False, description="true: once a rule fires, cycles stop selecting and exporting (no labels bought) "
                                          "until the rules change; false: report only.")


MAX_SEED_TWINS = 20  # each twin is one more fit per retrain


class GateParams(Section):
    """The promotion rule: challenger and champion compared on the same holdout rows with a paired test
    (accuracy: McNemar's exact test; macro_f1, neg_log_loss: a paired bootstrap; labelloop/domain/gate.py), and on
    the audit items neither trained on as a guard (`audit_guard`)."""

    primary_metric: Literal["accuracy", "macro_f1", "neg_log_loss"] = "accuracy"
    mode: Literal["superiority", "non_inferiority"] = Field(
        "superiority",
        description="superiority: promote when the challenger is better than the champion by more than min_delta, "
        "with min_confidence; non_inferiority (redeploying a retrained model that must simply not be worse): promote "
        "when it is not worse by non_inferiority_margin or more, with min_confidence (min_delta is not used).",
    )
    min_delta: float = Field(0.0, description="superiority: the gain on the primary metric the challenger must be shown to beat.")
    min_confidence: float = Field(
        0.9, ge=0, lt=1,
        description="The one-sided paired test on the holdout rows must pass at level 1 - min_confidence (the "
        "false-promotion rate of a challenger no better than the champion stays at most 1 - min_confidence); "
        "0 turns the test off: the point difference alone decides.",
    )
    non_inferiority_margin: float = Field(
        0.01, ge=0, description="non_inferiority: the largest loss on the primary metric still counted as not worse.",
    )
    min_new_labels: int = Field(0, ge=0, description="Refuse a challenger trained on fewer new labels than this.")
    max_class_recall_drop: float = Field(
        1.0, ge=0, le=1, description="Guardrail: largest per-class recall drop allowed; 1 = off. On the holdout the "
        "recorded recalls are compared; on the audit rows neither model trained on (with audit_guard) a class is "
        "rejected only when its importance-weighted recall drop is significantly larger (one-sided, min_confidence).",
    )
    max_ece_increase: float = Field(1.0, ge=0, description="Guardrail: largest calibration-error increase allowed.")
    audit_guard: bool = Field(
        True, description="Also compare the two models on the audit items neither trained on (importance-weighted "
        "paired test, in the reasons) and reject a challenger significantly worse there (one-sided, min_confidence).",
    )
    audit_min_rows: int = Field(
        30, ge=1, description="audit_guard decides only from this many audit rows; fewer are reported, not used.",
    )
    max_segment_accuracy_drop: float = Field(
        1.0, ge=0, le=1, description="Guardrail (with audit_guard): reject when the importance-weighted accuracy on "
        "the audit rows of one segment (monitor.segments, else select.group_column) drops significantly more than "
        "this (one-sided, min_confidence); 1 = off.",
    )
    audit_min_rows_per_group: int = Field(
        20, ge=1, description="The audit class and segment guards decide on a class or segment only from this many of "
        "its audit rows; fewer are reported, not used.",
    )
    seed_twins: int | Literal["auto"] = Field(
        "auto",
        description="Seed twins: the train stage also fits this many copies of the challenger on the same rows with "
        "other random_states and keeps their holdout predictions; the gate then also needs the seed-aware t test "
        "(the gain against the twins' spread, both models carrying seed noise, t on twins df) so a retrain that is "
        "better only by its seed's luck is not promoted. auto: 2 when the estimator's fit depends on the seed "
        "(xgboost with subsample or colsample_* below 1, random_forest, logistic_regression with sag/saga/liblinear; "
        "others: one twin is fitted and kept only if it predicts differently), 0 for a deterministic one (xgboost at "
        "its defaults: no extra fit); 0 = off; a number = that many (1 is weak: t on 1 df).",
    )
    stop: StopParams = StopParams()

    @field_validator("seed_twins", mode="before")
    @classmethod
    def _seed_twins(cls, value: object) -> int | str:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED_TWINS):
            return value
        raise ValueError(f"seed_twins must be auto or a whole number from 0 to {MAX_SEED_TWINS}, got {value!r}")


SECTION_MODELS: dict[str, type[Section]] = {
    "production": ProductionParams,
    "capture": CaptureParams,
    "select": SelectParams,
    "export": ExportParams,
    "import": ImportParams,
    "dataset": DatasetParams,
    "train": TrainParams,
    "gate": GateParams,
    "schema": SchemaParams,
    "autolabel": AutolabelParams,
    "monitor": MonitorParams,
}


class Params(BaseModel):
    """The whole `params.yaml`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    production: ProductionParams = ProductionParams()
    capture: CaptureParams = CaptureParams()
    select: SelectParams = SelectParams()
    export: ExportParams = ExportParams()
    import_: ImportParams = Field(ImportParams(), alias="import")
    dataset: DatasetParams = DatasetParams()
    train: TrainParams = TrainParams()
    gate: GateParams = GateParams()
    schema_: SchemaParams = Field(SchemaParams(), alias="schema")
    autolabel: AutolabelParams = AutolabelParams()
    monitor: MonitorParams = MonitorParams()

    @model_validator(mode="after")
    def _batch_fits_guard(self) -> Params:
        if self.select.batch_size > self.export.max_batch_size:
            raise ValueError(
                f"select.batch_size={self.select.batch_size} exceeds export.max_batch_size="
                f"{self.export.max_batch_size}; lower the batch or raise the guard"
            )
        if self.select.batch_size + self.select.audit_items > self.export.max_batch_size:
            raise ValueError(
                f"select.batch_size={self.select.batch_size} plus its {self.select.audit_items} audit items "
                f"(select.audit_fraction={self.select.audit_fraction}) exceeds export.max_batch_size="
                f"{self.export.max_batch_size}; lower the batch or the audit fraction, or raise the guard"
            )
        return self

    def section(self, name: str) -> Section:
        if name not in SECTION_MODELS:
            raise ConfigError(f"unknown section {name!r}; allowed: {', '.join(SECTION_MODELS)}")
        return getattr(self, f"{name}_" if name in ("import", "schema") else name)

    def with_overrides(self, **sections: Section | dict[str, Any] | None) -> Params:
        """A copy where each given section (model or dict of keys) replaces or updates the file's."""
        data = self.to_dict()
        for name, value in sections.items():
            if value is None:
                continue
            key = name.rstrip("_") if name in ("import_", "schema_") else name
            if key not in SECTION_MODELS:
                raise ConfigError(f"unknown section {key!r}; allowed: {', '.join(SECTION_MODELS)}")
            if isinstance(value, BaseModel):
                data[key] = value.model_dump(mode="json")
                if key == "train" and data[key]["model_name"] == DEFAULT_MODEL_NAME:
                    # A whole train section (a Prefect UI form, TrainParams(...)) carries the default name:
                    # it means this workspace's model, never the literal default (init renamed it).
                    data[key]["model_name"] = self.train.model_name
            else:
                data[key] = _deep_update(data[key], value)
        return parse_params(data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            parent = item["loc"][:-1]
            allowed = _allowed_keys(parent)
            message = f"unknown key; allowed: {', '.join(allowed)}"
        elif item["type"] == "literal_error":
            message = f"{message} (got {item.get('input')!r})"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def _allowed_keys(path: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Params
    for part in path:
        field = model.model_fields.get(str(part)) or model.model_fields.get(f"{part}_")
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return [f.alias or name for name, f in model.model_fields.items()]


def parse_params(data: dict[str, Any] | None, source: str = "params") -> Params:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_params(path: str | Path | None = None) -> Params:
    """Read `params.yaml`; a missing file means the embedded defaults."""
    if path is None:
        return Params()
    path = Path(path)
    if not path.exists():
        return Params()
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return parse_params(data, source=str(path))


def dump_params(params: Params) -> str:
    return yaml.safe_dump(params.to_dict(), sort_keys=False)
