"""The labelled set: grow it from imported batches and version it (git + DVC tag per version).

Two records travel with the data, in the registry, committed with each version:
- `exclusions.json`: the batches and items a rollback removed. The dataset stage never adds them back;
  only `readmit` (an explicit decision, its own version) does.
- `data/audit.parquet`: the audit set (labelloop/stages/audit.py), appended here from imported audit items and
  versioned (DVC) with the labelled set; audit items join the labelled set only once they have evaluated a model.
- `dataset_card.json`: per version, rows per class / batch / source, and the `relabels` that version
  made: an item already versioned whose final label changed (a vendor's corrected answer: the last
  answer counts), with the old and new label, the batch and the annotators.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from labelloop.adapters import versioning
from labelloop.batches import BatchStore
from labelloop.columns import ITEM_ID
from labelloop.core.faults import crash_point
from labelloop.core.io import read_json, read_parquet, write_json, write_parquet
from labelloop.core.retry import DEFAULT_RETRY, RetryPolicy
from labelloop.stages import audit
from labelloop.workspace import Workspace

SEED_BATCH = "seed"
LABEL_SOURCE, HUMAN, AUTO = "label_source", "human", "auto"  # who gave a label (AUTO: also the auto batches' status)
EXCLUSIONS_FILE = "exclusions.json"
MAX_RELABELS_IN_MESSAGE = 20  # the card lists them all; a tag message names the first ones


class HoldoutLeakError(ValueError):
    """A labelled item is in the fixed holdout set."""


@dataclass(frozen=True)
class DatasetVersion:
    tag: str
    created: bool
    n_rows: int
    n_new: int
    batches: list[str]
    relabels: list[dict] = field(default_factory=list)  # this version's relabels (see `diff_versions`)
    excluded: list[dict] = field(default_factory=list)  # a rollback's new exclusions
    readmitted: list[str] = field(default_factory=list)


def write_card(workspace: Workspace, labeled: pd.DataFrame, relabels: list[dict] | None = None,
               excluded: list[dict] | None = None) -> None:
    """The dataset card versioned with each data version: rows per class, batch, source, vendor, and
    what this version relabelled or (a rollback) excluded."""
    card = {
        "rows": len(labeled),
        "per_class": labeled["label"].value_counts().sort_index().to_dict(),
        "per_batch": labeled["batch_id"].value_counts().sort_index().to_dict(),
        "per_source": labeled["source"].value_counts().sort_index().to_dict(),
        # human | auto (auto-labels: labelloop/stages/autolabel.py; never holdout, gold or evaluation rows)
        "per_label_source": (labeled[LABEL_SOURCE] if LABEL_SOURCE in labeled.columns
                             else pd.Series(HUMAN, index=labeled.index)).value_counts().sort_index().to_dict(),
        "relabels": relabels or [],
        "excluded": [_summary(e) for e in excluded or []],
    }
    write_json(workspace.card_path, card)


def load_labeled(workspace: Workspace) -> pd.DataFrame:
    return read_parquet(workspace.labeled_path)


def labeled_at(workspace: Workspace, tag: str) -> pd.DataFrame:
    """The labelled set of a data version, read from git + DVC without touching the working tree."""
    return pd.read_parquet(io.BytesIO(versioning.read_at(workspace.registry_dir, workspace.labeled_path, tag)))


def check_no_holdout_leak(workspace: Workspace, item_ids: pd.Series) -> None:
    holdout_ids = set(read_parquet(workspace.holdout_path, columns=[ITEM_ID])[ITEM_ID])
    leaked = sorted(set(item_ids) & holdout_ids)
    if leaked:
        raise HoldoutLeakError(
            f"{len(leaked)} labelled items are in the holdout set (e.g. {leaked[:5]}); refusing to version them")


# -- exclusions --------------------------------------------------------------------------------------
def exclusions_path(workspace: Workspace):
    return workspace.registry_dir / EXCLUSIONS_FILE


def exclusions(workspace: Workspace) -> list[dict]:
    """The exclusions in force: one entry per (batch, rollback) with `batch_id`, `item_ids`, `n_items`,
    `excluded_in` (the rollback's tag), `rolled_back_to` and `at`."""
    return list((read_json(exclusions_path(workspace), default={}) or {}).get("excluded", []))


def exclusions_at(workspace: Workspace, rev: str) -> list[dict]:
    """The exclusions in force at a data tag (or any git revision)."""
    text = versioning.show_at(workspace.registry_dir, rev, EXCLUSIONS_FILE)
    return list(json.loads(text).get("excluded", [])) if text else []


def excluded_item_ids(entries: list[dict]) -> set[str]:
    return {str(i) for entry in entries for i in entry.get("item_ids", [])}


def kept_label_item_ids(entries: list[dict]) -> set[str]:
    """Items whose label a rollback restored: their later answers are not applied until a readmit."""
    return {str(i) for entry in entries for i in entry.get("kept_labels", {})}


def _summary(entry: dict) -> dict:
    """An exclusion without its item lists (for cards, lineage and status lines)."""
    summary = {k: v for k, v in entry.items() if k not in ("item_ids", "kept_labels")}
    if entry.get("kept_labels"):
        summary["n_labels_kept"] = len(entry["kept_labels"])
    return summary


def exclusion_summaries(entries: list[dict]) -> list[dict]:
    return [_summary(e) for e in entries]


def describe_exclusions(entries: list[dict]) -> str:
    """One line, e.g. `batch-0002-ab12cd (40 items, excluded in data-v5)`, for `labelloop status`."""
    return ", ".join(f"{e['batch_id']} ({e['n_items']} items"
                     + (f", {len(e['kept_labels'])} relabels undone" if e.get("kept_labels") else "")
                     + f", excluded in {e['excluded_in']})" for e in entries) or "none"


def write_exclusions(workspace: Workspace, entries: list[dict]) -> None:
    write_json(exclusions_path(workspace), {"excluded": sorted(entries, key=lambda e: (e["excluded_in"], e["batch_id"]))})


# -- what the labelled set should be -----------------------------------------------------------------
def latest_answers(workspace: Workspace, store: BatchStore | None = None) -> pd.DataFrame:
    """Every item's final label as the last import says it, with its features, batch, source and
    annotators. An item in several batches (a review re-send) takes its newest batch's label."""
    schema = workspace.schema()
    store = store or BatchStore(workspace)
    frames = []
    for meta in store.list():
        if meta.status not in ("imported", "partial", AUTO):  # auto: an auto batch (labelloop/stages/autolabel.py)
            continue
        final = store.final_labels(meta.batch_id)
        if final.empty:
            continue
        final = final.assign(**{ITEM_ID: final[ITEM_ID].astype(str)})
        if "annotators" not in final.columns:
            final["annotators"] = ""
        items = store.items(meta.batch_id)
        items = items.assign(**{ITEM_ID: items[ITEM_ID].astype(str)}).drop_duplicates(ITEM_ID)
        # Id columns travel with the item where the log carried them (they are optional there).
        kept = [ITEM_ID, *(c for c in schema.stored_columns if c in items.columns)]
        joined = items[kept].merge(final[[ITEM_ID, "label", "annotators"]], on=ITEM_ID, how="inner")
        joined["batch_id"] = meta.batch_id
        joined["source"] = meta.vendor or "unknown"
        joined[LABEL_SOURCE] = AUTO if meta.vendor == AUTO else HUMAN
        frames.append(joined)
    if not frames:
        return pd.DataFrame(columns=[ITEM_ID, *schema.feature_columns, "label", "annotators", "batch_id", "source",
                                     LABEL_SOURCE])
    return pd.concat(frames, ignore_index=True).drop_duplicates(ITEM_ID, keep="last").reset_index(drop=True)


def _apply_answers(labeled: pd.DataFrame, answers: pd.DataFrame, excluded: set[str],
                   kept: set[str] | frozenset[str] = frozenset()) -> tuple[pd.DataFrame, bool]:
    """The labelled set with every non-excluded answer in it: new items appended, changed labels of
    versioned items replaced (the last answer counts). Seed labels are curated and never replaced, nor
    are labels a rollback restored (`kept`)."""
    if LABEL_SOURCE not in labeled.columns:  # a set versioned before auto-labels: every label is a human's
        labeled = labeled.assign(**{LABEL_SOURCE: HUMAN})
    if LABEL_SOURCE not in answers.columns:
        answers = answers.assign(**{LABEL_SOURCE: HUMAN})
    answers = answers[~answers[ITEM_ID].isin(excluded)]
    ids = labeled[ITEM_ID].astype(str)
    new = answers[~answers[ITEM_ID].isin(set(ids))]
    current = answers.set_index(ITEM_ID)
    in_answers = ids.isin(current.index) & (labeled["batch_id"].astype(str) != SEED_BATCH) & ~ids.isin(kept)
    new_label = ids[in_answers].map(current["label"].astype(str))
    changed_index = new_label.index[new_label.to_numpy() != labeled.loc[in_answers, "label"].astype(str).to_numpy()]
    if new.empty and not len(changed_index):
        return labeled, False
    labeled = labeled.copy()
    if len(changed_index):
        changed_ids = ids[changed_index]
        labeled.loc[changed_index, "label"] = changed_ids.map(current["label"].astype(str)).to_numpy()
        labeled.loc[changed_index, "batch_id"] = changed_ids.map(current["batch_id"]).to_numpy()
        labeled.loc[changed_index, "source"] = changed_ids.map(current["source"]).to_numpy()
        labeled.loc[changed_index, LABEL_SOURCE] = changed_ids.map(current[LABEL_SOURCE]).to_numpy()
    if len(new):
        labeled = pd.concat([labeled, new[labeled.columns]], ignore_index=True)
    return labeled, True


def next_labeled(workspace: Workspace) -> pd.DataFrame:
    """The labelled set as the next dataset run will version it (the current set with every final label
    not yet versioned applied), without writing anything: what the import's error scan looks at."""
    in_force = exclusions(workspace)
    labeled, _ = _apply_answers(load_labeled(workspace), latest_answers(workspace),
                                excluded_item_ids(in_force) | audit.withheld_ids(workspace), kept_label_item_ids(in_force))
    return labeled


def diff_versions(previous: pd.DataFrame | None, labeled: pd.DataFrame, answers: pd.DataFrame | None = None) -> dict:
    """What `labeled` adds to `previous`: rows per batch (`late` when the batch already had rows in
    `previous`), relabels (item_id, old_label, new_label, batch_id, annotators), removed items."""
    ids = labeled[ITEM_ID].astype(str)
    if previous is None:
        counts = labeled["batch_id"].astype(str).value_counts().sort_index()
        return {"added": [{"batch_id": b, "rows": int(n), "late": False} for b, n in counts.items()],
                "relabels": [], "removed": []}
    previous_ids = previous[ITEM_ID].astype(str)
    added = labeled[~ids.isin(set(previous_ids))]
    old_batches = set(previous["batch_id"].astype(str))
    counts = added["batch_id"].astype(str).value_counts().sort_index()
    annotators = answers.set_index(ITEM_ID)["annotators"] if answers is not None and len(answers) else pd.Series(dtype=object)
    both = labeled.assign(**{ITEM_ID: ids}).merge(
        previous.assign(**{ITEM_ID: previous_ids})[[ITEM_ID, "label"]], on=ITEM_ID, suffixes=("", "_old"))
    changed = both[both["label"].astype(str) != both["label_old"].astype(str)]
    relabels = [{ITEM_ID: row[ITEM_ID], "old_label": str(row["label_old"]), "new_label": str(row["label"]),
                 "batch_id": str(row["batch_id"]),
                 "annotators": [a for a in str(annotators.get(row[ITEM_ID], "") or "").split(",") if a]}
                for _, row in changed.sort_values(ITEM_ID).iterrows()]
    removed = sorted(set(previous_ids) - set(ids))
    return {"added": [{"batch_id": b, "rows": int(n), "late": b in old_batches} for b, n in counts.items()],
            "relabels": relabels, "removed": removed}


def _message(changes: dict, n_rows: int, readmitted: list[str] | None = None) -> str:
    """A tag message naming exactly what the version adds: batches (late rows too), relabels, re-admits."""
    parts = []
    if readmitted:
        parts.append(f"Re-admit {', '.join(readmitted)} (excluded by a rollback)")
    if changes["added"]:
        parts.append("add labelled batches " + ", ".join(
            f"{a['batch_id']} ({a['rows']} {'late ' if a['late'] else ''}rows)" for a in changes["added"]))
    relabels = changes["relabels"]
    if relabels:
        shown = ", ".join(f"{r[ITEM_ID]} {r['old_label']} -> {r['new_label']} ({r['batch_id']})"
                          for r in relabels[:MAX_RELABELS_IN_MESSAGE])
        more = (f" and {len(relabels) - MAX_RELABELS_IN_MESSAGE} more (dataset_card.json)"
                if len(relabels) > MAX_RELABELS_IN_MESSAGE else "")
        parts.append(f"relabel {len(relabels)} item{'s' if len(relabels) != 1 else ''}: {shown}{more}")
    if not parts:
        parts.append("no label changes")
    text = "; ".join(parts)
    return f"{text[0].upper()}{text[1:]} ({n_rows} rows)"


def update_dataset(workspace: Workspace, retry: RetryPolicy = DEFAULT_RETRY) -> DatasetVersion:
    """Bring every final label into the labelled set and make a new version if anything changed
    (pushed to the DVC remote with `retry`).

    Works per item, not per batch: labels that arrive late (a partial import) join a later version,
    and a versioned item whose final label changed (a corrected answer) is relabelled in a new
    version. Items a rollback excluded are never added back. Idempotent: an item is never appended
    twice, and a rerun after a crash anywhere between writing the set, `dvc add`, commit, tag and
    push completes the same version (what it adds is computed against the previous tag).
    """
    from labelloop.core.lock import holds_lock

    # A kill inside `dvc add`, `git commit` or `git tag` leaves lock and temp files; clearing them is
    # safe only under the workspace lock (no other labelloop process can be writing them).
    if holds_lock(workspace):
        versioning.recover_registry(workspace.registry_dir)
    return _version(workspace, retry)


def _version(workspace: Workspace, retry: RetryPolicy, readmitted: list[str] | None = None) -> DatasetVersion:
    store = BatchStore(workspace)
    audit.append_audit_items(workspace, store)  # append-only; versioned below with the labelled set
    labeled = load_labeled(workspace)
    answers = latest_answers(workspace, store)
    in_force = exclusions(workspace)
    # Audit items join the labelled set only once they have evaluated a model (labelloop/stages/audit.py).
    labeled, changed = _apply_answers(labeled, answers, excluded_item_ids(in_force) | audit.withheld_ids(workspace, store),
                                      kept_label_item_ids(in_force))
    if changed:
        check_no_holdout_leak(workspace, labeled[ITEM_ID])
        write_parquet(workspace.labeled_path, labeled)
        crash_point("dataset.after_write")
    repo = workspace.registry_dir
    current = versioning.version_of(repo, workspace.labeled_path)
    audit_changed = audit.audit_path_dirty(workspace)
    if not changed and current is not None and not readmitted and not audit_changed:
        # A version tagged by a run whose push failed is pushed now; the batches are marked only after.
        versioning.ensure_pushed(repo, retry)
        _mark_versioned(store, labeled, current)
        return DatasetVersion(current, False, len(labeled), 0, [])
    previous_tag = versioning.current_data_tag(repo)
    changes = diff_versions(labeled_at(workspace, previous_tag) if previous_tag else None, labeled, answers)
    write_card(workspace, labeled, changes["relabels"])
    message = _message(changes, len(labeled), readmitted)
    paths = [workspace.labeled_path]
    if workspace.audit_path.exists():
        paths.append(workspace.audit_path)
        if audit_changed:
            message += f"; audit set {len(audit.load_audit_set(workspace))} items"
    tag, created = versioning.commit_version(repo, paths, message, retry=retry)
    _mark_versioned(store, labeled, tag)
    return DatasetVersion(tag, created, len(labeled), sum(a["rows"] for a in changes["added"]),
                          [a["batch_id"] for a in changes["added"]], changes["relabels"], [], list(readmitted or []))


def _mark_versioned(store: BatchStore, labeled: pd.DataFrame, tag: str) -> None:
    """Record the data version on every batch whose labels are in the set and not yet marked."""
    for batch_id in sorted(set(labeled["batch_id"]) - {SEED_BATCH}):
        if store.exists(batch_id) and store.get(batch_id).versioned_in is None:
            store.mark(batch_id, versioned_in=tag)


def rollback(workspace: Workspace, tag: str, retry: RetryPolicy = DEFAULT_RETRY) -> DatasetVersion:
    """The labelled set becomes the version at `tag` again, as a new commit and tag (history kept).

    Everything in the set now that is not in `tag` is recorded as excluded (per batch, with its item
    ids) in `exclusions.json`, committed in the same version, so later dataset runs do not add it back.
    """
    repo = workspace.registry_dir
    tags = versioning.data_tags(repo)
    if tag not in tags:
        raise ValueError(f"unknown data tag {tag!r}; known: {', '.join(tags)}")
    versioning.require_production_line(repo)
    labeled = load_labeled(workspace)
    target = labeled_at(workspace, tag)
    removed = labeled[~labeled[ITEM_ID].astype(str).isin(set(target[ITEM_ID].astype(str)))]
    head_tag = versioning.tag_of_head(repo)
    if removed.empty and head_tag is not None and versioning.version_of(repo, workspace.labeled_path) == head_tag \
            and _same_set(labeled, target):
        versioning.ensure_pushed(repo, retry)  # already that version's content (a second rollback, or a rerun)
        return DatasetVersion(head_tag, False, len(labeled), 0, [])
    new_tag = versioning.next_data_tag(repo)
    entries = exclusions(workspace)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    # Relabels undone: items in both sets whose label the rollback restores; keyed by the batch whose
    # later answer made the relabel, so that answer is not applied again (until that batch is re-admitted).
    both = labeled.assign(**{ITEM_ID: labeled[ITEM_ID].astype(str)}).merge(
        target.assign(**{ITEM_ID: target[ITEM_ID].astype(str)})[[ITEM_ID, "label"]], on=ITEM_ID, suffixes=("", "_restored"))
    undone = both[(both["label"].astype(str) != both["label_restored"].astype(str))
                  & (both["batch_id"].astype(str) != SEED_BATCH)]
    new_entries: dict[str, dict[str, Any]] = {}
    for batch_id, group in removed.groupby(removed["batch_id"].astype(str), sort=True):
        new_entries[batch_id] = {"item_ids": sorted(group[ITEM_ID].astype(str))}
    for batch_id, group in undone.groupby(undone["batch_id"].astype(str), sort=True):
        new_entries.setdefault(batch_id, {"item_ids": []})["kept_labels"] = dict(
            zip(group[ITEM_ID], group["label_restored"].astype(str), strict=True))
    # A rerun after a crash finds its own entries (same tag) already written: merge, never duplicate.
    merged = {(e["batch_id"], e["excluded_in"]): e for e in entries}
    for batch_id, found in sorted(new_entries.items()):
        key = (batch_id, new_tag)
        entry = merged.get(key, {"batch_id": batch_id, "item_ids": [], "excluded_in": new_tag, "rolled_back_to": tag, "at": now})
        entry["item_ids"] = sorted(set(entry["item_ids"]) | set(found["item_ids"]))
        entry["n_items"] = len(entry["item_ids"])
        kept_labels = entry.get("kept_labels", {}) | found.get("kept_labels", {})
        if kept_labels:
            entry["kept_labels"] = dict(sorted(kept_labels.items()))
        merged[key] = entry
    write_exclusions(workspace, list(merged.values()))
    versioning.checkout(repo, tag, workspace.labeled_path)
    labeled = load_labeled(workspace)
    this_rollback = [e for e in merged.values() if e["excluded_in"] == new_tag]
    write_card(workspace, labeled, excluded=this_rollback)
    excluded_text = ", ".join(f"{e['batch_id']} ({e['n_items']} items)" for e in this_rollback if e["n_items"])
    undone_text = ", ".join(f"{e['batch_id']} ({len(e['kept_labels'])} items)" for e in this_rollback if e.get("kept_labels"))
    message = (f"Roll the labelled set back to {tag}" + (f"; exclude {excluded_text}" if excluded_text else "")
               + (f"; undo relabels of {undone_text}" if undone_text else "") + f" ({len(labeled)} rows)")
    new_tag, created = versioning.commit_version(repo, [workspace.labeled_path], message, tag=new_tag, retry=retry)
    return DatasetVersion(new_tag, created, len(labeled), 0, [], [], exclusion_summaries(this_rollback))


def _same_set(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    left = a[[ITEM_ID, "label"]].astype(str).sort_values(ITEM_ID).reset_index(drop=True)
    right = b[[ITEM_ID, "label"]].astype(str).sort_values(ITEM_ID).reset_index(drop=True)
    return left.equals(right)


def readmit(workspace: Workspace, batch_id: str, retry: RetryPolicy = DEFAULT_RETRY) -> DatasetVersion:
    """Lift a batch's exclusion and make a new version with its items back in the labelled set
    (with their latest labels); the tag message says it re-admits the batch."""
    repo = workspace.registry_dir
    versioning.require_production_line(repo)
    entries = exclusions(workspace)
    committed = {e["batch_id"] for e in exclusions_at(workspace, "HEAD")}
    excluded_batches = sorted({e["batch_id"] for e in entries} | committed)
    if batch_id not in excluded_batches:
        store = BatchStore(workspace)
        known = "" if store.exists(batch_id) else f"there is no batch {batch_id!r} in this workspace; "
        raise ValueError(
            f"{known}batch {batch_id!r} is not excluded; excluded batches: {', '.join(excluded_batches) or '(none)'}")
    write_exclusions(workspace, [e for e in entries if e["batch_id"] != batch_id])
    return _version(workspace, retry, readmitted=[batch_id])


def relabels_through(workspace: Workspace, tag: str) -> list[dict]:
    """Every relabel recorded by the data versions up to `tag` (its history), each with its `version`."""
    found = []
    for version in versioning.tags_merged_into(workspace.registry_dir, tag):
        text = versioning.show_at(workspace.registry_dir, version, workspace.card_path.name)
        card = json.loads(text) if text else {}
        found += [{"version": version, **r} for r in card.get("relabels", [])]
    return found


def card_at(workspace: Workspace, tag: str) -> dict:
    text = versioning.show_at(workspace.registry_dir, tag, workspace.card_path.name)
    return json.loads(text) if text else {}
