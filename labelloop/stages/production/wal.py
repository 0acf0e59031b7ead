"""Write-ahead log for served predictions: acknowledged means on disk.

In durable mode (`labelloop.apps.serving`) a request is answered only after its rows are appended to a
segment file under `predictions/_wal/` and fsynced. Requests that arrive together share one append +
fsync (group commit: a writer thread takes everything queued, waiting at most `commit_wait_seconds`
for requests still being scored). When a segment holds `flush_rows` rows, or its oldest row is
`flush_seconds` old, it is sealed and turned into ordinary log part(s)
`predictions/date=YYYY-MM-DD/part-<segment id>.parquet` (what capture reads), then deleted.

Crash safety:
- A SIGKILL at any moment loses no acknowledged row: an acknowledged row's record was fsynced.
- A restart never duplicates a row: a segment's part name is derived from the segment id, and a part
  that exists is not rewritten (`append_predictions` with a `part_name`). So a crash between writing a
  segment's part and deleting the segment, or between two days' parts, rewrites nothing.
- A record torn by the kill (length or CRC does not match) was never acknowledged; it is dropped, and
  its bytes are kept in `quarantine/serving-wal-<segment>.torn` with a warning.
- Each live segment is held under an exclusive `flock` by the process writing it (released by the
  kernel when that process dies), so recovery, run at server start or by anyone, only converts
  segments whose writer is gone, and two servers on one workspace never take each other's segment.

Record framing: <u32 payload length><u32 crc32(payload)><payload>. The first record of a segment is
the header (b"H" + JSON); each later record is one group (b"G" + <u32 meta length> + JSON meta +
float64 numeric block + float64 probabilities, little-endian, row-major). Two formats are read:

- format 2 (written): the header holds the workspace schema (`schema`, roles and types) and the class
  names. A group's meta holds per chunk its ids, model version and ts, plus `numeric` (the numeric
  columns, in the order of the float64 block: n_rows × len(numeric), NaN where missing) and `strings`
  ({column: one str-or-null per row} for categorical, text and id columns). Columns are listed per
  group: requests that carry id columns and requests that do not may share a group (null ids).
- format 1 (numeric-only, written before): the header holds `feature_columns` and `class_names`; the
  float64 block is n_rows × len(feature_columns). Segments a server of that version left behind are
  still recovered.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.core.io import _fsync_dir, write_bytes
from labelloop.prediction_log import log_features
from labelloop.schema import Schema, as_text
from labelloop.stages.production import append_predictions, predictions_frame
from labelloop.workspace import Workspace

logger = logging.getLogger(__name__)

WAL_DIR_NAME = "_wal"
SEGMENT_PREFIX = "seg-"
SEGMENT_SUFFIX = ".wal"
TEMP_SUFFIX = ".tmp"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
DEFAULT_COMMIT_WAIT_SECONDS = 0.002
_RECORD = struct.Struct("<II")  # payload length, crc32(payload)
_META_LENGTH = struct.Struct("<I")
_HEADER, _GROUP = b"H", b"G"


@dataclass(frozen=True)
class LogChunk:
    """Rows scored together: what one request adds to the log.

    `features` is either a DataFrame holding the schema's feature columns (and any of its id columns),
    or, for an all-numeric schema, a float64 matrix of the feature columns in order (the fast path).
    A frame whose numeric columns already have a numeric dtype is kept as given (categorical, text and
    id values are written as text by the log); any other is made canonical here (`log_features`), so a
    value that cannot be logged raises ValueError before the rows reach the write-ahead log, where it
    would fail the other requests of its group and every later attempt to write the segment's part.
    """

    schema: Schema
    features: pd.DataFrame | np.ndarray
    probas: np.ndarray    # one column per class, the schema's class order
    prediction_ids: list[str]
    model_version: str
    ts: datetime

    def __post_init__(self) -> None:
        if isinstance(self.features, pd.DataFrame):
            features: pd.DataFrame | np.ndarray = self.features
            if not _loggable_as_is(features, self.schema):
                features = log_features(features, self.schema)
        else:
            features = np.asarray(self.features, dtype=np.float64)
            if not self.schema.all_numeric or features.ndim != 2 or features.shape[1] != len(self.schema.feature_columns):
                raise ValueError(f"a feature matrix needs an all-numeric schema and {len(self.schema.feature_columns)} "
                                 f"columns; got shape {features.shape} (pass a DataFrame for categorical or text features)")
        if len(features) != len(self.prediction_ids):
            raise ValueError(f"{len(features)} feature rows for {len(self.prediction_ids)} prediction ids")
        object.__setattr__(self, "features", features)

    def __len__(self) -> int:
        return len(self.prediction_ids)

    def feature_frame(self) -> pd.DataFrame:
        if isinstance(self.features, pd.DataFrame):
            return self.features
        return pd.DataFrame(self.features, columns=self.schema.feature_columns)


def _loggable_as_is(frame: pd.DataFrame, schema: Schema) -> bool:
    """Every feature column there and every numeric one of a numeric dtype: the cheap check a request pays."""
    present = set(frame.columns)
    if not all(c in present for c in schema.feature_columns):
        return False
    numeric = set(schema.numeric_columns)
    return all(pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
               for name, dtype in zip(frame.columns, frame.dtypes, strict=True) if name in numeric)


def _features(chunks: Sequence[LogChunk]) -> pd.DataFrame:
    """The chunks' feature rows as one frame (a column some chunks lack is null in their rows)."""
    if all(isinstance(c.features, np.ndarray) for c in chunks):
        return pd.DataFrame(np.vstack([c.features for c in chunks]), columns=chunks[0].schema.feature_columns)
    if len(chunks) == 1:
        return chunks[0].feature_frame()
    return pd.concat([c.feature_frame() for c in chunks], ignore_index=True)


