"""Lineage of a registered model version: data version, batches (strategy, seed, vendor), labels'
agreement, train params, gate decision — everything needed to explain what is in production.

Read from the tracking store without MLflow (`labelloop.adapters.tracking_store`): a command, not a run.
"""

from __future__ import annotations

from typing import Any

from labelloop.adapters import tracking, tracking_store, versioning
from labelloop.batches import BatchStore
from labelloop.workspace import Workspace


def lineage(workspace: Workspace, model_name: str, version: str | None = None) -> dict:
    """`version` may be a number or an alias (champion, challenger, previous-champion); one that does not
    exist raises `tracking.UnknownModelVersion` naming the versions and aliases that do."""
    registry = tracking_store.reader(workspace)
    version = tracking_store.resolve_version(registry, model_name, version or tracking.CHAMPION)
    model_version = registry.model_version(model_name, str(version))
    run = registry.run(model_version.run_id) if model_version is not None and model_version.run_id else None
    if model_version is None or run is None:
        raise tracking.UnknownModelVersion(f"version {version} of {model_name!r} has no run in {workspace.tracking_uri}")
    tags, params = run.tags, run.params
    store = BatchStore(workspace)
    batches: list[dict[str, Any]] = []
    for batch_id in [b for b in tags.get("batches", "").split(",") if b and b != "seed"]:
        if not store.exists(batch_id):
            batches.append({"batch_id": batch_id, "missing": "no batch record in this workspace"})
            continue
        meta = store.get(batch_id)
        final = store.final_labels(batch_id)
        batches.append({
            "batch_id": batch_id, "strategy": meta.strategy, "selector": meta.selector_used or meta.selector,
            "seed": meta.seed, "items": meta.n_items, "labelled": meta.n_labelled, "quarantined": meta.n_quarantined,
            "vendor": meta.vendor, "vendor_batch": meta.vendor_ref, "scored_by_champion": meta.champion_version,
            "annotator_agreement": round(float(final["agreement"].mean()), 4) if "agreement" in final and len(final) else None,
            "cost": meta.cost, "data_version": meta.versioned_in,
        })
    current = tracking_store.aliases(registry, model_name)
    aliases = [a for a in (tracking.CHAMPION, tracking.CHALLENGER, tracking.PREVIOUS) if current.get(a) == str(version)]
    data_tag = tags.get("data_tag")
    return {
        "model": model_name,
        "version": str(version),
        "aliases": aliases,
        "run_id": run.run_id,
        "data": {
            "tag": data_tag,
            "commit": tags.get("data_commit"),
            "message": versioning.tag_message(workspace.registry_dir, data_tag).strip() if data_tag else None,
            "labelled_rows": int(tags.get("n_labels", 0)),
            "holdout": tags.get("holdout_tag"),
            "holdout_digest": tags.get("holdout_digest"),
            **data_corrections(workspace, data_tag),
        },
        "batches": batches,
        "train_params": dict(sorted(params.items())),
        "holdout_metrics": {k: round(v, 4) for k, v in sorted(run.metrics.items())
                            if k in ("accuracy", "macro_f1", "log_loss", "ece")},
        "gate": {
            "decision": tags.get("gate.decision"),
            "against_champion": tags.get("gate.champion_version"),
            "reasons": [r for r in tags.get("gate.reasons", "").split(" | ") if r],
        },
        "champion": champion_record(tracking_store.champion_history(registry, model_name), str(version),
                                    model_version.tags.get("rolled_back")),
    }


def champion_record(history: list[tracking.ChampionChange], version: str, rolled_back_tag: str | None = None) -> dict:
    """This version in the champion history: each time it became champion (when, by what, why) and each
    time a rollback demoted it (when, why, which version replaced it). `rolled_back_tag` (the version's
    tag) stands in for a rollback made before the history was kept."""
    became = [{"at": c.at, "by": c.by, "reason": c.reason, "replaced": c.replaced} for c in history if c.version == version]
    demoted = [{"at": c.at, "reason": c.reason, "champion_after": c.version} for c in history
               if c.by == "rollback" and c.replaced == version]
    if not demoted and rolled_back_tag:
        demoted = [{"at": None, "reason": rolled_back_tag, "champion_after": None}]
    return {"current": bool(history) and history[-1].version == version, "became_champion": became, "rolled_back": demoted}


def data_corrections(workspace: Workspace, data_tag: str | None) -> dict:
    """What shaped the labelled set at `data_tag` besides its batches: the exclusions in force there
    (batches and items a rollback removed) and the relabels its history made (corrected answers)."""
    from labelloop.stages import dataset

    if not data_tag or data_tag not in versioning.data_tags(workspace.registry_dir):
        return {"exclusions": [], "relabels": []}
    return {"exclusions": dataset.exclusion_summaries(dataset.exclusions_at(workspace, data_tag)),
            "relabels": dataset.relabels_through(workspace, data_tag)}
