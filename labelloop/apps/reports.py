"""Markdown run reports (published as Prefect artifacts by the flows), the label spend and the learning curve
over the cycle history, and the log of the params each stage ran with."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.core.redact import redact_text, redact_uri
from labelloop.history import load_history
from labelloop.workspace import Workspace


def _table(rows: list[tuple[str, object]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def batch_markdown(meta, items: pd.DataFrame, price_per_label: float) -> str:
    mix = Counter(items["predicted"].astype(str)) if "predicted" in items else Counter()
    rows = [
        ("batch", meta.batch_id), ("items", meta.n_items), ("strategy", meta.strategy), ("selector", meta.selector),
        ("seed", meta.seed), ("champion that scored it", meta.champion_version),
        # Every answer is paid: overlap, gold and re-sent review answers included (labels_ordered counts them).
        ("labels ordered", meta.labels_ordered or meta.n_items),
        ("estimated cost", f"{price_per_label * (meta.labels_ordered or meta.n_items):.2f}"),
        ("predicted-class mix", ", ".join(f"{k}: {v}" for k, v in sorted(mix.items()))),
        ("mean utility", f"{items['utility'].mean():.4f}" if "utility" in items else "-"),
    ]
    rows += bandit_rows(getattr(meta, "bandit", None) or {})
    return f"## Batch {meta.batch_id}\n\n" + _table(rows)


def bandit_rows(choice: dict) -> list[tuple[str, object]]:
    """select.strategy auto: the arm that drew the batch, the arms' probabilities, its reward once measured."""
    if not choice.get("arm"):
        return []
    probabilities = ", ".join(f"{a}: {p:.2f}" for a, p in choice.get("probabilities", {}).items())
    rows: list[tuple[str, object]] = [("bandit arm", f"{choice['arm']} (p = {choice.get('probability', 0):.2f})"),
                                      ("arms' probabilities", probabilities)]
    if "measured_by" in choice:
        reward = choice.get("reward")
        rows.append(("bandit reward", "none: no audit items yet" if reward is None else
                     f"{reward:.3f} (accuracy gain {choice.get('gain', 0):+.4f} on {choice.get('n_audit', 0)} audit items, "
                     f"model {choice['measured_by']})"))
    return rows


def import_markdown(reports: list) -> str:
    if not reports:
        return "## Import\n\nNo exported batch was waiting for labels."
    lines = ["## Import", "", "| batch | items | answers | labelled | quarantined | status | agreement |",
             "|---|---|---|---|---|---|---|"]
    for r in reports:
        agreement = f"{r.agreement:.3f}" if r.agreement is not None else "-"
        lines.append(f"| {r.batch_id} | {r.n_items} | {r.n_answers} | {r.n_labelled} | {r.n_quarantined} | {r.status} "
                     f"| {agreement} |")
    refused = [r for r in reports if getattr(r, "refused", None)]
    if refused:  # the reason is labelloop's own words about the file, never the file's content
        lines += ["", "### Refused unread", *(f"- {r.batch_id}: {r.refused}" for r in refused)]
    repaired = [r for r in reports if getattr(r, "n_reasked", 0)]
    if repaired:
        lines += ["", "### Labels asked again (error scan)",
                  *(f"- {r.batch_id}: {r.n_reasked} re-asked, {r.n_changed} changed (relabels in the next data version)"
                    for r in repaired)]
    scan = next((r.error_scan for r in reports if getattr(r, "error_scan", None)), None)
    if scan:
        lines += ["", "### Label-error scan", scan.get("reason") or (
            f"{scan.get('n_rows', '?')} rows, {scan.get('n_flagged', '?')} flagged, {scan.get('n_queued', '?')} queued "
            f"for another look ({scan.get('folds', '?')} folds, {scan.get('seconds', '?')} s)")]
    effect = next((r.guess_effect for r in reversed(reports) if getattr(r, "guess_effect", None)), None)
    if effect:
        def accuracy(side: dict) -> str:
            return "-" if side.get("accuracy") is None else f"{side['accuracy']:.3f} ({side.get('answers', 0)} answers)"

        shown, hidden = effect["all_batches"]["with_guess"], effect["all_batches"]["without_guess"]
        lines += ["", "### Gold accuracy with and without the model's guess",
                  (f"- guess shown before answering: {accuracy(shown)}; answers following a wrong guess: "
                  f"{shown.get('followed_wrong_guess', '-')}"),
                  f"- guess not shown: {accuracy(hidden)}"]
    return "\n".join(lines)


