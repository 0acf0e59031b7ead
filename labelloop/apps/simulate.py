"""Pool-based active-learning simulator: `labelloop simulate` runs the loop on any labelled table.

The table's columns get roles as at `labelloop init` (`labelloop.schema.infer_schema`, with the same
overrides): numeric, categorical and text columns are all features, id columns are not, and every column
not used is reported with the reason — the roles and warnings are printed and kept in summary.json.

Protocol (per repeat r): a stratified holdout (`test_size`) is set aside; the rest is the pool. The same
random seed set (`seed_size` rows) starts every strategy of the repeat. Each round trains the model of
`train` (the schema's pipeline with params.yaml's estimator, any of them) on the labelled rows, measures
the holdout, scores the unlabelled pool and adds `batch_size` rows; diversity selectors and density work
in that model's feature space (text reduced by TruncatedSVD). A full-pool model (trained on the whole
pool) gives the reference value of the target metric; the target is 99% of it.

Outputs in `out`: curves.csv, summary.json, learning_curves.png, stops.csv; an MLflow parent run with
one child per strategy (tracking URI: `tracking_uri`, default sqlite inside `out`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labelloop.apps.simulate_audit import AuditRun
from labelloop.apps.simulate_audit import coverage as audit_coverage
from labelloop.domain.cycle import CycleRecord
from labelloop.domain.stop_rules import StopRules, evaluate_stop_rules
from labelloop.workspace import sqlite_uri

if TYPE_CHECKING:
    from labelloop.schema import Schema, SchemaOverrides

METRICS = ("accuracy", "macro_f1", "balanced_accuracy")
AUTO = "auto"  # the bandit over `select.bandit.arms` (labelloop/domain/acquisition/bandit.py)
TARGET_FRACTION = 0.99


@dataclass
class SimulationConfig:
    """Mirrors `labelloop simulate` flags."""

    data: str
    label_col: str = "label"
    strategies: list[str] = field(default_factory=lambda: ["random", "margin", "hybrid"])
    seed_size: int = 50
    batch_size: int = 100
    rounds: int = 10
    repeats: int = 3
    test_size: float = 0.2
    metric: str = "accuracy"
    out: str = "simulation"
    selector: str | None = None  # None: topk, or the preset's own selector (hybrid)
    seed: int = 0
    train_params: Any = None  # labelloop.config.TrainParams; None = defaults of `train`
    hybrid: Any = None  # labelloop.config.HybridParams (`select.hybrid`); None = its defaults
    committee_size: int = 5
    calibration: str | None = None  # None, "temperature" or "isotonic" (fitted on 20% of the labelled rows)
    tracking_uri: str | None = None  # default: sqlite:///<out>/mlflow.db
    experiment: str = "labelloop-simulate"
    log_mlflow: bool = True
    progress: bool = True
    stop_set_size: int = 1000
    stop_rules: StopRules = field(default_factory=StopRules)
    strategy_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per strategy name
    selector_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per strategy name
    # Roles forced over the inferred ones (as `labelloop init --id-col/--numeric-col/...`, or params.yaml's `schema`).
    id_columns: list[str] = field(default_factory=list)
    numeric_columns: list[str] = field(default_factory=list)
    categorical_columns: list[str] = field(default_factory=list)
    text_columns: list[str] = field(default_factory=list)
    drop_columns: list[str] = field(default_factory=list)
    # labelloop.config.AutolabelParams (params.yaml's `autolabel`); None or disabled = no auto-labels. When on,
    # `holdback_share` of each batch is spent on check items and the curves' n_labels count human labels only.
    autolabel: Any = None
    # `auto` (a strategy name here as in `select.strategy`): labelloop.config.BanditParams (`select.bandit`), None =
    # its defaults; its reward is measured on `audit_size` pool rows drawn uniformly per repeat (labels known).
    bandit: Any = None
    audit_size: int = 500
    # The audit sample (labelloop/apps/simulate_audit.py): round(audit_fraction × batch_size) items per round drawn
    # uniformly from the round's unlabelled pool (capture keeps audit_sample_rows of it), estimated against the truth.
    audit_fraction: float = 0.0
    audit_sample_rows: int = 1000
    # Write out/batches.csv: every round's selected rows as the selection scored them (confidence = top probability,
    # predicted class, whether it is the true label), before check items or auto-labels (benchmarks/autolabel_bound.py).
    record_batches: bool = False

    def overrides(self) -> SchemaOverrides:
        from labelloop.schema import SchemaOverrides

        return SchemaOverrides(tuple(self.id_columns), tuple(self.numeric_columns), tuple(self.categorical_columns),
                               tuple(self.text_columns), tuple(self.drop_columns))

    def validate(self) -> None:
        from labelloop.domain.acquisition import get_selector, get_strategy, resolve_selector

        if self.metric not in METRICS:
            raise ValueError(f"--metric must be one of {', '.join(METRICS)}; got {self.metric!r}")
        if not self.strategies:
            raise ValueError("--strategies needs at least one strategy name")
        if self.selector is not None:
            get_selector(self.selector)  # raises with the allowed names
        for name in (n for s in self.strategies for n in self._arms_of(s)):
            # Unknown names and misspelt parameters fail here, before any model is trained.
            get_strategy(name).check(f"strategy {name!r}", self.strategy_params.get(name, {}))
            selector = resolve_selector(name, self.selector)
            get_selector(selector).check(f"selector {selector!r} (for strategy {name!r})", self.selector_params.get(name, {}))
        for key in ("seed_size", "batch_size", "repeats"):
            if getattr(self, key) <= 0:
                raise ValueError(f"--{key.replace('_', '-')} must be positive, got {getattr(self, key)}")
        if self.rounds < 0:
            raise ValueError(f"--rounds must be ≥ 0, got {self.rounds}")
        if not (0 < self.test_size < 1):
            raise ValueError(f"--test-size must be within (0, 1), got {self.test_size}")
        if AUTO in self.strategies and self.audit_size <= 0:
            raise ValueError(f"--audit-size must be positive with the auto strategy, got {self.audit_size}")
        if not 0 <= self.audit_fraction <= 1:
            raise ValueError(f"--audit-fraction must be within [0, 1], got {self.audit_fraction}")
        if self.audit_sample_rows <= 0:
            raise ValueError(f"--audit-sample-rows must be positive, got {self.audit_sample_rows}")

    def _arms_of(self, name: str) -> list[str]:
        """The registered strategies `name` runs: itself, or for auto the bandit's arms (`select.bandit.arms`)."""
        if name != AUTO:
            return [name]
        from labelloop.config import BanditParams

        if self.bandit is None:
            self.bandit = BanditParams()
        return list(self.bandit.arms)


