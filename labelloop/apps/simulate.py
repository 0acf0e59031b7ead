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

from labelloop.domain.cycle import CycleRecord
from labelloop.domain.stop_rules import StopRules, evaluate_stop_rules
from labelloop.workspace import sqlite_uri

if TYPE_CHECKING:
    from labelloop.schema import Schema, SchemaOverrides

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
    # Roles forced over the inferred ones (as `labelloop init --id-col/--numeric-col/...`, or params.yaml's `schema`).
    id_columns: list[str] = field(default_factory=list)
    numeric_columns: list[str] = field(default_factory=list)
    categorical_columns: list[str] = field(default_factory=list)
    text_columns: list[str] = field(default_factory=list)
    drop_columns: list[str] = field(default_factory=list)

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
    strategy: str, config: SimulationConfig, table: Table, test: np.ndarray, pool: np.ndarray,
    seed_rows: np.ndarray, stop_rows: np.ndarray, minority: str, repeat: int, bar,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    from labelloop.domain.acquisition.pool import SelectionContext, select_indices
    from labelloop.domain.acquisition.space import ModelSpace
    from labelloop.model import LabelloopClassifier

    params, schema, y = config.train_params, table.schema, table.labels
    class_names = schema.class_names
    components = params.text.selection_components
    labelled = list(seed_rows)
    in_labelled = np.zeros(len(y), dtype=bool)
    in_labelled[seed_rows] = True
    rows: list[dict[str, Any]] = []
    stops: list[dict[str, Any]] = []
    history: list[CycleRecord] = []
    stop_set_predictions: list[np.ndarray] = []
    select_seconds = 0.0
    for round_ in range(config.rounds + 1):
        lab = np.asarray(labelled)
        model = LabelloopClassifier.from_params(params, schema).fit(table.rows(lab), y[lab])
        scores = evaluate(y[test], model.predict(table.rows(test)), minority)
        rows.append({"strategy": strategy, "repeat": repeat, "round": round_, "n_labels": len(lab), **scores})
        history.append(CycleRecord(cycle=round_, labels=len(lab), primary_metric=scores[config.metric]))
        stop_set_predictions.append(model.predict(table.rows(stop_rows)))
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
            scorer = LabelloopClassifier.from_params(params, schema).fit(table.rows(fit_rows), y[fit_rows])
            context_extra = {"calibration": config.calibration, "validation_probas": scorer.predict_proba(table.rows(val)),
                             "validation_labels": y[val]}
        candidate_rows = table.rows(candidates)
        probas = scorer.predict_proba(candidate_rows)
        context = SelectionContext(
            labelled_rows=table.rows(lab), labelled_labels=y[lab], class_names=class_names, train_params=params,
            schema=schema, feature_map=None if schema.all_numeric else ModelSpace.of_model(model, components),
            committee_size=config.committee_size, committee_seed=config.seed + 1000 * repeat + round_, hybrid=config.hybrid,
            strategy_params=config.strategy_params.get(strategy, {}),
            selector_params=config.selector_params.get(strategy, {}),
            **context_extra,
        )
        started = time.perf_counter()
        chosen, _, _ = select_indices(
            probas, config.batch_size, strategy=strategy, selector=config.selector,
            seed=int(np.random.default_rng([config.seed, repeat, round_]).integers(2**31 - 1)),
            rows=candidate_rows, features=candidate_rows if schema.all_numeric else None, context=context,
            class_names=class_names,
        )
        select_seconds += time.perf_counter() - started
        picked = candidates[chosen]
        in_labelled[picked] = True
        labelled.extend(picked.tolist())
    return rows, stops, select_seconds


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
            rows, stops, seconds = _run_strategy(
                strategy, config, table, test, pool, seed_rows, stop_rows, minority, repeat, bar
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