def gate_markdown(decision, tracking_uri: str, run_links: dict[str, str] | None = None) -> str:
    rows = [
        ("decision", f"**{decision.label}**"), ("challenger version", decision.challenger_version),
        ("champion version", decision.champion_version), ("primary metric", decision.primary_metric),
        ("challenger value", f"{decision.challenger_value:.4f}"),
        ("champion value", "-" if decision.champion_value is None else f"{decision.champion_value:.4f}"),
        ("tracking", redact_uri(tracking_uri)),  # a tracking server's password never reaches the artifact
    ]
    for name, link in (run_links or {}).items():
        rows.append((name, link))
    reasons = "\n".join(f"- {r}" for r in decision.reasons)
    return f"## Gate\n\n{_table(rows)}\n\n### Reasons\n{reasons}"


def cycle_markdown(record, batch=None, imports: list | None = None, version=None, decision=None,
                   links: dict[str, str] | None = None, monitor_line: dict | None = None) -> str:
    """The parent cycle run's summary: what was bought, what came back, the data version, the gate's
    decision and reasons, the stop rules, drift and segments (`monitor_line`, reports/segments.jsonl's line
    of the cycle), and where to look next (`links`: name → URL or path)."""
    acc = "-" if record.champion_accuracy is None else f"{record.champion_accuracy:.4f}"
    f1 = "-" if record.champion_macro_f1 is None else f"{record.champion_macro_f1:.4f}"
    parts = [f"## Cycle {record.cycle}: gate {record.decision}", "",
             _table([("labels", f"{record.labels} (+{record.new_labels})"), ("data version", record.data_tag or "-"),
                     ("champion", f"v{record.champion_version}: accuracy {acc}, macro-F1 {f1}"),
                     ("label spend", f"{record.cost:.2f}" + (f" ({record.cost_per_point:.2f} per accuracy point)"
                                                             if record.cost and record.cost_per_point is not None else ""))])]
    if batch is not None:
        parts += ["", "### Batch", "", _table([
            ("batch", batch.batch_id), ("items", batch.n_items), ("strategy", batch.strategy),
            ("selector", batch.selector_used or batch.selector), ("seed", batch.seed),
            ("scored by champion", batch.champion_version), ("labels ordered", batch.labels_ordered or batch.n_items),
            *([("bandit", record.bandit)] if record.bandit else [])])]
    else:
        parts += ["", "### Batch", "", "No batch selected this cycle (an empty pool, or stop rules halting purchases)."]
    parts += ["", import_markdown(imports or []).replace("## Import", "### Import", 1)]
    if version is not None:
        change = f"created: {version.n_rows} rows (+{version.n_new})" if version.created else f"unchanged ({version.n_rows} rows)"
        parts += ["", "### Data version", "", f"{version.tag} {change}"
                  + (f" from {', '.join(version.batches)}" if version.created and version.batches else "")]
    parts += ["", "### Gate", ""]
    if decision is None:
        parts.append(f"{record.decision}: no model was trained this cycle.")
    else:
        champion = "-" if decision.champion_value is None else f"{decision.champion_value:.4f}"
        parts += [(f"**{decision.label}** challenger v{decision.challenger_version} ({decision.primary_metric} "
                   f"{decision.challenger_value:.4f}) vs champion v{decision.champion_version} ({champion})"), "",
                  *(f"- {reason}" for reason in decision.reasons)]
    parts += ["", "### Stop rules", ""]
    stop = record.stop or {}
    if not stop.get("rules"):
        parts.append("not evaluated yet (the first cycles have no history to judge)")
    else:
        parts.append("**fired**: " + "; ".join(stop.get("reasons", [])) if stop.get("stop") else "none fired")
        parts += ["", "| rule | enabled | value | threshold | fired |", "|---|---|---|---|---|"]
        for name, rule in stop["rules"].items():
            value = rule.get("value")
            shown = f"{value:.4g}" if isinstance(value, float) else value
            parts.append(f"| {name} | {rule.get('enabled')} | {shown if shown is not None else '-'} | "
                         f"{rule.get('threshold') if rule.get('threshold') is not None else '-'} | "
                         f"{rule.get('triggered', False)} |")
    if monitor_line is not None:
        from labelloop.domain.segments import SegmentStats, segments_table

        stats = [SegmentStats.from_dict(s) for s in monitor_line.get("segments", [])]
        parts += ["", "### Drift and segments", "",
                  (monitor_line.get("drift") or "drift: no new capture window this cycle")
                  + (f" (window `{monitor_line['drift_window']}`; the capture artifact has every column)"
                     if monitor_line.get("drift_window") else "")]
        if stats:
            parts += ["", segments_table(stats)]
    if record.capture_lost:
        parts += ["", f"Capture gave up on: {record.capture_lost}"]
    if links:
        parts += ["", "### Links", "", *(f"- {name}: {link}" for name, link in links.items())]
    return "\n".join(parts)