@dataclass
class Table:
    """A labelled table read for simulation: its schema, the feature values and the labels."""

    schema: Schema
    features: pd.DataFrame | np.ndarray  # float matrix for an all-numeric schema, else the feature columns (canonical)
    labels: np.ndarray  # class names
    warnings: list[str]  # what the user should know: ids, leakage, ignored columns, rows left out

    def rows(self, index: np.ndarray) -> pd.DataFrame | np.ndarray:
        """Rows `index` as the model reads them."""
        if isinstance(self.features, pd.DataFrame):
            return self.features.iloc[index]
        return self.features[index]


def read_frame(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"data file {path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if path.suffix.lower() in (".csv", ".txt"):
        return pd.read_csv(path)
    raise ValueError(f"{path}: expected a .parquet or .csv file")


def load_table(path: str | Path, label_col: str, overrides: SchemaOverrides | None = None) -> Table:
    """A labelled parquet/CSV file with its columns' roles inferred as `labelloop init` does (`overrides` win).

    Rows without a label cannot be simulated: they are left out, and a warning says how many.
    """
    from labelloop.schema import conform, infer_schema

    frame = read_frame(path)
    if label_col not in frame.columns:
        raise ValueError(f"{path}: no label column {label_col!r}; columns: {list(map(str, frame.columns))[:20]}")
    warnings = []
    unlabelled = frame[label_col].isna()
    if unlabelled.any():
        warnings.append(f"{int(unlabelled.sum())} of {len(frame)} rows have no label in {label_col!r}: left out of the "
                        "simulation")
        frame = frame.loc[~unlabelled].reset_index(drop=True)
    inferred = infer_schema(frame, label_col, overrides)
    schema = inferred.schema
    warnings.extend(inferred.warnings)
    labels = frame[label_col].map(_label_text).to_numpy().astype(str)
    if schema.all_numeric:
        features: pd.DataFrame | np.ndarray = conform(frame, schema).to_numpy(dtype=np.float64)
    else:
        features = conform(frame, schema).reset_index(drop=True)
    return Table(schema, features, labels, warnings)


def _label_text(value: object) -> str:
    from labelloop.schema import as_text

    return str(as_text(value))


def describe_table(table: Table) -> list[str]:
    """The inferred roles as a table, then the warnings: what `simulate` prints before it runs."""
    from labelloop.schema import schema_rows

    rows = schema_rows(table.schema)
    heads = ["column", "role", "type", "nullable", "detail"]
    widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in heads}
    lines = ["  ".join(h.ljust(widths[h]) for h in heads)]
    lines += ["  ".join(str(r[h]).ljust(widths[h]) for h in heads) for r in rows]
    lines += [f"warning: {w}" for w in table.warnings]
    return [line.rstrip() for line in lines]


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, minority: str) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "minority_recall": float(recall_score(y_true, y_pred, labels=[minority], average="macro", zero_division=0)),
    }


