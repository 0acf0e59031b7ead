"""Pool-based active-learning simulator: `labelloop simulate` runs the loop on any labelled table.

Protocol (per repeat r): a stratified holdout (`test_size`) is set aside; the rest is the pool. The same
random seed set (`seed_size` rows) starts every strategy of the repeat. Each round trains the model of
`train` (LabelloopClassifier with params.yaml's XGBoost settings) on the labelled rows, measures the
holdout, scores the unlabelled pool and adds `batch_size` rows. A full-pool model (trained on the whole
pool) gives the reference value of the target metric; the target is 99% of it.

Outputs in `out`: curves.csv, summary.json, learning_curves.png, stops.csv; an MLflow parent run with
one child per strategy (tracking URI: `tracking_uri`, default sqlite inside `out`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelloop.domain.cycle import CycleRecord
from labelloop.domain.stop_rules import StopRules, evaluate_stop_rules
from labelloop.workspace import sqlite_uri

METRICS = ("accuracy", "macro_f1", "balanced_accuracy")
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

    def validate(self) -> None:
        from labelloop.domain.acquisition import get_selector, get_strategy, resolve_selector

        if self.metric not in METRICS:
            raise ValueError(f"--metric must be one of {', '.join(METRICS)}; got {self.metric!r}")
        if not self.strategies:
            raise ValueError("--strategies needs at least one strategy name")
        if self.selector is not None:
            get_selector(self.selector)  # raises with the allowed names
        for name in self.strategies:
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


def load_table(path: str | Path, label_col: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Numeric feature matrix, string labels and the feature names of a labelled parquet/CSV file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"data file {path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif path.suffix.lower() in (".csv", ".txt"):
        frame = pd.read_csv(path)
    else:
        raise ValueError(f"{path}: expected a .parquet or .csv file")
    if label_col not in frame.columns:
        raise ValueError(f"{path}: no label column {label_col!r}; columns: {list(frame.columns)[:20]}")
    frame = frame[frame[label_col].notna()]
    features = [c for c in frame.columns
                if c != label_col and pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    if not features:
        raise ValueError(f"{path}: no numeric feature columns besides {label_col!r}")
    return frame[features].to_numpy(dtype=np.float64), frame[label_col].astype(str).to_numpy(), features


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


def _run_strategy(
    strategy: str, config: SimulationConfig, X: np.ndarray, y: np.ndarray, test: np.ndarray, pool: np.ndarray,
    seed_rows: np.ndarray, stop_rows: np.ndarray, class_names: list[str], minority: str, repeat: int, bar,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    from labelloop.domain.acquisition.pool import SelectionContext, select_indices
    from labelloop.model import LabelloopClassifier

    params = config.train_params
    labelled = list(seed_rows)
    in_labelled = np.zeros(len(X), dtype=bool)
    in_labelled[seed_rows] = True
    rows: list[dict[str, Any]] = []
    stops: list[dict[str, Any]] = []
    history: list[CycleRecord] = []
    stop_set_predictions: list[np.ndarray] = []
    select_seconds = 0.0
    for round_ in range(config.rounds + 1):
        lab = np.asarray(labelled)
        model = LabelloopClassifier.from_params(params, class_names).fit(X[lab], y[lab])
        scores = evaluate(y[test], model.predict(X[test]), minority)
        rows.append({"strategy": strategy, "repeat": repeat, "round": round_, "n_labels": len(lab), **scores})
        history.append(CycleRecord(cycle=round_, labels=len(lab), primary_metric=scores[config.metric]))
        stop_set_predictions.append(model.predict(X[stop_rows]))
        report = evaluate_stop_rules(history, config.stop_rules, stop_set_predictions)
        stops.append({
            "strategy": strategy, "repeat": repeat, "round": round_, "n_labels": len(lab), "stop": report.stop,
            **{f"{k}_triggered": v["triggered"] for k, v in report.rules.items()},
        })
        bar.update(1)
        if round_ == config.rounds:
            break
        candidates = pool[~in_labelled[pool]]
        if len(candidates) == 0:
            break
        scorer, context_extra = model, {}
        if config.calibration is not None and len(lab) >= 10:
            rng_val = np.random.default_rng([config.seed, repeat, round_, 7])
            val = rng_val.permutation(lab)[: max(2, len(lab) // 5)]
            fit_rows = np.setdiff1d(lab, val)
            scorer = LabelloopClassifier.from_params(params, class_names).fit(X[fit_rows], y[fit_rows])
            context_extra = {"calibration": config.calibration, "validation_probas": scorer.predict_proba(X[val]),
                             "validation_labels": y[val]}
        probas = scorer.predict_proba(X[candidates])
        context = SelectionContext(
            labelled_features=X[lab], labelled_labels=y[lab], class_names=class_names, train_params=params,
            committee_size=config.committee_size, committee_seed=config.seed + 1000 * repeat + round_, hybrid=config.hybrid,
            strategy_params=config.strategy_params.get(strategy, {}),
            selector_params=config.selector_params.get(strategy, {}),
            **context_extra,
        )
        started = time.perf_counter()
        chosen, _, _ = select_indices(
            probas, config.batch_size, strategy=strategy, selector=config.selector,
            seed=int(np.random.default_rng([config.seed, repeat, round_]).integers(2**31 - 1)),
            features=X[candidates], context=context, class_names=class_names,
        )
        select_seconds += time.perf_counter() - started
        picked = candidates[chosen]
        in_labelled[picked] = True
        labelled.extend(picked.tolist())
    return rows, stops, select_seconds


def run_simulation(config: SimulationConfig) -> dict[str, Any]:
    """Run the simulation and write its outputs; returns the summary (also in out/summary.json)."""
    from sklearn.model_selection import train_test_split

    from labelloop.config import TrainParams
    from labelloop.core.io import write_json, write_text
    from labelloop.model import LabelloopClassifier

    config.validate()
    if config.train_params is None:
        config.train_params = TrainParams()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    X, y, feature_names = load_table(config.data, config.label_col)
    class_names = sorted(set(y))
    if len(class_names) < 2:
        raise ValueError(f"{config.data}: the label column {config.label_col!r} has fewer than 2 classes")
    counts = pd.Series(y).value_counts()
    minority = str(counts.sort_values(kind="stable").index[0])
    started = time.perf_counter()
    all_rows: list[dict[str, Any]] = []
    all_stops: list[dict[str, Any]] = []
    full_values: list[float] = []
    select_seconds: dict[str, float] = dict.fromkeys(config.strategies, 0.0)
    bar = _progress(config.repeats * len(config.strategies) * (config.rounds + 1), config.progress, "simulate")
    for repeat in range(config.repeats):
        idx = np.arange(len(X))
        pool, test = train_test_split(idx, test_size=config.test_size, stratify=y, random_state=config.seed + repeat)
        pool = np.sort(pool)
        rng = np.random.default_rng([config.seed, repeat])
        if config.seed_size >= len(pool):
            raise ValueError(f"--seed-size {config.seed_size} must be smaller than the pool ({len(pool)} rows)")
        seed_rows = rng.choice(pool, config.seed_size, replace=False)
        stop_rows = rng.choice(pool, min(config.stop_set_size, len(pool)), replace=False)
        full = LabelloopClassifier.from_params(config.train_params, class_names).fit(X[pool], y[pool])
        full_values.append(evaluate(y[test], full.predict(X[test]), minority)[config.metric])
        for strategy in config.strategies:
            bar.set_postfix_str(f"repeat {repeat} {strategy}")
            rows, stops, seconds = _run_strategy(
                strategy, config, X, y, test, pool, seed_rows, stop_rows, class_names, minority, repeat, bar
            )
            all_rows.extend(rows)
            all_stops.extend(stops)
            select_seconds[strategy] += seconds / config.repeats
            # Curves so far, rewritten after every strategy: a long run that is stopped still leaves its data.
            partial = pd.DataFrame(all_rows).assign(full_pool_value=_full_for(all_rows, full_values))
            write_text(out / "curves.partial.csv", partial.to_csv(index=False))
    bar.close()
    curves = pd.DataFrame(all_rows)
    summary = summarize(curves, full_values, config.metric, select_seconds)
    summary.update({
        "data": str(config.data),
        "label_col": config.label_col,
        "minority_class": minority,
        "n_rows": len(X),
        "n_features": len(feature_names),
        "classes": class_names,
        "seconds_total": time.perf_counter() - started,
        "config": _config_dict(config),
    })
    write_text(out / "curves.csv", curves.to_csv(index=False))
    write_text(out / "stops.csv", pd.DataFrame(all_stops).to_csv(index=False))
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