def gate_run_links(workspace: Workspace, model_name: str, decision) -> dict[str, str]:
    """Links to the MLflow runs and model versions the gate compared (for the gate artifact).

    With a tracking server (http/https) these are clickable UI links; with a local store, `runs:/` URIs.
    Never raises: a report must not fail the gate.
    """
    from labelloop.adapters import tracking

    links: dict[str, str] = {}
    base = redact_uri(workspace.tracking_uri).rstrip("/")
    web = base.startswith(("http://", "https://"))
    try:
        mlflow_client = tracking.client(workspace)
        for role, version in (("challenger", decision.challenger_version), ("champion", decision.champion_version)):
            if version is None:
                continue
            model_version = mlflow_client.get_model_version(model_name, str(version))
            run = mlflow_client.get_run(model_version.run_id)
            if web:
                run_url = f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
                links[f"{role} run"] = f"[{run.info.run_name or run.info.run_id}]({run_url})"
                links[f"{role} model"] = f"[{model_name} v{version}]({base}/#/models/{model_name}/versions/{version})"
            else:
                links[f"{role} run"] = f"runs:/{run.info.run_id} ({run.info.run_name})"
    except Exception as error:  # noqa: BLE001 - reporting is best effort
        links["links"] = redact_text(f"unavailable: {error}")[:300]
    return links