# ------------------------------------------------------------------------------------------------
# Summaries (pure: tested on hand-made curves)
# ------------------------------------------------------------------------------------------------


def labels_to_target(n_labels: np.ndarray, values: np.ndarray, target: float) -> int | None:
    """First label count whose value reaches the target (None if never)."""
    n_labels, values = np.asarray(n_labels), np.asarray(values, dtype=np.float64)
    order = np.argsort(n_labels, kind="stable")
    hit = np.flatnonzero(values[order] >= target)
    return int(n_labels[order][hit[0]]) if len(hit) else None


def savings_vs_random(strategy_labels: int | None, random_labels: int | None, budget: int) -> tuple[float | None, bool]:
    """Percent fewer labels than random to reach the target, and whether that is only a lower bound.

    When random never reaches the target, the budget stands in for random's count (a lower bound).
    """
    if strategy_labels is None:
        return None, False
    if random_labels is None:
        return 100.0 * (1.0 - strategy_labels / budget), True
    return 100.0 * (1.0 - strategy_labels / random_labels), False


def area_under_curve(n_labels: np.ndarray, values: np.ndarray) -> float:
    """Mean value over the label range (trapezoidal area / width): comparable across budgets."""
    n_labels, values = np.asarray(n_labels, dtype=np.float64), np.asarray(values, dtype=np.float64)
    order = np.argsort(n_labels)
    n_labels, values = n_labels[order], values[order]
    if len(n_labels) < 2 or n_labels[-1] == n_labels[0]:
        return float(values.mean()) if len(values) else float("nan")
    return float(np.trapezoid(values, n_labels) / (n_labels[-1] - n_labels[0]))


def summarize(
    curves: pd.DataFrame, full_pool_values: list[float], metric: str, select_seconds: dict[str, float] | None = None
) -> dict[str, Any]:
    """Per strategy: labels_to_target on the mean curve, savings vs random, AULC, final values."""
    full = float(np.mean(full_pool_values))
    target = TARGET_FRACTION * full
    budget = int(curves["n_labels"].max())
    mean = curves.groupby(["strategy", "n_labels"], sort=True)[[metric, "minority_recall"]].mean().reset_index()
    out: dict[str, Any] = {
        "metric": metric,
        "full_pool_value": full,
        "full_pool_values": [float(v) for v in full_pool_values],
        "target": target,
        "target_fraction": TARGET_FRACTION,
        "budget": budget,
        "strategies": {},
    }
    ltt: dict[str, int | None] = {}
    for name, group in mean.groupby("strategy", sort=False):
        ltt[name] = labels_to_target(group["n_labels"].to_numpy(), group[metric].to_numpy(), target)
    random_ltt = ltt.get("random")
    for name, group in mean.groupby("strategy", sort=False):
        per_repeat = []
        for _, rep in curves[curves["strategy"] == name].groupby("repeat"):
            per_repeat.append(labels_to_target(rep["n_labels"].to_numpy(), rep[metric].to_numpy(), target))
        entry: dict[str, Any] = {
            "labels_to_target": ltt[name],
            "labels_to_target_per_repeat": per_repeat,
            "aulc": area_under_curve(group["n_labels"].to_numpy(), group[metric].to_numpy()),
            "final_value": float(group.sort_values("n_labels")[metric].iloc[-1]),
            "final_minority_recall": float(group.sort_values("n_labels")["minority_recall"].iloc[-1]),
            "mean_minority_recall": float(group["minority_recall"].mean()),
            "seconds_selecting": float((select_seconds or {}).get(name, 0.0)),
        }
        if "random" in ltt:
            pct, lower = savings_vs_random(ltt[name], random_ltt, budget)
            entry["savings_vs_random_pct"] = pct
            entry["savings_is_lower_bound"] = lower
        out["strategies"][name] = entry
    return out


