"""File-drop vendor: batches go out as files in a directory or bucket, labels come back as files.

Layout under the drop URL (any fsspec URL: a local path, `file://`, `s3://bucket/prefix`, ...)::

    <batch_id>/tasks.jsonl            written by labelloop: one task per line
    <batch_id>/manifest.json          written by labelloop last: row count + sha256 of tasks.jsonl
    <batch_id>/labels.jsonl           written by the vendor (or labels.csv): one answer per line
    <batch_id>/labels.manifest.json   optional, written by the vendor after the labels file
    <batch_id>/archive/labels-<sha256[:16]>.<ext>   every labels file read, archived unchanged

The formats are documented for vendors in docs/vendors.md. With annotator context (`export.show_guess`),
a task's guess is in `model_guess` (shown with the item, with `why` under guess+why) or in `after_answer`
(the vendor shows it only once the item is answered; the manifest's `show_after_answer` names the field).
Export is idempotent (same batch and same content: nothing is rewritten; same batch id with other content:
VendorError). Fetching reads the whole labels file each time, so a vendor may append to it or replace it
as work progresses; lines that cannot be parsed come back with a `parse_error` and end in the import's
quarantine.

Hostile files: in a local drop only regular files with one link are read, through directories that
are not links (`labelloop.core.confined_files`): a symbolic link (to a secret, to /dev/zero, a batch folder
or `archive/` pointing elsewhere), a FIFO, a device or a hard link is refused before any byte of it is
read, and nothing is written through a link. A file above `max_labels_bytes` is refused unread (size
of the opened file; the read stops at the limit + 1 bytes, local or remote). A JSONL line above
MAX_LINE_BYTES, or one that is not UTF-8 (a latin-1 name), is quarantined with its line number while
the other lines are kept; a UTF-16/32 file (byte-order mark or NUL bytes) or a CSV that is not UTF-8 is
one clear error, nothing imported. Each refusal of a batch's files is a `VendorRefused`: that batch
is skipped with its reason (`labelloop.stages.importing.import_labels`), the other batches are imported, and a
rerun after the vendor fixes the file imports it. Storage faults: a drop that cannot be reached or written is one
`VendorError` naming the path; timeouts and dropped connections (object stores) are retried, bounded,
by `labelloop.core.retry`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from labelloop.adapters.vendors.base import (
    ANNOTATION_COLUMNS,
    SHOW_AFTER,
    SHOW_BEFORE,
    ExportBatch,
    ExportReceipt,
    FetchedLabels,
    Guess,
    Vendor,
    VendorError,
    VendorRefused,
    VendorStatus,
    VendorUnavailable,
)
from labelloop.adapters.vendors.base import json_value as _json_value
from labelloop.core.confined_files import FileTooLarge, UnsafeFile, lexists, read_regular, write_regular
from labelloop.core.redact import redact_uri
from labelloop.core.retry import DEFAULT_RETRY, RetryPolicy, with_retries

FORMAT = "labelloop-filedrop/1"
LABEL_FIELDS = ("item_id", "annotator_id", "label")
FETCHED_COLUMNS = [*ANNOTATION_COLUMNS, "line", "parse_error"]
MAX_LABELS_BYTES = 256 * 2**20  # a labels file larger than this is refused unread (one batch is at most thousands of answers)
MAX_LINE_BYTES = 64 * 2**10  # one answer is a few hundred bytes; a longer line is quarantined unparsed
# Byte-order marks of encodings that are not UTF-8 (checked longest first: UTF-32 LE starts like UTF-16 LE).
FOREIGN_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"),
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


class FileDropVendor(Vendor):
    name = "filedrop"

    def __init__(self, url: str, max_labels_bytes: int = MAX_LABELS_BYTES, retry: RetryPolicy = DEFAULT_RETRY) -> None:
        import fsspec

        if max_labels_bytes < 1:
            raise ValueError(f"max_labels_bytes must be positive, got {max_labels_bytes}")
        self.max_labels_bytes = int(max_labels_bytes)
        self.retry = retry
        self.url = str(url)  # for fsspec only: it may carry credentials
        self.shown_url = redact_uri(self.url)  # the URL in every message, credentials masked
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self._local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    # ----------------------------------------------------------------------------------- file access
    def _path(self, batch_id: str, *parts: str) -> str:
        if not batch_id or "/" in batch_id or batch_id in (".", ".."):
            raise VendorError(f"batch id {batch_id!r} cannot name a drop folder")
        return "/".join([self.root.rstrip("/"), batch_id, *parts])

    def _io(self, what: str, operation):
        """One storage call: timeouts and dropped connections are retried (bounded); any other OSError
        (no such directory, not a directory, permission denied) is one VendorError at once."""

        def attempt():
            try:
                return operation()
            except (TimeoutError, ConnectionError) as error:
                raise VendorUnavailable(f"file drop {self.shown_url}: {what} failed: {type(error).__name__}: {error}") from error
            except OSError as error:
                raise VendorError(f"file drop {self.shown_url}: {what} failed: {error}") from error

        return with_retries(f"file drop {self.shown_url}: {what}", attempt, self.retry)

    def _root_exists(self) -> bool:
        return bool(self._io(f"looking for {self.root}", lambda: self.fs.exists(self.root)))

    def _confined(self, batch_id: str, operation):
        """A local access below the root; a link or special file on the way refuses the batch."""
        try:
            return operation()
        except FileTooLarge:
            raise
        except UnsafeFile as error:
            raise VendorRefused(f"file drop {self.shown_url}: {error}; nothing of batch {batch_id} was imported (the drop "
                                "must hold plain files and folders: no symbolic or hard links, FIFOs or devices)") from None

    def _exists(self, batch_id: str, *parts: str) -> bool:
        path = self._path(batch_id, *parts)
        if self._local:  # a dangling link counts as found: it is then refused, not silently skipped
            return bool(self._io(f"looking for {path}",
                                 lambda: self._confined(batch_id, lambda: lexists(self.root, [batch_id, *parts]))))
        return bool(self._io(f"looking for {path}", lambda: self.fs.exists(path)))

    def _read(self, batch_id: str, *parts: str) -> bytes:
        """A file of the drop, read bounded by `max_labels_bytes` (FileTooLarge above it, nothing kept)."""
        path = self._path(batch_id, *parts)
        try:
            if self._local:
                return self._io(f"reading {path}", lambda: self._confined(
                    batch_id, lambda: read_regular(self.root, [batch_id, *parts], self.max_labels_bytes)))
            return self._io(f"reading {path}", lambda: self._read_remote(path))
        except FileTooLarge as error:  # refused unread (or the read stopped at the limit): nothing is kept
            raise VendorRefused(f"file drop {self.shown_url}: {error} for a file of the drop; nothing was imported "
                                "(split the batch, or raise FileDropVendor.max_labels_bytes)") from None

    def _read_remote(self, path: str) -> bytes:
        # An object store has no links or FIFOs; its size and the read are still bounded.
        limit = self.max_labels_bytes
        size = int(self.fs.size(path) or 0)
        if size > limit:
            raise FileTooLarge(f"{path} is {size:,} bytes, above the {limit:,}-byte limit", size, grew=False)
        with self.fs.open(path, "rb") as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise FileTooLarge(f"{path} grew above the {limit:,}-byte limit while being read", len(data), grew=True)
        return data

    def _write(self, batch_id: str, *parts: str, data: bytes, keep_existing: bool = False) -> None:
        path = self._path(batch_id, *parts)
        if self._local:  # temp file + rename inside directories opened without following links
            self._io(f"writing {path}", lambda: self._confined(
                batch_id, lambda: write_regular(self.root, [batch_id, *parts], data, keep_existing=keep_existing)))
        elif not (keep_existing and self._io(f"looking for {path}", lambda: self.fs.exists(path))):
            self._io(f"writing {path}", lambda: self.fs.pipe_file(path, data))  # one put replaces an object

    def _manifest(self, batch_id: str) -> dict[str, Any]:
        path = self._path(batch_id, "manifest.json")
        if not self._exists(batch_id, "manifest.json"):
            if not self._root_exists():  # the whole drop is missing: say so, not only "never exported"
                raise VendorError(f"batch {batch_id} was never exported to the file drop {self.shown_url}: its root "
                                  f"{self.root} does not exist (not mounted, or a wrong export.filedrop_url?)")
            raise VendorError(f"batch {batch_id} was never exported to the file drop {self.shown_url} (no {path})")
        try:
            manifest = json.loads(self._read(batch_id, "manifest.json"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise VendorRefused(f"{path} is not valid JSON: {error}") from error
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("batch_id") != batch_id:
            raise VendorRefused(f"{path} is not a {FORMAT} manifest for batch {batch_id}")
        return manifest

    # ---------------------------------------------------------------------------------------- export
    @staticmethod
    def render_tasks(batch: ExportBatch) -> bytes:
        """tasks.jsonl: one task per item; `features` holds the item's columns that may leave, in the
        schema's order (ids first where the source had them first), with their raw values."""
        items = batch.items
        ids = batch.checked_ids()
        priorities = batch.priorities()
        with_why, with_after = _context_fields(batch)
        lines = []
        for position in range(len(items)):
            row = items.iloc[position]
            task: dict[str, Any] = {
                "batch_id": batch.batch_id,
                "item_id": ids.iloc[position],
                "features": batch.values(position),
                "annotators_wanted": int(row["annotators_wanted"]) if "annotators_wanted" in items.columns else 1,
            }
            if "guess_shown" in items.columns:  # annotator context: the guess before, after the answer, or not at all
                guess = batch.guess(position)
                before = guess if guess is not None and guess.shown == SHOW_BEFORE else None
                after = guess if guess is not None and guess.shown == SHOW_AFTER else None
                task["model_guess"] = _guess_fields(before)
                if with_why:
                    task["why"] = before.why if before is not None else None
                if with_after:
                    task["after_answer"] = ({"model_guess": _guess_fields(after), **({"why": after.why} if with_why else {})}
                                            if after is not None else None)
            elif "predicted" in items.columns:
                task["model_guess"] = {"label": _json_value(row["predicted"]),
                                       "score": _json_value(row["confidence"]) if "confidence" in items.columns else None,
                                       "model_version": batch.model_version(position)}
            if "utility" in items.columns:
                task["utility"] = _json_value(row["utility"])
            task["priority"] = priorities[position]
            # Not sort_keys: `features` keeps the column order; the order of the keys is fixed by the code,
            # so the same batch renders to the same bytes (the manifest's checksum makes export idempotent).
            lines.append(json.dumps(task, default=str, allow_nan=False))
        return "".join(line + "\n" for line in lines).encode()

    def export_batch(self, batch: ExportBatch) -> ExportReceipt:
        tasks = self.render_tasks(batch)
        digest = _sha256(tasks)
        n_rows = tasks.count(b"\n")
        ref = self._path(batch.batch_id)
        if self._exists(batch.batch_id, "manifest.json"):
            manifest = self._manifest(batch.batch_id)
            if manifest.get("sha256") != digest:
                raise VendorError(
                    f"batch {batch.batch_id} was already exported to {ref} with other content "
                    f"(sha256 {manifest.get('sha256', '')[:12]} != {digest[:12]}); a batch id is never reused"
                )
            return ExportReceipt(batch.batch_id, self.name, int(manifest["row_count"]), created=False, vendor_ref=ref)
        # tasks first, manifest last: a manifest only exists next to a complete tasks.jsonl.
        self._write(batch.batch_id, "tasks.jsonl", data=tasks)
        _, with_after = _context_fields(batch)
        manifest = {
            "format": FORMAT,
            "batch_id": batch.batch_id,
            "tasks_file": "tasks.jsonl",
            "row_count": n_rows,
            "sha256": digest,
            "label_set": list(batch.label_set),
            "feature_columns": list(batch.feature_columns),
            "columns": [{"name": c, "role": batch.role(c)} for c in batch.feature_columns],
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if with_after:
            manifest["show_after_answer"] = ["after_answer"]  # task fields to reveal only once the item is answered
        self._write(batch.batch_id, "manifest.json", data=(json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        return ExportReceipt(batch.batch_id, self.name, n_rows, created=True, vendor_ref=ref)

    def tasks(self, batch_id: str) -> pd.DataFrame:
        """The exported tasks (checked against the manifest's checksum)."""
        manifest = self._manifest(batch_id)
        data = self._read(batch_id, str(manifest.get("tasks_file", "tasks.jsonl")))
        if _sha256(data) != manifest["sha256"] or data.count(b"\n") != manifest["row_count"]:
            raise VendorError(f"tasks.jsonl of batch {batch_id} no longer matches its manifest (changed after export)")
        return pd.DataFrame([json.loads(line) for line in data.splitlines() if line.strip()])

    # ----------------------------------------------------------------------------------------- fetch
    def _labels_file(self, batch_id: str) -> tuple[str, str] | None:
        found = [(f"labels.{ext}", ext) for ext in ("jsonl", "csv") if self._exists(batch_id, f"labels.{ext}")]
        if len(found) > 1:
            raise VendorRefused(f"batch {batch_id} has both labels.jsonl and labels.csv in the drop; keep one")
        return found[0] if found else None

    def _check_return_manifest(self, batch_id: str, manifest: dict[str, Any], raw: bytes, n_rows: int) -> None:
        path = self._path(batch_id, "labels.manifest.json")
        if not self._exists(batch_id, "labels.manifest.json"):
            return
        try:
            returned = json.loads(self._read(batch_id, "labels.manifest.json"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise VendorRefused(f"{path} is not valid JSON: {error}") from error
        if not isinstance(returned, dict):
            raise VendorRefused(f"{path} must hold a JSON object")
        if returned.get("batch_id", batch_id) != batch_id:
            raise VendorRefused(f"{path} is for batch {returned.get('batch_id')!r:.80}, not {batch_id!r}")
        if returned.get("tasks_sha256", manifest["sha256"]) != manifest["sha256"]:
            raise VendorRefused(f"the labels of batch {batch_id} answer another version of tasks.jsonl (tasks_sha256 differs)")
        if "sha256" in returned and returned["sha256"] != _sha256(raw):
            raise VendorRefused(f"the labels file of batch {batch_id} does not match labels.manifest.json "
                                "(sha256 differs: upload incomplete or file changed after the manifest)")
        if "row_count" in returned and _as_int(returned["row_count"]) != n_rows:
            raise VendorRefused(f"the labels file of batch {batch_id} has {n_rows} rows, "
                                f"labels.manifest.json says {returned['row_count']!r:.40}")

    def fetch_labels(self, batch_id: str) -> FetchedLabels:
        manifest = self._manifest(batch_id)
        found = self._labels_file(batch_id)
        if found is None:  # nothing returned yet
            return FetchedLabels(batch_id, pd.DataFrame(columns=FETCHED_COLUMNS), b"", "labels.jsonl")
        name, ext = found
        # Only a regular file is read, bounded; a link, FIFO, device or oversized file is VendorRefused
        # before any byte of it is read, so none of it reaches the archive, labels/raw or a quarantine.
        raw = self._read(batch_id, name)
        annotations, n_rows = (parse_labels_jsonl if ext == "jsonl" else parse_labels_csv)(raw, batch_id)
        self._check_return_manifest(batch_id, manifest, raw, n_rows)
        self._write(batch_id, "archive", f"labels-{_sha256(raw)[:16]}.{ext}", data=raw, keep_existing=True)
        return FetchedLabels(batch_id, annotations, raw, f"labels.{ext}")

    def status(self, batch_id: str) -> VendorStatus:
        tasks = self.tasks(batch_id)
        fetched = self.fetch_labels(batch_id).annotations
        ok = fetched[fetched["parse_error"].isna()] if len(fetched) else fetched
        answers = ok.groupby("item_id")["annotator_id"].nunique() if len(ok) else pd.Series(dtype=int)
        wanted = tasks.set_index("item_id")["annotators_wanted"] if len(tasks) else pd.Series(dtype=int)
        done = int((answers.reindex(wanted.index, fill_value=0) >= wanted).sum()) if len(wanted) else 0
        return VendorStatus(batch_id, len(tasks), done, extra={"answers": len(ok)})


def _guess_fields(guess: Guess | None) -> dict[str, Any]:
    """`model_guess`: label, score and model version, all null when there is no guess to show here."""
    if guess is None:
        return {"label": None, "score": None, "model_version": None}
    return {"label": guess.label, "score": guess.score, "model_version": guess.model_version}


def _context_fields(batch: ExportBatch) -> tuple[bool, bool]:
    """Whether the batch's tasks get a `why` field and an `after_answer` field (only when some item uses it, so a
    batch without annotator context renders as it always did)."""
    items = batch.items
    if "guess_shown" not in items.columns:
        return False, False
    with_why = "why" in items.columns and bool(items["why"].notna().any())
    with_after = bool((items["guess_shown"].astype(str) == SHOW_AFTER).any())
    return with_why, with_after


def _record(line_no: int, values: dict[str, Any], batch_id: str) -> dict[str, Any]:
    row = {k: values.get(k) for k in ANNOTATION_COLUMNS}
    row["line"] = line_no
    row["parse_error"] = None
    other_batch = values.get("batch_id")
    if other_batch not in (None, "", batch_id):
        row["parse_error"] = f"line {line_no}: batch_id {other_batch!r} is not this batch ({batch_id!r})"
    for key in LABEL_FIELDS:
        value = row[key]
        if isinstance(value, (dict, list)):
            row["parse_error"] = f"line {line_no}: {key} must be a string, got {type(value).__name__}"
        elif value is not None:
            row[key] = str(value)
    if row["annotation_id"] in (None, ""):
        row["annotation_id"] = f"{row['item_id']}:{row['annotator_id']}"
    return row


def _refuse_foreign_encoding(raw: bytes, name: str, batch_id: str) -> None:
    """UTF-16/32 text decodes as garbage line by line: refuse the whole file with the reason instead."""
    for bom, encoding in FOREIGN_BOMS:
        if raw.startswith(bom):
            raise VendorRefused(f"{name} of batch {batch_id} is {encoding} (byte-order mark); save it as UTF-8")
    if b"\x00" in raw[:4096]:
        raise VendorRefused(f"{name} of batch {batch_id} has NUL bytes (UTF-16 or binary?); save it as UTF-8 text")


def parse_labels_jsonl(raw: bytes, batch_id: str) -> tuple[pd.DataFrame, int]:
    """One answer per non-empty line; unparseable lines are kept with a `parse_error`.

    Lines are independent records, so one line that is not UTF-8 or is oversized is quarantined alone.
    """
    _refuse_foreign_encoding(raw, "labels.jsonl", batch_id)
    rows = []
    for line_no, raw_line in enumerate(raw.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        if not raw_line.strip():
            continue
        if len(raw_line) > MAX_LINE_BYTES:
            rows.append({**dict.fromkeys(ANNOTATION_COLUMNS), "line": line_no,
                         "parse_error": f"line {line_no}: {len(raw_line):,} bytes, above the {MAX_LINE_BYTES:,}-byte "
                                        f"limit for one answer: {raw_line[:80]!r}..."})
            continue
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as error:
            rows.append({**dict.fromkeys(ANNOTATION_COLUMNS), "line": line_no,
                         "parse_error": f"line {line_no}: not UTF-8 text (byte {raw_line[error.start]:#04x} at column "
                                        f"{error.start + 1}; latin-1?): {raw_line[:200]!r}"})
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as error:
            rows.append({**dict.fromkeys(ANNOTATION_COLUMNS), "line": line_no,
                         "parse_error": f"line {line_no}: not valid JSON ({error.msg}): {line[:200]!r}"})
            continue
        if not isinstance(values, dict):
            rows.append({**dict.fromkeys(ANNOTATION_COLUMNS), "line": line_no,
                         "parse_error": f"line {line_no}: expected a JSON object, got {type(values).__name__}"})
            continue
        rows.append(_record(line_no, values, batch_id))
    return pd.DataFrame(rows, columns=FETCHED_COLUMNS), len(rows)


def parse_labels_csv(raw: bytes, batch_id: str) -> tuple[pd.DataFrame, int]:
    """A header row with at least item_id, annotator_id, label; ragged rows get a `parse_error`."""
    _refuse_foreign_encoding(raw, "labels.csv", batch_id)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:  # a quoted CSV field may span lines: the file cannot be split safely
        line_no = raw[:error.start].count(b"\n") + 1
        raise VendorRefused(f"labels.csv of batch {batch_id} is not UTF-8 text (byte {raw[error.start]:#04x} on line "
                          f"{line_no}; latin-1?); save it as UTF-8 — nothing was imported") from error
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return pd.DataFrame(columns=FETCHED_COLUMNS), 0
    except csv.Error as error:
        raise VendorRefused(f"labels.csv of batch {batch_id} has an unreadable header: {error}") from error
    missing = [f for f in LABEL_FIELDS if f not in header]
    if missing:
        raise VendorRefused(f"labels.csv of batch {batch_id} lacks columns {missing}; the header must name "
                          f"{', '.join(LABEL_FIELDS)} (got {header})")
    rows = []
    line_no = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            line_no = reader.line_num
            rows.append({**dict.fromkeys(ANNOTATION_COLUMNS), "line": line_no, "parse_error": f"line {line_no}: {error}"})
            continue
        line_no = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            rows.append({**dict.fromkeys(ANNOTATION_COLUMNS), "line": line_no,
                         "parse_error": f"line {line_no}: {len(fields)} fields, header has {len(header)}: "
                                        f"{','.join(fields)[:200]!r}"})
            continue
        values = {h: (v.strip() or None) for h, v in zip(header, fields, strict=True)}
        rows.append(_record(line_no, values, batch_id))
    return pd.DataFrame(rows, columns=FETCHED_COLUMNS), len(rows)