def label_spend(workspace: Workspace, champion_accuracy: float | None) -> tuple[float, float | None]:
    """(total cost of labels bought so far, cost per percentage point of holdout accuracy gained since
    the seed model); the second is None without a gain to divide by."""
    from labelloop.batches import BatchStore

    total = float(sum(meta.cost for meta in BatchStore(workspace).list()))
    seed = next((r.champion_accuracy for r in load_history(workspace) if r.champion_accuracy is not None), None)
    if champion_accuracy is None or seed is None or champion_accuracy <= seed:
        return total, None
    return total, total / ((champion_accuracy - seed) * 100.0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def audit_points(workspace: Workspace) -> dict[int, tuple[float, float, float]]:
    """Cycle → the champion's audit estimate of accuracy (value, low, high) from reports/audit.jsonl ({} without)."""
    from labelloop.core.io import read_json_lines
    from labelloop.stages.audit import report_path

    points = {}
    for line in read_json_lines(report_path(workspace)):
        model = next((m for m in line.get("models", []) if m.get("role") == "champion"), None)
        accuracy = ((model or {}).get("estimate") or {}).get("accuracy")
        if accuracy and "cycle" in line:
            points[int(line["cycle"])] = (float(accuracy["value"]), float(accuracy["low"]), float(accuracy["high"]))
    return points


def plot_learning_curve(workspace: Workspace, out: Path | None = None) -> Path:
    """The loop at a glance, x = labels spent: the champion's holdout accuracy and macro-F1 per cycle, each cycle's
    trained model (challenger) marked by the gate's decision (promoted ▲ / rejected ✕), and the champion's audit
    estimate of accuracy on live traffic with its 90% interval where the audit stage made one."""
    out = out or workspace.reports_dir / "learning_curve.png"
    return _save(learning_curve_figure(load_history(workspace), audit_points(workspace)), out)


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


def learning_curve_figure(history: list, audit: dict[int, tuple[float, float, float]]):
    """The learning curve's figure from the cycle history and the audit points (`audit_points`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    labels = [r.labels for r in history]
    # A cycle without a champion has no point (NaN leaves a gap, as None did).
    accuracy = [math.nan if r.champion_accuracy is None else r.champion_accuracy for r in history]
    macro_f1 = [math.nan if r.champion_macro_f1 is None else r.champion_macro_f1 for r in history]
    ax.plot(labels, accuracy, marker="o", label="champion accuracy (holdout)")
    ax.plot(labels, macro_f1, marker="s", alpha=0.6, label="champion macro-F1 (holdout)")
    for decision, marker, color, name in (("promote", "^", "tab:green", "trained model, promoted"),
                                          ("reject", "x", "tab:red", "trained model, rejected")):
        points = [(r.labels, r.trained_metric) for r in history if r.decision == decision and r.trained_metric is not None]
        if points:
            ax.scatter(*zip(*points, strict=True), marker=marker, color=color, s=60, zorder=3,
                       label=f"{name} (gate.primary_metric)")
    for r in history:
        if r.decision == "promote" and r.champion_accuracy is not None:
            ax.annotate(f"v{r.champion_version}", (r.labels, r.champion_accuracy), textcoords="offset points", xytext=(0, 6),
                        fontsize=7, ha="center")
    shown = [(r.labels, *audit[r.cycle]) for r in history if r.cycle in audit]
    if shown:
        x, value, low, high = (np.array(v, dtype=np.float64) for v in zip(*shown, strict=True))
        ax.errorbar(x, value, yerr=[value - low, high - value], fmt="D", color="tab:purple", capsize=4,
                    label="champion accuracy (audit, live traffic, 90% interval)")
    ax.set_xlabel("labels spent" + (f" (cost {history[-1].cost:.2f})" if history and history[-1].cost else ""))
    ax.set_ylabel("accuracy / macro-F1")
    ax.set_title("labelloop: the champion per cycle, the gate's decisions, the audit estimate")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def plot_segments(workspace: Workspace, out: Path | None = None, top: int = 8) -> Path | None:
    """Per monitored segment over cycles: the champion's holdout accuracy (audit estimates as diamonds with their
    interval) and the labels bought; None when no segment is monitored (labelloop/stages/monitor.py)."""
    from labelloop.stages.monitor import load_segment_log

    log = [line for line in load_segment_log(workspace) if line.get("segments")]
    if not log:
        return None
    return _save(segments_figure(log, top), out or workspace.reports_dir / "segments.png")


def segments_figure(log: list[dict], top: int = 8):
    """The per-segment figure from the monitor's lines (reports/segments.jsonl, those with segments)."""
    from labelloop.stages.monitor import segment_stats

    plt = _pyplot()
    last = segment_stats(log[-1])
    keys = [(s.column, s.segment) for s in sorted(last, key=lambda s: (-s.flagged, -s.labels))[:top]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    cycles = [int(line["cycle"]) for line in log]
    for column, segment in keys:
        series = [next((s for s in segment_stats(line) if (s.column, s.segment) == (column, segment)), None) for line in log]
        name = f"{column}={segment}" + (" (flagged)" if any(s.flagged for s in last if (s.column, s.segment) == (column, segment))
                                        else "")
        accuracy = [math.nan if s is None or s.holdout_accuracy is None else s.holdout_accuracy for s in series]
        (line,) = left.plot(cycles, accuracy, marker="o", label=name)
        audited = [(c, s.audit) for c, s in zip(cycles, series, strict=True) if s is not None and s.audit is not None]
        if audited:
            x = np.array([c for c, _ in audited], dtype=np.float64)
            value = np.array([a.value for _, a in audited])
            left.errorbar(x, value, yerr=[value - [a.low for _, a in audited], [a.high for _, a in audited] - value],
                          fmt="D", color=line.get_color(), alpha=0.6, capsize=3)
        right.plot(cycles, [0 if s is None else s.labels for s in series], marker="o", color=line.get_color(), label=name)
    left.set_title("champion accuracy per segment (holdout; ◆ audit, 90% interval)")
    left.set_xlabel("cycle")
    left.set_ylabel("accuracy")
    right.set_title("labels per segment")
    right.set_xlabel("cycle")
    right.set_ylabel("labelled rows")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return fig


def stage_params_path(workspace: Workspace) -> Path:
    return workspace.reports_dir / "stage-params.jsonl"


def record_stage_params(workspace: Workspace, stage: str, params, sections: tuple[str, ...],
                        run_ids: dict[str, str | None] | None = None) -> None:
    """Append which params a stage ran with (one JSON line per stage run; the run's ids group a cycle's stages).

    An append of one short line, flushed and fsynced: a kill leaves at most a torn last line, which
    `load_stage_params` skips.
    """
    import json
    import os
    import time

    data = params.to_dict()
    line = {"stage": stage, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(run_ids or {}),
            "params": {name: data[name] for name in sections}}
    path = stage_params_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def load_stage_params(workspace: Workspace) -> list[dict]:
    """Every recorded stage run, oldest first (a torn last line from a killed run is skipped)."""
    from labelloop.core.io import read_json_lines

    return read_json_lines(stage_params_path(workspace))