def arm_report(curves: pd.DataFrame) -> dict[str, Any]:
    """The `auto` strategy's arms from its curve rows: share of batches per arm overall and per round (over the
    repeats), mean reward and accuracy gain per arm (of the batches it drew), and the arm probabilities' mean."""
    if "arm" not in curves.columns:
        return {"shares": {}, "by_round": [], "mean_reward": {}, "mean_gain": {}}
    drawn = curves.dropna(subset=["arm"]).sort_values(["repeat", "round"])
    names = sorted(drawn["arm"].unique())
    # A batch's reward is on the next row of the same repeat (measured once the model it led to was trained).
    paid = drawn.copy()
    nxt = curves.set_index(["repeat", "round"])
    for column in ("bandit_reward", "bandit_gain"):
        source = nxt[column] if column in nxt.columns else pd.Series(dtype=float)
        paid[column] = [source.get((rep, rnd + 1), np.nan) for rep, rnd in zip(drawn["repeat"], drawn["round"], strict=True)]
    by_round = []
    for (round_, n_labels), group in drawn.groupby(["round", "n_labels"], sort=True):
        counts = group["arm"].value_counts()
        by_round.append({"round": int(round_), "n_labels": int(n_labels),
                         "shares": {a: float(counts.get(a, 0) / len(group)) for a in names}})
    counts = drawn["arm"].value_counts()
    return {
        "shares": {a: float(counts.get(a, 0) / len(drawn)) for a in names},
        "by_round": by_round,
        "mean_reward": {a: _mean(paid.loc[paid["arm"] == a, "bandit_reward"]) for a in names},
        "mean_gain": {a: _mean(paid.loc[paid["arm"] == a, "bandit_gain"]) for a in names},
    }


def _mean(values: pd.Series) -> float | None:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def _progress(total: int, enabled: bool, desc: str):
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit="round")
        except ImportError:
            pass
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


class _BanditRun:
    """`auto` in one simulated run: before each selection the bandit draws an arm; once the next model is trained,
    the arm is paid the accuracy gain (new model − the model that selected the batch) on the audit rows — a
    uniform sample of the pool drawn once per repeat, labels known, mimicking the production audit — that neither
    model trained on (uniform draw: every weight 1). Each curve row carries the arm drawn after it and the reward
    of the batch that led to it."""

    def __init__(self, config: SimulationConfig, pool: np.ndarray, labels: np.ndarray, repeat: int,
                 classes: list[str]) -> None:
        from labelloop.config import BanditParams
        from labelloop.domain.acquisition import bandit

        self.params = config.bandit if config.bandit is not None else BanditParams()
        self.state = bandit.initial_state(self.params.arms, self.params.gamma, self.params.eta,
                                          random_start=self.params.random_start, warmup=self.params.warmup,
                                          random_decay=self.params.random_decay)
        rng = np.random.default_rng([config.seed, repeat, 17])
        self.audit = np.sort(rng.choice(pool, min(config.audit_size, len(pool)), replace=False))
        self.truth = labels[self.audit]
        self.seed, self.repeat, self.classes = config.seed, repeat, [str(c) for c in classes]
        self.pending: tuple[str, str, float] | None = None  # (batch id, arm, probability)
        self.before: np.ndarray | None = None

    def measure(self, predicted: np.ndarray, in_labelled: np.ndarray) -> dict[str, Any]:
        """Pay the pending batch's arm, given the new model's class probabilities on the audit rows (columns in the
        order of the schema's class names); `bandit_gain` is the accuracy gain, `bandit_paid_gain` what it is paid on."""
        from labelloop.domain.acquisition import bandit

        out: dict[str, Any] = {}
        if self.pending is not None and self.before is not None:
            fresh = ~in_labelled[self.audit]  # neither model trained on them
            names = np.asarray(self.classes, dtype=object)
            accuracy = bandit.accuracy_gain(self.truth[fresh].astype(str), names[self.before[fresh].argmax(1)].astype(str),
                                            names[predicted[fresh].argmax(1)].astype(str))
            gain = bandit.batch_gain(self.truth[fresh], self.before[fresh], predicted[fresh], self.classes,
                                     measure=self.params.gain_measure)
            reward = bandit.batch_reward(self.state, gain, self.params.reward_scale)
            batch_id, arm, probability = self.pending
            self.state = bandit.update(self.state, batch_id, arm, probability, reward, gain=gain, n_audit=int(fresh.sum()))
            out = {"bandit_gain": accuracy, "bandit_paid_gain": gain, "bandit_reward": reward, "n_audit": int(fresh.sum())}
        self.before, self.pending = predicted, None
        return out

    def choose(self, round_: int) -> tuple[str, dict[str, Any]]:
        """The arm that draws this round's batch, and what the curve row records about it."""
        from labelloop.domain.acquisition import bandit

        arm, probabilities = bandit.choose(self.state, np.random.default_rng([self.seed, self.repeat, round_, 13]))
        self.pending = (f"r{self.repeat}-{round_}", arm, probabilities[arm])
        return arm, {"arm": arm, "arm_probability": probabilities[arm],
                     **{f"p_{name}": q for name, q in probabilities.items()}}