def log_frame(chunks: Sequence[LogChunk]) -> pd.DataFrame:
    """Chunks as prediction-log rows (`predictions_frame`), each row with its own ts and version."""
    schema = chunks[0].schema
    features = _features(chunks)
    ids = [i for c in chunks for i in c.prediction_ids]
    frame = predictions_frame(features, np.vstack([c.probas for c in chunks]), schema, chunks[0].model_version, ids,
                              ts=chunks[0].ts)
    if len(chunks) > 1:
        sizes = [len(c) for c in chunks]
        nanos = np.repeat(np.array([pd.Timestamp(c.ts).value for c in chunks], dtype=np.int64), sizes)
        frame["ts"] = pd.to_datetime(nanos, unit="ns", utc=True).astype(frame["ts"].dtype)
        versions = np.repeat(np.array([c.model_version for c in chunks], dtype=object), sizes)
        frame["model_version"] = pd.array(versions, dtype=frame["model_version"].dtype)
    return frame


def write_parts(workspace: Workspace, chunks: Sequence[LogChunk], part_name: str | None = None) -> list[Path]:
    """The chunks as log part(s), one per UTC day; with `part_name`, parts that exist are kept as they are."""
    by_day: dict[str, list[LogChunk]] = {}
    for chunk in chunks:
        by_day.setdefault(chunk.ts.strftime("%Y-%m-%d"), []).append(chunk)
    return [append_predictions(workspace, log_frame(by_day[day]), part_name=part_name) for day in sorted(by_day)]


def wal_dir(workspace: Workspace) -> Path:
    return workspace.predictions_dir / WAL_DIR_NAME


def _frame_record(payload: bytes) -> bytes:
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def _header(schema: Schema) -> bytes:
    return _HEADER + json.dumps({"format": FORMAT_VERSION, "schema": schema.to_json(), "class_names": schema.class_names,
                                 "feature_columns": schema.feature_columns}).encode()


def _text_values(values: pd.Series) -> list[str | None]:
    return [v if isinstance(v, str) else as_text(v) for v in values.to_numpy(dtype=object)]


def _encode_group(chunks: Sequence[LogChunk]) -> bytes:
    schema = chunks[0].schema
    n_rows = sum(len(c) for c in chunks)
    strings: dict[str, list[str | None]] = {}
    if all(isinstance(c.features, np.ndarray) for c in chunks):
        numeric = schema.feature_columns
        block = np.vstack([c.features for c in chunks])
    else:
        frames = [c.feature_frame() for c in chunks]
        present = set().union(*(f.columns for f in frames))
        columns = [c for c in schema.stored_columns if c in present]
        numeric = [c for c in columns if schema.column(c).role == "numeric"]
        block = np.full((n_rows, len(numeric)), np.nan)
        row = 0
        for frame in frames:
            if all(name in frame.columns for name in numeric):
                block[row:row + len(frame)] = frame[numeric].to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                for j, name in enumerate(numeric):
                    if name in frame.columns:
                        block[row:row + len(frame), j] = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
            row += len(frame)
        for name in columns:
            if name not in numeric:
                strings[name] = [v for f in frames for v in (_text_values(f[name]) if name in f.columns else [None] * len(f))]
    meta = json.dumps({"chunks": [{"ids": c.prediction_ids, "model_version": c.model_version, "ts": c.ts.isoformat()}
                                  for c in chunks], "numeric": numeric, "strings": strings},
                      separators=(",", ":")).encode()
    features = np.ascontiguousarray(block, dtype="<f8")
    probas = np.ascontiguousarray(np.vstack([c.probas for c in chunks]), dtype="<f8")
    return _GROUP + _META_LENGTH.pack(len(meta)) + meta + features.tobytes() + probas.tobytes()


