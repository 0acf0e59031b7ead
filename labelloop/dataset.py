"""The labelled set: grow it from imported batches and version it (git + DVC tag per version)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from labelloop.faults import crash_point
from labelloop import versioning
from labelloop.batches import BatchStore
from labelloop.io import read_parquet, write_json, write_parquet
from labelloop.workspace import Workspace

ITEM_ID = "item_id"


class HoldoutLeakError(ValueError):
    """A labelled item is in the fixed holdout set."""


@dataclass(frozen=True)
class DatasetVersion:
    tag: str
    created: bool
    n_rows: int
    n_new: int
    batches: list[str]


def write_card(workspace: Workspace, labeled: pd.DataFrame) -> None:
    """The dataset card versioned with each data version: rows per class, batch, source, vendor."""
    card = {
        "rows": len(labeled),
        "per_class": labeled["label"].value_counts().sort_index().to_dict(),
        "per_batch": labeled["batch_id"].value_counts().sort_index().to_dict(),
        "per_source": labeled["source"].value_counts().sort_index().to_dict(),
    }
    write_json(workspace.card_path, card)


def load_labeled(workspace: Workspace) -> pd.DataFrame:
    return read_parquet(workspace.labeled_path)


def load_holdout(workspace: Workspace) -> pd.DataFrame:
    return read_parquet(workspace.holdout_path)


def check_no_holdout_leak(workspace: Workspace, item_ids: pd.Series) -> None:
    holdout_ids = set(read_parquet(workspace.holdout_path, columns=[ITEM_ID])[ITEM_ID])
    leaked = sorted(set(item_ids) & holdout_ids)
    if leaked:
        raise HoldoutLeakError(f"{len(leaked)} labelled items are in the holdout set (e.g. {leaked[:5]}); refusing to version them")


def update_dataset(workspace: Workspace) -> DatasetVersion:
    """Append every final label not yet in the labelled set and make a new version.

    Works per item, not per batch, so labels that arrive late (a partial import) join a later
    version. Idempotent: an item is never appended twice, and a rerun after a crash anywhere
    between writing the set, `dvc add`, commit, tag and push completes the same version.
    """
    schema = workspace.schema()
    store = BatchStore(workspace)
    labeled = load_labeled(workspace)
    known = set(labeled[ITEM_ID].astype(str))
    new_rows = []
    for meta in store.list():
        if meta.status not in ("imported", "partial"):
            continue
        final = store.final_labels(meta.batch_id)
        final = final[~final[ITEM_ID].astype(str).isin(known)]
        if final.empty:
            continue
        items = store.items(meta.batch_id)
        joined = items[[ITEM_ID, *schema.feature_columns]].merge(final[[ITEM_ID, "label"]], on=ITEM_ID, how="inner")
        joined["batch_id"] = meta.batch_id
        joined["source"] = meta.vendor or "unknown"
        new_rows.append(joined)
    n_new = int(sum(len(r) for r in new_rows))
    if new_rows:
        addition = pd.concat(new_rows, ignore_index=True)
        check_no_holdout_leak(workspace, addition[ITEM_ID])
        labeled = pd.concat([labeled, addition[labeled.columns]], ignore_index=True)
        write_parquet(workspace.labeled_path, labeled)
        write_card(workspace, labeled)
        crash_point("dataset.after_write")
    current = versioning.version_of(workspace.registry_dir, workspace.labeled_path)
    if not new_rows and current is not None:
        # A version tagged by a run whose push failed is pushed now; the batches are marked only after.
        versioning.ensure_pushed(workspace.registry_dir)
        _mark_versioned(store, labeled, current)
        return DatasetVersion(current, False, len(labeled), 0, [])
    # The batches this version adds: all in the set beyond the last tag (covers a crashed earlier run).
    batches_in_version = _batches_since_last_tag(workspace, labeled)
    message = f"Add labelled batches {', '.join(batches_in_version) or '(none)'} ({len(labeled)} rows)"
    tag, created = versioning.commit_version(workspace.registry_dir, [workspace.labeled_path], message)
    _mark_versioned(store, labeled, tag)
    return DatasetVersion(tag, created, len(labeled), n_new, batches_in_version)


def _mark_versioned(store: BatchStore, labeled: pd.DataFrame, tag: str) -> None:
    """Record the data version on every batch whose labels are in the set and not yet marked."""
    for batch_id in sorted(set(labeled["batch_id"]) - {"seed"}):
        if store.exists(batch_id) and store.get(batch_id).versioned_in is None:
            store.mark(batch_id, versioned_in=tag)


def _batches_since_last_tag(workspace: Workspace, labeled: pd.DataFrame) -> list[str]:
    tags = versioning.data_tags(workspace.registry_dir)
    if not tags:
        return sorted(set(labeled["batch_id"]))
    previous = pd.read_parquet(_bytes_io(versioning.read_at(workspace.registry_dir, workspace.labeled_path, tags[-1])))
    return sorted(set(labeled["batch_id"]) - set(previous["batch_id"]))


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


def rollback(workspace: Workspace, tag: str) -> DatasetVersion:
    """The labelled set becomes the version at `tag` again, as a new commit and tag (history kept)."""
    if tag not in versioning.data_tags(workspace.registry_dir):
        raise ValueError(f"unknown data tag {tag!r}; known: {', '.join(versioning.data_tags(workspace.registry_dir))}")
    versioning.checkout(workspace.registry_dir, tag, workspace.labeled_path)
    versioning.git(workspace.registry_dir, "checkout", tag, "--", "dataset_card.json")
    labeled = load_labeled(workspace)
    new_tag, created = versioning.commit_version(
        workspace.registry_dir, [workspace.labeled_path], f"Roll the labelled set back to {tag} ({len(labeled)} rows)", tag=versioning.next_data_tag(workspace.registry_dir)
    )
    return DatasetVersion(new_tag, created, len(labeled), 0, [])