def _run_strategy(
    strategy: str, config: SimulationConfig, table: Table, test: np.ndarray, pool: np.ndarray,
    seed_rows: np.ndarray, stop_rows: np.ndarray, minority: str, repeat: int, bar,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float, list[pd.DataFrame]]:
    from labelloop.domain.acquisition.pool import SelectionContext, select_indices
    from labelloop.domain.acquisition.space import ModelSpace
    from labelloop.model import LabelloopClassifier

    params, schema, y = config.train_params, table.schema, table.labels
    class_names = schema.class_names
    auto = _AutoLabels(config.autolabel, y, config.batch_size) if _autolabel_on(config) else None
    bandit = _BanditRun(config, pool, y, repeat, class_names) if strategy == AUTO else None
    audit = AuditRun(config.audit_fraction, config.batch_size, config.audit_sample_rows, y, class_names,
                     [config.seed, repeat]) if config.audit_fraction > 0 else None
    components = params.text.selection_components
    labelled = list(seed_rows)
    in_labelled = np.zeros(len(y), dtype=bool)
    in_labelled[seed_rows] = True
    rows: list[dict[str, Any]] = []
    stops: list[dict[str, Any]] = []
    history: list[CycleRecord] = []
    stop_set_predictions: list[np.ndarray] = []
    batches: list[pd.DataFrame] = []
    select_seconds = 0.0
    for round_ in range(config.rounds + 1):
        lab = np.asarray(labelled)
        y_lab = y[lab] if auto is None else auto.train_labels[lab]
        model = LabelloopClassifier.from_params(params, schema).fit(table.rows(lab), y_lab)
        scores = evaluate(y[test], model.predict(table.rows(test)), minority)
        n_human = len(lab) - (0 if auto is None else auto.n_auto)
        rows.append({"strategy": strategy, "repeat": repeat, "round": round_, "n_labels": n_human, **scores,
                     **({} if auto is None else auto.last)})
        if bandit is not None:
            rows[-1].update(bandit.measure(model.predict_proba(table.rows(bandit.audit)), in_labelled))
        if audit is not None:  # drawn after the model was trained: it never trained on them
            rows[-1].update(audit.measure(model.predict, table.rows, pool[~in_labelled[pool]], round_))
        history.append(CycleRecord(cycle=round_, labels=n_human, primary_metric=scores[config.metric]))
        stop_set_predictions.append(model.predict(table.rows(stop_rows)))
        report = evaluate_stop_rules(history, config.stop_rules, stop_set_predictions)
        stops.append({
            "strategy": strategy, "repeat": repeat, "round": round_, "n_labels": n_human, "stop": report.stop,
            **{f"{k}_triggered": v["triggered"] for k, v in report.rules.items()},
        })
        bar.update(1)
        if round_ == config.rounds:
            break
        candidates = pool[~in_labelled[pool]]
        if audit is not None:  # the strategy never picks the audit items
            candidates = np.setdiff1d(candidates, audit.drawn)
        if len(candidates) == 0:
            break
        scorer, context_extra = model, {}
        if config.calibration is not None and len(lab) >= 10:
            rng_val = np.random.default_rng([config.seed, repeat, round_, 7])
            val = rng_val.permutation(lab)[: max(2, len(lab) // 5)]
            fit_rows = np.setdiff1d(lab, val)
            scorer = LabelloopClassifier.from_params(params, schema).fit(table.rows(fit_rows), y[fit_rows])
            context_extra = {"calibration": config.calibration, "validation_probas": scorer.predict_proba(table.rows(val)),
                             "validation_labels": y[val]}
        candidate_rows = table.rows(candidates)
        probas = scorer.predict_proba(candidate_rows)
        arm = strategy
        if bandit is not None:
            arm, chosen_arm = bandit.choose(round_)
            rows[-1].update(chosen_arm)
        context = SelectionContext(
            labelled_rows=table.rows(lab), labelled_labels=y_lab, class_names=class_names, train_params=params,
            schema=schema, feature_map=None if schema.all_numeric else ModelSpace.of_model(model, components),
            committee_size=config.committee_size, committee_seed=config.seed + 1000 * repeat + round_, hybrid=config.hybrid,
            strategy_params=config.strategy_params.get(arm, {}),
            selector_params=config.selector_params.get(arm, {}),
            **context_extra,
        )
        started = time.perf_counter()
        chosen, _, _ = select_indices(
            probas, config.batch_size, strategy=arm, selector=config.selector,
            seed=int(np.random.default_rng([config.seed, repeat, round_]).integers(2**31 - 1)),
            rows=candidate_rows, features=candidate_rows if schema.all_numeric else None, context=context,
            class_names=class_names,
        )
        select_seconds += time.perf_counter() - started
        picked = candidates[chosen]
        if config.record_batches:
            batches.append(batch_record(probas[chosen], class_names, y[picked], picked).assign(
                strategy=strategy, repeat=repeat, round=round_))
        if auto is not None:
            holdout = (model.predict_proba(table.rows(test)), y[test]) if config.autolabel.check_holdout else None
            picked = auto.step(candidates, probas, picked, class_names, [config.seed, repeat, round_, 11], holdout)
        if audit is not None:  # audit items join training once they have evaluated a model
            picked = np.concatenate([picked, audit.drawn])
        in_labelled[picked] = True
        labelled.extend(picked.tolist())
    return rows, stops, select_seconds, batches


def batch_record(probas: np.ndarray, class_names: list[str], truth: np.ndarray, rows: np.ndarray) -> pd.DataFrame:
    """One selected batch as its model saw it: row index, top probability, predicted class, and whether that is
    the true label."""
    predicted = np.asarray(class_names, dtype=object)[np.argmax(probas, axis=1)].astype(str)
    return pd.DataFrame({"row": rows, "confidence": probas.max(axis=1), "predicted": predicted,
                         "correct": predicted == np.asarray(truth).astype(str)})


def _autolabel_on(config: SimulationConfig) -> bool:
    return config.autolabel is not None and bool(config.autolabel.enabled)


class _AutoLabels:
    """The auto-label loop of one simulated strategy run: held-back check items (labelled with the hidden truth, as
    a perfect annotator would), thresholds from labelloop.domain.autolabel, auto-labels with the model's guess, and
    their true precision per round (the yardstick the production loop cannot see)."""

    def __init__(self, params, y: np.ndarray, batch_size: int) -> None:
        from labelloop.domain.autolabel import holdback_size

        self.params, self.y = params, y
        self.train_labels = np.asarray(y, dtype=object).copy()
        self.holdback = min(holdback_size(batch_size, params.holdback_share), batch_size - 1)
        self.checks: dict[str, list] = {"predicted": [], "confidence": [], "correct": [], "weight": [], "round": []}
        self.in_force: dict[str, float] = {}
        self.holdout_spent: np.ndarray | None = None  # holdout rows the thresholds of an earlier round reached
        self.n_auto = 0
        self.round = 0
        self.last: dict[str, Any] = {"auto_added": 0, "auto_total": 0, "auto_true_precision": float("nan"),
                                     "auto_bound": float("nan"), "auto_paused": True, "auto_classes": 0}

    def step(self, candidates: np.ndarray, probas: np.ndarray, picked: np.ndarray, class_names: list[str],
             seed: list[int], holdout: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Rows that join the labelled set this round: the human picks, the check items and the auto-labels.
        `holdout`: the current model's probabilities on the holdout and its labels (`check_holdout`)."""
        from labelloop.domain.autolabel import choose_thresholds, draw_holdback, pick_auto_rows, spent_checks

        p = self.params
        names = np.asarray(class_names, dtype=object)
        predicted = names[np.argmax(probas, axis=1)].astype(str)
        confidence = probas.max(axis=1)
        free = ~np.isin(candidates, picked)
        # Thresholds from the check items answered before this round (this round's are not labelled yet).
        c = {k: list(v) for k, v in self.checks.items()}
        if holdout is not None:  # a uniform sample of the population, as the held-back items are of their region
            h_proba, h_truth = holdout
            h_pred = names[np.argmax(h_proba, axis=1)].astype(str)
            if self.holdout_spent is None:
                self.holdout_spent = np.zeros(len(h_pred), dtype=bool)
            for key, values in (("predicted", h_pred), ("confidence", h_proba.max(axis=1)),
                                ("correct", np.asarray(h_truth).astype(str) == h_pred),
                                ("weight", (~self.holdout_spent).astype(float)),
                                ("round", np.full(len(h_pred), self.round - 1))):
                c[key].extend(values.tolist())
        recent = np.asarray(c["round"]) == self.round - 1
        decision = choose_thresholds(
            class_names, c["predicted"], c["confidence"], c["correct"], c["weight"], min_precision=p.min_precision,
            confidence_level=p.confidence, min_confidence=p.min_confidence, min_checked_per_class=p.min_checked_per_class,
            min_checked=p.min_checked, in_force=self.in_force, recent=recent if recent.any() else None,
            target_predicted=predicted[free], target_confidence=confidence[free], choose_share=p.choose_share)
        held, weights = draw_holdback(confidence, self.holdback, p.min_confidence, seed, eligible=free)
        free[held] = False
        # The check items take the place of the strategy's last picks (those go back to the pool): every round
        # buys batch_size human labels, however many confident rows there were to check.
        if len(held):
            free[np.isin(candidates, picked[len(picked) - len(held):])] = True
            picked = picked[:len(picked) - len(held)]
        auto_index = pick_auto_rows(predicted, confidence, decision.thresholds, p.max_rows, eligible=free)
        auto_rows = candidates[auto_index]
        self.train_labels[auto_rows] = predicted[auto_index]
        truth = np.asarray(self.y[candidates[held]], dtype=object).astype(str)
        for key, values in (("predicted", predicted[held]), ("confidence", confidence[held]),
                            ("correct", truth == predicted[held]), ("weight", weights),
                            ("round", np.full(len(held), self.round))):
            self.checks[key].extend(values.tolist())
        self.in_force = decision.thresholds
        if holdout is not None and self.holdout_spent is not None and len(auto_rows):
            # The holdout loses what the pool lost (see spent_checks).
            scores = holdout[0]
            self.holdout_spent = spent_checks(self.holdout_spent, names[np.argmax(scores, axis=1)].astype(str),
                                              scores.max(axis=1), decision.thresholds)
        self.n_auto += len(auto_rows)
        true_precision = (float(np.mean(np.asarray(self.y[auto_rows]).astype(str) == predicted[auto_index]))
                          if len(auto_rows) else float("nan"))
        self.last = {"auto_added": len(auto_rows), "auto_total": self.n_auto, "auto_true_precision": true_precision,
                     "auto_bound": float("nan") if decision.lower_bound is None else decision.lower_bound,
                     "auto_paused": decision.paused, "auto_classes": len(decision.thresholds)}
        self.round += 1
        return np.concatenate([picked, candidates[held], auto_rows])


def run_simulation(config: SimulationConfig, echo: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run the simulation and write its outputs; returns the summary (also in out/summary.json).

    `echo` receives the inferred roles and the warnings before the run (None: silent; they are in the
    summary either way).
    """
    from sklearn.model_selection import train_test_split

    from labelloop.config import TrainParams
    from labelloop.core.io import write_json, write_text
    from labelloop.model import LabelloopClassifier, resolve_estimator

    config.validate()
    if config.train_params is None:
        config.train_params = TrainParams()
    out = Path(config.out)
    table = load_table(config.data, config.label_col, config.overrides())
    schema, y = table.schema, table.labels
    if echo is not None:
        for line in describe_table(table):
            echo(line)
    out.mkdir(parents=True, exist_ok=True)
    class_names = schema.class_names
    counts = pd.Series(y).value_counts()
    minority = str(counts.sort_values(kind="stable").index[0])
    started = time.perf_counter()
    all_rows: list[dict[str, Any]] = []
    all_stops: list[dict[str, Any]] = []
    all_batches: list[pd.DataFrame] = []
    full_values: list[float] = []
    select_seconds: dict[str, float] = dict.fromkeys(config.strategies, 0.0)
    bar = _progress(config.repeats * len(config.strategies) * (config.rounds + 1), config.progress, "simulate")
    for repeat in range(config.repeats):
        idx = np.arange(len(y))
        pool, test = train_test_split(idx, test_size=config.test_size, stratify=y, random_state=config.seed + repeat)
        pool = np.sort(pool)
        rng = np.random.default_rng([config.seed, repeat])
        if config.seed_size >= len(pool):
            raise ValueError(f"--seed-size {config.seed_size} must be smaller than the pool ({len(pool)} rows)")
        seed_rows = rng.choice(pool, config.seed_size, replace=False)
        stop_rows = rng.choice(pool, min(config.stop_set_size, len(pool)), replace=False)
        full = LabelloopClassifier.from_params(config.train_params, schema).fit(table.rows(pool), y[pool])
        full_values.append(evaluate(y[test], full.predict(table.rows(test)), minority)[config.metric])
        for strategy in config.strategies:
            bar.set_postfix_str(f"repeat {repeat} {strategy}")
            rows, stops, seconds, batches = _run_strategy(
                strategy, config, table, test, pool, seed_rows, stop_rows, minority, repeat, bar
            )
            all_rows.extend(rows)
            all_stops.extend(stops)
            all_batches.extend(batches)
            select_seconds[strategy] += seconds / config.repeats
            # Curves so far, rewritten after every strategy: a long run that is stopped still leaves its data.
            partial = pd.DataFrame(all_rows).assign(full_pool_value=_full_for(all_rows, full_values))
            write_text(out / "curves.partial.csv", partial.to_csv(index=False))
    bar.close()
    curves = pd.DataFrame(all_rows)
    summary = summarize(curves, full_values, config.metric, select_seconds)
    if AUTO in summary["strategies"]:
        summary["strategies"][AUTO]["arms"] = arm_report(curves[curves["strategy"] == AUTO])
    if config.audit_fraction > 0:
        summary["audit"] = audit_coverage(curves)
    summary.update({
        "data": str(config.data),
        "label_col": config.label_col,
        "minority_class": minority,
        "n_rows": len(y),
        "n_features": len(schema.feature_columns),
        "feature_columns": schema.feature_columns,
        "roles": {c.name: c.role for c in schema.columns},
        "schema_warnings": table.warnings,
        "estimator": resolve_estimator(config.train_params.estimator, schema),
        "classes": class_names,
        "seconds_total": time.perf_counter() - started,
        "config": _config_dict(config),
    })
    write_text(out / "curves.csv", curves.to_csv(index=False))
    write_text(out / "stops.csv", pd.DataFrame(all_stops).to_csv(index=False))
    if config.record_batches:
        batches_frame = pd.concat(all_batches, ignore_index=True) if all_batches else pd.DataFrame()
        write_text(out / "batches.csv", batches_frame.to_csv(index=False))
    write_json(out / "summary.json", summary)
    plot_curves(curves, summary, out / "learning_curves.png")
    if config.log_mlflow:
        log_to_mlflow(config, curves, summary, out)
    return summary


def _full_for(rows: list[dict[str, Any]], full_values: list[float]) -> list[float]:
    """The full-pool value of each row's repeat (for the partial curves file)."""
    return [full_values[row["repeat"]] for row in rows]


def _config_dict(config: SimulationConfig) -> dict[str, Any]:
    data = asdict(config)
    tp = config.train_params
    data["train_params"] = tp.model_dump() if hasattr(tp, "model_dump") else tp
    return json.loads(json.dumps(data, default=str))


def plot_curves(curves: pd.DataFrame, summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from labelloop.core.io import write_bytes

    metric = summary["metric"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, group in curves.groupby("strategy", sort=False):
        stats = group.groupby("n_labels")[metric].agg(["mean", "min", "max"])
        ax.plot(stats.index, stats["mean"], label=name)
        ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2)
    ax.axhline(summary["target"], color="black", linestyle="--", linewidth=1, label=f"{TARGET_FRACTION:.0%} of full pool")
    ax.set_xlabel("labels")
    ax.set_ylabel(metric)
    ax.set_title(f"{Path(summary.get('data', '')).stem}: mean and min–max band over repeats")
    ax.legend()
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def log_to_mlflow(config: SimulationConfig, curves: pd.DataFrame, summary: dict[str, Any], out: Path) -> None:
    import mlflow

    uri = config.tracking_uri or sqlite_uri(out.resolve() / "mlflow.db")
    client_uri = mlflow.get_tracking_uri() if mlflow.active_run() else None
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(config.experiment)
        with mlflow.start_run(run_name=f"simulate-{Path(config.data).stem}"):
            mlflow.log_params({
                "data": str(config.data), "strategies": ",".join(config.strategies), "seed_size": config.seed_size,
                "batch_size": config.batch_size, "rounds": config.rounds, "repeats": config.repeats,
                "test_size": config.test_size, "metric": config.metric, "selector": config.selector,
            })
            mlflow.log_metric("full_pool_value", summary["full_pool_value"])
            mlflow.log_artifact(str(out / "summary.json"))
            mlflow.log_artifact(str(out / "curves.csv"))
            mlflow.log_artifact(str(out / "learning_curves.png"))
            mean = curves.groupby(["strategy", "n_labels"])[[*METRICS, "minority_recall"]].mean().reset_index()
            for name, entry in summary["strategies"].items():
                with mlflow.start_run(run_name=name, nested=True):
                    mlflow.log_param("strategy", name)
                    for _, row in mean[mean["strategy"] == name].iterrows():
                        step = int(row["n_labels"])
                        mlflow.log_metrics({k: float(row[k]) for k in (*METRICS, "minority_recall")}, step=step)
                    mlflow.log_metrics({
                        k: float(v) for k, v in entry.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None
                    })
    finally:
        if client_uri is not None:
            mlflow.set_tracking_uri(client_uri)