def _decode_group(payload: bytes, schema: Schema, version: int = FORMAT_VERSION) -> list[LogChunk]:
    (meta_length,) = _META_LENGTH.unpack_from(payload, 1)
    start = 1 + _META_LENGTH.size
    meta = json.loads(payload[start:start + meta_length])
    n_rows = sum(len(c["ids"]) for c in meta["chunks"])
    numeric = list(schema.feature_columns) if version == 1 else list(meta["numeric"])
    strings: dict[str, list] = {} if version == 1 else dict(meta["strings"])
    n_classes = len(schema.class_names)
    offset = start + meta_length
    block = np.frombuffer(payload, dtype="<f8", count=n_rows * len(numeric), offset=offset).reshape(n_rows, len(numeric))
    offset += n_rows * len(numeric) * 8
    probas = np.frombuffer(payload, dtype="<f8", count=n_rows * n_classes, offset=offset).reshape(n_rows, n_classes)
    columns = [c for c in schema.stored_columns if c in set(numeric) | set(strings)]
    position = {name: j for j, name in enumerate(numeric)}
    chunks, row = [], 0
    for c in meta["chunks"]:
        n = len(c["ids"])
        features: pd.DataFrame | np.ndarray
        if version == 1 or (not strings and numeric == schema.feature_columns):
            features = block[row:row + n].astype(np.float64)
        else:
            features = pd.DataFrame({name: block[row:row + n, position[name]].astype(np.float64) if name in position
                                     else pd.Series(strings[name][row:row + n], dtype=object) for name in columns},
                                    columns=columns)
        chunks.append(LogChunk(schema, features, probas[row:row + n].astype(np.float64), list(c["ids"]),
                               str(c["model_version"]), datetime.fromisoformat(c["ts"])))
        row += n
    return chunks


def _read_records(data: bytes) -> tuple[list[bytes], int]:
    """The intact records of a segment and the offset where the intact prefix ends."""
    records, offset = [], 0
    while offset + _RECORD.size <= len(data):
        length, crc = _RECORD.unpack_from(data, offset)
        end = offset + _RECORD.size + length
        if end > len(data):
            break
        payload = data[offset + _RECORD.size:end]
        if not length or zlib.crc32(payload) != crc:  # zeros (a hole) are not an empty record
            break
        records.append(payload)
        offset = end
    return records, offset


# -- one segment ------------------------------------------------------------------------------------

@dataclass
class Segment:
    """An open segment: its file (held under an exclusive flock) and the chunks appended to it."""

    segment_id: str
    path: Path
    fd: int
    size: int
    chunks: list[LogChunk] = field(default_factory=list)
    rows: int = 0
    first_row_at: float | None = None  # monotonic time of the first row
    broken: bool = False  # an append failed and could not be undone: take no more records

    @classmethod
    def create(cls, directory: Path, schema: Schema) -> Segment:
        directory.mkdir(parents=True, exist_ok=True)
        segment_id = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
        path = directory / f"{SEGMENT_PREFIX}{segment_id}{SEGMENT_SUFFIX}"
        temp = path.with_name(path.name + TEMP_SUFFIX)
        # O_APPEND: after a failed append is cut back with ftruncate, the next record starts at the new end.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            # Locked before it has its real name, so recovery never sees it unlocked while it lives.
            fcntl.flock(fd, fcntl.LOCK_EX)
            record = _frame_record(_header(schema))
            _write_all(fd, record)
            os.fdatasync(fd)
            os.rename(temp, path)
            _fsync_dir(directory)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        return cls(segment_id, path, fd, len(record))

    @property
    def part_name(self) -> str:
        return f"part-{self.segment_id}.parquet"

    def append(self, chunks: Sequence[LogChunk]) -> None:
        """Append one group record and fsync it; on failure the file is cut back to its last intact record."""
        record = _frame_record(_encode_group(chunks))
        try:
            _write_all(self.fd, record)
            os.fdatasync(self.fd)
        except OSError:
            try:
                os.ftruncate(self.fd, self.size)
                os.fdatasync(self.fd)
            except OSError:
                self.broken = True  # a torn record stays at the end: recovery stops there, nothing acknowledged follows
            raise
        self.size += len(record)
        self.chunks.extend(chunks)
        self.rows += sum(len(c) for c in chunks)
        if self.first_row_at is None:
            self.first_row_at = time.monotonic()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # drops the flock
            self.fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# -- recovery ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecoveryReport:
    segments_recovered: int
    rows_recovered: int
    parts: list[str]
    torn_bytes: int          # bytes of unacknowledged, torn records dropped (kept in quarantine)
    segments_in_use: int     # held by a live writer: left alone


def recover(workspace: Workspace) -> RecoveryReport:
    """Turn segments whose writer is gone into log parts, then delete them; safe to run at any time."""
    directory = wal_dir(workspace)
    if not directory.is_dir():
        return RecoveryReport(0, 0, [], 0, 0)
    recovered = rows = torn = in_use = 0
    parts: list[str] = []
    for path in sorted(directory.iterdir()):
        is_segment = path.name.startswith(SEGMENT_PREFIX) and path.name.endswith(SEGMENT_SUFFIX)
        is_temp = path.name.startswith(SEGMENT_PREFIX) and path.name.endswith(SEGMENT_SUFFIX + TEMP_SUFFIX)
        if not (is_segment or is_temp) or not path.is_file() or path.is_symlink():
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue  # converted by its writer meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                in_use += 1
                continue
            try:
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    continue  # replaced since we opened it
            except FileNotFoundError:
                continue
            if is_temp:  # died before the segment had its name: no record was ever acknowledged from it
                path.unlink()
                continue
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read()
            segment_rows, segment_parts, segment_torn = _recover_segment(workspace, path, data)
            rows += segment_rows
            parts += segment_parts
            torn += segment_torn
            recovered += 1
            path.unlink()
        finally:
            os.close(fd)
    if recovered:
        _fsync_dir(directory)
        logger.warning("prediction log: recovered %d rows from %d write-ahead segment(s) into %d part(s)%s",
                       rows, recovered, len(parts), f"; {torn} bytes of unacknowledged torn records dropped" if torn else "")
    return RecoveryReport(recovered, rows, parts, torn, in_use)


def _recover_segment(workspace: Workspace, path: Path, data: bytes) -> tuple[int, list[str], int]:
    records, intact = _read_records(data)
    torn = len(data) - intact
    segment_id = path.name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)]
    if torn:
        # Bytes after the intact prefix were never acknowledged (a record is answered after its fsync).
        write_bytes(workspace.quarantine_dir / f"serving-wal-{segment_id}.torn", data[intact:])
        logger.warning("write-ahead segment %s: %d bytes of an unacknowledged torn record dropped (kept in quarantine)",
                       path.name, torn)
    if not records or records[0][:1] != _HEADER:
        return 0, [], torn
    header = json.loads(records[0][1:])
    version = header.get("format")
    if version not in READABLE_FORMATS:
        raise ValueError(f"write-ahead segment {path} has format {version!r}; this labelloop reads formats "
                         f"{', '.join(map(str, READABLE_FORMATS))}")
    if version == 1:
        schema = Schema.numeric(list(header["feature_columns"]), list(header["class_names"]))
    else:
        schema = Schema.from_json(header["schema"])
    chunks = [chunk for payload in records[1:] if payload[:1] == _GROUP for chunk in _decode_group(payload, schema, version)]
    if not chunks:
        return 0, [], torn
    written = write_parts(workspace, chunks, part_name=f"part-{segment_id}.parquet")
    return sum(len(c) for c in chunks), [str(p) for p in written], torn


# -- group commit ----------------------------------------------------------------------------------

@dataclass
class _Pending:
    chunk: LogChunk
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class GroupCommitLog:
    """One writer thread appends queued chunks to the current segment: one write + fsync per group.

    `begin()` before scoring a request and `commit(chunk)` (or `abandon()`) after: while requests are
    being scored the writer waits up to `commit_wait_seconds` for them to join the group. `commit`
    returns once the chunk is durable, or raises the OSError that kept it from being written.
    """

    def __init__(self, workspace: Workspace, schema: Schema, flush_rows: int,
                 commit_wait_seconds: float = DEFAULT_COMMIT_WAIT_SECONDS, on_full=None) -> None:
        if not 0 <= commit_wait_seconds <= 1:
            raise ValueError(f"commit_wait_seconds must be between 0 and 1, got {commit_wait_seconds}")
        self.workspace = workspace
        self.schema = schema
        self.flush_rows = int(flush_rows)
        self.commit_wait_seconds = float(commit_wait_seconds)
        self._on_full = on_full
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._scoring = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._segment: Segment | None = None
        self._sealed: list[Segment] = []
        self._segment_lock = threading.Lock()  # the current segment and the sealed list
        self._convert_lock = threading.Lock()  # one converter at a time
        self.groups_committed = 0
        self.rows_committed = 0
        self.rows_converted = 0
        self.parts_written: list[Path] = []

    # -- producers ------------------------------------------------------------------------------
    def begin(self) -> None:
        with self._cond:
            self._scoring += 1

    def abandon(self) -> None:
        with self._cond:
            self._scoring -= 1
            self._cond.notify_all()

    def commit(self, chunk: LogChunk) -> None:
        pending = _Pending(chunk)
        with self._cond:
            self._scoring -= 1
            if self._closed:
                raise RuntimeError("the prediction log is closed")
            self._pending.append(pending)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="labelloop-wal-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error

    # -- the writer -----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                deadline = time.monotonic() + self.commit_wait_seconds
                while self._scoring > 0 and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                group, self._pending = self._pending, []
            full = self._write_group(group)
            if full and self._on_full is not None:
                self._on_full()

    def _write_group(self, group: list[_Pending]) -> bool:
        chunks = [p.chunk for p in group]
        full = False
        try:
            with self._segment_lock:
                if self._segment is None or self._segment.broken:
                    if self._segment is not None:
                        self._seal_locked()
                    self._segment = Segment.create(wal_dir(self.workspace), self.schema)
                self._segment.append(chunks)
                self.groups_committed += 1
                self.rows_committed += sum(len(c) for c in chunks)
                if self._segment.rows >= self.flush_rows:
                    self._seal_locked()
                    full = True
        except Exception as error:  # disk full, I/O error, a bug: these requests fail, the writer goes on
            if not isinstance(error, OSError):
                logger.exception("prediction log writer failed")
            for p in group:
                p.error = error
        finally:
            for p in group:
                p.done.set()
        return full

    # -- sealing and conversion -------------------------------------------------------------------
    def _seal_locked(self) -> None:
        segment, self._segment = self._segment, None
        if segment is None:
            return
        if segment.rows:
            self._sealed.append(segment)
        else:  # nothing acknowledged in it
            segment.path.unlink(missing_ok=True)
            segment.release()

    def seal(self) -> None:
        with self._segment_lock:
            self._seal_locked()

    def oldest_row_age(self) -> float | None:
        segment = self._segment
        first = segment.first_row_at if segment is not None else None
        return None if first is None else time.monotonic() - first

    @property
    def unconverted_rows(self) -> int:
        """Rows acknowledged (durable in a segment) but not yet in a log part."""
        with self._segment_lock:
            current = self._segment.rows if self._segment is not None else 0
            return current + sum(s.rows for s in self._sealed)

    def has_sealed(self) -> bool:
        return bool(self._sealed)

    def convert_sealed(self) -> int:
        """Write each sealed segment as log part(s), then delete it; a failure leaves it for the next try."""
        written = 0
        with self._convert_lock:
            while True:
                with self._segment_lock:
                    if not self._sealed:
                        return written
                    segment = self._sealed[0]
                self.parts_written += write_parts(self.workspace, segment.chunks, part_name=segment.part_name)
                segment.path.unlink(missing_ok=True)
                segment.release()
                with self._segment_lock:
                    self._sealed.remove(segment)
                self.rows_converted += segment.rows
                written += segment.rows

    def close(self) -> int:
        """Commit what is queued, stop the writer, convert every segment; what cannot be written stays for recovery."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=60)
        self.seal()
        try:
            return self.convert_sealed()
        finally:
            with self._segment_lock:
                for segment in self._sealed:  # left on disk: the next start (or `recover`) converts them
                    segment.release()
