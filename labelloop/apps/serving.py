"""Online serving: the champion behind an HTTP API, every prediction appended to the prediction log.

    POST /predict   {"rows": [{<feature>: value, ..., "prediction_id": "optional"}, ...]}
    GET  /health    model version, buffered rows, rows logged, unseen categorical values, last error
    GET  /schema    the workspace schema (roles, types, nullability), label set, request limits, an example request

One `PredictionService` does the work for both the HTTP app and `predict_log_in_process`:
validate the features against the workspace schema (the request model is generated from its roles:
numeric fields take numbers, categorical and text fields strings, null only where a column is
nullable), build the model's input in canonical types (`labelloop.schema.conform`), score with the
model `models:/NAME@champion` points at (a `LabelloopClassifier`: probabilities over the whole label
set), and log what was scored as rows in the prediction-log format
(`labelloop.stages.production.predictions_frame`, each row with its own ts and model version). Two modes:

- `durable` (the default of `serve`): a request is answered only once its rows are fsynced in a
  write-ahead segment (`labelloop.stages.production.wal`: group commit, one append + fsync for the requests
  that arrive together). Segments become ordinary log parts at `flush_rows` / `flush_seconds` and on
  shutdown; a restart recovers what a hard kill left. A SIGKILL loses no answered row.
- `buffered`: rows are kept in memory and written as one log part (`append_predictions`: temp name,
  fsync, rename) when the buffer holds `flush_rows` rows, when its oldest row is `flush_seconds` old,
  and on shutdown. A graceful shutdown loses nothing; a hard kill loses the unflushed buffer.

Request bodies larger than `max_body_bytes` are refused with 413 before they are read whole.

The champion alias is re-read every `alias_ttl_seconds` (a background thread while the app runs,
inline on the next call otherwise); a version whose signature or label set does not match the
workspace schema is refused and the running version keeps serving. Loading a version is cached
per process (`labelloop.adapters.tracking.load_model`).

FastAPI, uvicorn and MLflow are imported lazily; importing this module has no side effects. No
`from __future__ import annotations` here: FastAPI reads the endpoint annotations, which refer to
request models built at run time inside `create_app`.
"""

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelloop.columns import PREDICTION_ID
from labelloop.schema import ColumnSpec, Schema, as_text, conform
from labelloop.stages.production import append_predictions
from labelloop.stages.production import wal as prediction_wal
from labelloop.stages.production.wal import LogChunk, log_frame
from labelloop.workspace import Workspace

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_ROWS = 1_000
DEFAULT_FLUSH_SECONDS = 5.0
DEFAULT_ALIAS_TTL_SECONDS = 5.0
DEFAULT_MAX_ROWS_PER_REQUEST = 10_000
# 10,000 rows of 36 full-precision float features are ~10 MB of JSON; 200 MB bodies are refused.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DURABLE, BUFFERED = "durable", "buffered"
MODES = (DURABLE, BUFFERED)
DEFAULT_MODE = DURABLE
DEFAULT_COMMIT_WAIT_MS = prediction_wal.DEFAULT_COMMIT_WAIT_SECONDS * 1000
MAX_PREDICTION_ID_LENGTH = 128
MAX_ERRORS_REPORTED = 50
MAX_UNSEEN_EXAMPLES = 10  # unseen categorical values kept (and logged) per column


class InvalidRequest(ValueError):
    """Features that cannot be scored; `errors` name each bad field: [{"loc": [...], "msg": ..., "type": ...}]."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors[:MAX_ERRORS_REPORTED]
        shown = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in self.errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"invalid prediction request: {shown}{more}")


class NoChampion(RuntimeError):
    """The model has no usable `champion` version (yet)."""


class LogUnavailable(OSError):
    """Durable mode: the rows could not be appended to the prediction log, so the request is not answered."""


SINGLE_THREAD_MAX_ROWS = 2_000


@dataclass(frozen=True)
class LoadedModel:
    version: str
    model: Any   # the cached registry model (its own n_jobs): for large batches
    single: Any  # a copy predicting on one thread: small requests, run side by side by the server's threads

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        # XGBoost's OpenMP start-up dominates a one-row prediction (20x on a busy 2-core box).
        return (self.single if len(X) <= SINGLE_THREAD_MAX_ROWS else self.model).predict_proba(X)


def _single_threaded(model: Any) -> Any:
    """A copy of the model predicting on one thread (`LabelloopClassifier.set_n_jobs`)."""
    import copy

    single = copy.deepcopy(model)
    if hasattr(single, "set_n_jobs"):
        single.set_n_jobs(1)  # XGBoost's set_params also sets a fitted booster's nthread
    return single


@dataclass(frozen=True)
class Scored(LogChunk):
    """One scored request: what the log part and the response are built from."""

    @property
    def labels(self) -> list[str]:
        return np.asarray(self.schema.class_names, dtype=object)[self.probas.argmax(axis=1)].tolist()

    @property
    def confidence(self) -> np.ndarray:
        return self.probas.max(axis=1)

    def frame(self) -> pd.DataFrame:
        return log_frame([self])


def _log_features(X: pd.DataFrame, source: pd.DataFrame, schema: Schema) -> Any:
    """What a log chunk carries: the canonical features plus the schema's id columns `source` has (ids are
    logged with the row, never features); the float64 matrix when every feature is numeric and there are no ids."""
    ids = [c for c in schema.id_columns if c in source.columns]
    if not ids:
        return X.to_numpy(dtype=np.float64) if schema.all_numeric else X
    return pd.concat([source[ids].reset_index(drop=True), X], axis=1)


_NUMERIC_SIGNATURE_TYPES = ("double", "float", "long", "integer")


def _signature_type_problem(inputs: Any, schema: Schema) -> str | None:
    """Why a column signature's input types cannot take the schema's canonical values (None if they can)."""
    for spec in getattr(inputs, "inputs", []):
        name, kind = getattr(spec, "name", None), getattr(getattr(spec, "type", None), "name", None)
        if name is None or kind is None or name not in schema.feature_columns:
            continue
        role = schema.column(name).role
        if role == "numeric" and kind not in _NUMERIC_SIGNATURE_TYPES:
            return f"its signature types input {name!r} as {kind}; the schema has it numeric"
        if role in ("categorical", "text") and kind != "string":
            return f"its signature types input {name!r} as {kind}; the schema has it {role} (string)"
    return None


# -- validation --------------------------------------------------------------------------------

NOT_NULLABLE = "is not nullable in the workspace schema (init saw no missing value in it)"


def validate_features(features: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """The schema's feature columns in canonical types (`labelloop.schema.conform`), or InvalidRequest naming
    every bad field.

    Numeric features: finite numbers (not booleans); missing (None/NaN) only where the column is nullable.
    Categorical features: strings, or numbers read as text the way init read the source (3 and 3.0 → "3").
    Text features: strings only. Missing categorical/text values only where nullable. Columns not in the
    schema are ignored here (a frame may carry ids); the HTTP layer is stricter.
    """
    if not isinstance(features, pd.DataFrame):
        raise InvalidRequest([{"loc": ["rows"], "msg": f"expected a DataFrame, got {type(features).__name__}",
                               "type": "type_error"}])
    if len(features) == 0:
        raise InvalidRequest([{"loc": ["rows"], "msg": "no rows to score: send at least one row", "type": "too_short"}])
    if all(c in features.columns for c in schema.feature_columns):
        valid = _valid_fast(features, schema)
        if valid is not None:
            return valid
    errors: list[dict[str, Any]] = []
    missing = [c for c in schema.feature_columns if c not in features.columns]
    errors.extend({"loc": ["rows", c], "msg": "missing feature column", "type": "missing"} for c in missing)
    for spec in schema.features:
        if spec.name not in missing:
            errors.extend(_column_errors(features[spec.name], spec))
    if errors:
        raise InvalidRequest(errors)
    return _canonical(features, schema)


def _canonical(features: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    return conform(features[schema.feature_columns].reset_index(drop=True), schema)


def _valid_fast(features: pd.DataFrame, schema: Schema) -> pd.DataFrame | None:
    """The canonical frame when every column is already of its role's type and valid (the common case,
    checked column-wise without a per-cell loop in Python); None when the per-cell checks must run."""
    numeric = schema.numeric_columns
    if numeric:
        subset = features[numeric]
        if not all(pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in subset.dtypes):
            return None
        values = subset.to_numpy(dtype="float64", na_value=np.nan)
        nullable = np.array([schema.column(c).nullable for c in numeric])
        if not (np.isfinite(values) | (np.isnan(values) & nullable)).all():
            return None
        if schema.all_numeric:
            return pd.DataFrame(values, columns=numeric, index=pd.RangeIndex(len(features)))
    for spec in schema.features:
        if spec.role == "numeric":
            continue
        series = features[spec.name]
        kind = pd.api.types.infer_dtype(series, skipna=True)
        if kind not in ("string", "empty") or (not spec.nullable and series.isna().any()):
            return None
    return _canonical(features, schema)


def _column_errors(series: pd.Series, spec: ColumnSpec) -> list[dict[str, Any]]:
    """One error per bad cell of a feature column (at most MAX_ERRORS_REPORTED), located by row position."""
    name = spec.name
    if spec.role == "numeric" and pd.api.types.is_bool_dtype(series):
        return [{"loc": ["rows", name], "msg": "booleans are not numbers", "type": "float_type"}]
    errors: list[dict[str, Any]] = []
    values = series.to_numpy(dtype=object)
    for position, raw in enumerate(values):
        problem = _cell_problem(raw, spec)
        if problem is not None:
            errors.append({"loc": ["rows", position, name], "msg": problem[0], "type": problem[1]})
            if len(errors) >= MAX_ERRORS_REPORTED:
                break
    return errors


def _cell_problem(raw: object, spec: ColumnSpec) -> tuple[str, str] | None:
    """(message, type) when one value does not fit its column's role, else None."""
    is_missing = raw is None or raw is pd.NA or raw is pd.NaT or (isinstance(raw, (float, np.floating)) and math.isnan(raw))
    if is_missing:
        return None if spec.nullable else (f"a value is required: {spec.name} {NOT_NULLABLE}", "not_nullable")
    is_bool = isinstance(raw, (bool, np.bool_))
    is_number = isinstance(raw, (int, float, np.integer, np.floating)) and not is_bool
    if spec.role == "numeric":
        if is_number:
            return None if math.isfinite(float(raw)) else ("Input should be a finite number", "finite_number")  # type: ignore[arg-type]
        # In process, a number written as text (a frame read from CSV) is read as init read the source.
        parsed = pd.to_numeric(pd.Series([raw], dtype=object), errors="coerce").iloc[0] if isinstance(raw, str) else np.nan
        return None if np.isfinite(parsed) else ("Input should be a valid number", "float_type")
    if isinstance(raw, str):
        return None
    if spec.role == "categorical" and is_number:
        return None if math.isfinite(float(raw)) else ("Input should be a finite number", "finite_number")  # type: ignore[arg-type]
    expected = "a string (a category; numbers are read as text)" if spec.role == "categorical" else "a string"
    return f"Input should be {expected}", "string_type"


def _prediction_ids(ids: Sequence[str | None] | None, n_rows: int) -> list[str]:
    """Client ids passed through as given (uniqueness is capture's business); uuid4 hex for the rest."""
    if ids is None:
        return [uuid.uuid4().hex for _ in range(n_rows)]
    ids = list(ids)
    if len(ids) != n_rows:
        raise InvalidRequest([{"loc": [PREDICTION_ID], "msg": f"{len(ids)} prediction ids for {n_rows} rows",
                               "type": "value_error"}])
    out: list[str] = []
    errors: list[dict[str, Any]] = []
    for position, value in enumerate(ids):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out.append(uuid.uuid4().hex)
        elif not isinstance(value, str) or not value or len(value) > MAX_PREDICTION_ID_LENGTH:
            errors.append({"loc": ["rows", position, PREDICTION_ID],
                           "msg": f"prediction_id must be a non-empty string of at most {MAX_PREDICTION_ID_LENGTH} characters",
                           "type": "string_type"})
        else:
            out.append(value)
    if errors:
        raise InvalidRequest(errors)
    return out


# -- the service -------------------------------------------------------------------------------

class PredictionService:
    """Score with the champion and log every prediction; thread-safe; one per process and model."""

    def __init__(self, workspace: Workspace, model_name: str, flush_rows: int = DEFAULT_FLUSH_ROWS,
                 flush_seconds: float = DEFAULT_FLUSH_SECONDS, alias_ttl_seconds: float = DEFAULT_ALIAS_TTL_SECONDS,
                 mode: str = DEFAULT_MODE, commit_wait_ms: float = DEFAULT_COMMIT_WAIT_MS) -> None:
        if mode not in MODES:
            raise ValueError(f"serving mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0 <= commit_wait_ms <= 1000:
            raise ValueError(f"commit_wait_ms must be between 0 and 1000, got {commit_wait_ms}")
        if int(flush_rows) < 1:
            raise ValueError(f"flush_rows must be >= 1, got {flush_rows}")
        if not flush_seconds > 0:
            raise ValueError(f"flush_seconds must be > 0, got {flush_seconds}")
        if not alias_ttl_seconds > 0:
            raise ValueError(f"alias_ttl_seconds must be > 0, got {alias_ttl_seconds}")
        self.workspace = workspace.require()
        self.model_name = model_name
        self.schema = workspace.schema()
        self.flush_rows = int(flush_rows)
        self.flush_seconds = float(flush_seconds)
        self.alias_ttl_seconds = float(alias_ttl_seconds)
        self._model: LoadedModel | None = None
        self._refused: dict[str, str] = {}  # version -> why it may not serve
        self._checked_at = -math.inf
        self._buffer: list[pd.DataFrame] = []
        self._buffered_rows = 0   # rows in the buffer list (what triggers a flush)
        self._unwritten_rows = 0  # rows scored but not yet in a written part (buffer + a flush in progress)
        self._oldest: float | None = None
        self._lock = threading.Lock()          # the buffer
        self._flush_lock = threading.Lock()    # one writer at a time
        self._refresh_lock = threading.Lock()  # one alias lookup at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._rows_logged = 0
        self._parts_written: list[Path] = []
        self.last_error: str | None = None
        self.mode = mode
        # durable: every answered row is first fsynced in a write-ahead segment (group commit)
        self._wal = prediction_wal.GroupCommitLog(self.workspace, self.schema, self.flush_rows, commit_wait_ms / 1000,
                                                  on_full=self._wake.set) if mode == DURABLE else None
        self.recovery: prediction_wal.RecoveryReport | None = None
        # Categorical values init saw (None: open-ended); scored rows with another value are counted.
        self._known_categories = {c.name: pd.Index(c.categories) for c in self.schema.features
                                  if c.role == "categorical" and c.categories is not None}
        self._unseen_rows: dict[str, int] = {}
        self._unseen_examples: dict[str, list[str]] = {}

    @property
    def rows_logged(self) -> int:
        """Rows written to log parts by this service."""
        return self._rows_logged + (self._wal.rows_converted if self._wal else 0)

    @property
    def parts_written(self) -> list[Path]:
        return self._parts_written + (self._wal.parts_written if self._wal else [])

    # context manager: start/close
    def __enter__(self) -> "PredictionService":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- model --------------------------------------------------------------------------------
    def _refresh_locked(self) -> LoadedModel | None:
        """Read the champion alias now; load and switch to its version if it is new and usable."""
        from labelloop.adapters import tracking

        version = tracking.alias_version(self.workspace, self.model_name, tracking.CHAMPION)
        self._checked_at = time.monotonic()
        current = self._model
        if version is None or (current is not None and current.version == version) or version in self._refused:
            return current
        problem: str | None
        try:
            model = tracking.load_model(self.workspace, self.model_name, version)
        except ValueError as error:  # an older labelloop's model, classes outside the label set: refused, not retried
            model, problem = None, f"it cannot be loaded for this workspace: {error}"
        else:
            problem = self._incompatibility(version, model)
        if problem:
            self._refused[version] = problem
            self.last_error = f"version {version} refused: {problem}"
            logger.error("champion %s version %s not served: %s", self.model_name, version, problem)
            return current
        self._model = LoadedModel(version, model, _single_threaded(model))
        logger.info("serving %s version %s (was %s)", self.model_name, version, current.version if current else None)
        return self._model

    def _incompatibility(self, version: str, model: Any) -> str | None:
        classes = [str(c) for c in getattr(model, "classes_", [])]
        if classes != list(self.schema.class_names):
            return f"its label set {classes[:10]} differs from the workspace's {self.schema.class_names[:10]}"
        features = list(self.schema.feature_columns)
        names = getattr(model, "feature_names_in_", None)
        if names is None:  # the labelloop wrapper: the fitted pipeline knows the columns it reads
            names = getattr(getattr(model, "pipeline_", None), "feature_names_in_", None)
        if names is not None and sorted(map(str, names)) != sorted(features):
            model_only = sorted(set(map(str, names)) - set(features))[:5]
            schema_only = sorted(set(features) - set(map(str, names)))[:5]
            return f"its feature columns differ from the schema's (model only: {model_only}, schema only: {schema_only})"
        import mlflow

        signature = mlflow.models.get_model_info(f"models:/{self.model_name}/{version}").signature
        if signature is not None and signature.inputs is not None:
            inputs = signature.inputs.input_names()
            if sorted(inputs) != sorted(features):
                extra = sorted(set(inputs) - set(features))[:5]
                lacking = sorted(set(features) - set(inputs))[:5]
                return f"its signature inputs differ from the schema (signature only: {extra}, schema only: {lacking})"
            return _signature_type_problem(signature.inputs, self.schema)
        return None

    def current_model(self) -> LoadedModel:
        """The version to score with; re-reads the alias inline when stale and no poller runs."""
        stale = time.monotonic() - self._checked_at >= self.alias_ttl_seconds
        # Blocking only while there is nothing to serve; otherwise one caller looks up, the rest go on.
        if (stale and (self._model is None or not self._poller_running())
                and self._refresh_lock.acquire(blocking=self._model is None)):
            try:
                if time.monotonic() - self._checked_at >= self.alias_ttl_seconds:
                    self._refresh_guarded()
            finally:
                self._refresh_lock.release()
        model = self._model
        if model is None:
            raise NoChampion(f"model {self.model_name!r} has no usable 'champion' version; train and promote one first"
                             + (f" ({self.last_error})" if self.last_error else ""))
        return model

    def _refresh_safely(self) -> None:
        with self._refresh_lock:
            self._refresh_guarded()

    def _refresh_guarded(self) -> None:
        try:
            self._refresh_locked()
        except Exception as error:  # noqa: BLE001 — MLflow/SQL/network errors of any kind; the running model keeps serving
            self._checked_at = time.monotonic()
            self.last_error = f"alias lookup failed: {type(error).__name__}: {error}"
            logger.warning("could not re-read the champion alias of %s: %s", self.model_name, error)

    # -- scoring + log --------------------------------------------------------------------------
    def predict(self, features: pd.DataFrame, prediction_ids: Sequence[str | None] | None = None) -> "Scored":
        """Validate, score with the champion, log the rows; what was scored.

        Durable mode returns only once the rows are fsynced (an OSError if they could not be).
        """
        if self._wal is None:
            scored = self._score(features, prediction_ids)
            self._append(scored)
            return scored
        if self._closed:  # after shutdown: straight into a part of its own (fsynced before this returns)
            scored = self._score(features, prediction_ids)
            self._parts_written += prediction_wal.write_parts(self.workspace, [scored])
            self._rows_logged += len(scored)
            return scored
        self._wal.begin()  # the writer waits (briefly) for requests being scored, to commit them together
        try:
            scored = self._score(features, prediction_ids)
        except BaseException:
            self._wal.abandon()
            raise
        try:
            self._wal.commit(scored)
        except OSError as error:
            self.last_error = f"prediction log append failed, request not answered: {error}"
            raise LogUnavailable(f"the prediction could not be logged durably, nothing was answered; retry: {error}") from error
        if self._wal.has_sealed() and not self._poller_running():
            self._convert_safely()
        return scored

    def _score(self, features: pd.DataFrame, prediction_ids: Sequence[str | None] | None) -> "Scored":
        X = validate_features(features, self.schema)
        ids = _prediction_ids(prediction_ids, len(X))
        loaded = self.current_model()
        probas = np.asarray(loaded.predict_proba(X), dtype=np.float64)
        self._count_unseen(X)
        return Scored(self.schema, _log_features(X, features, self.schema), probas, ids, loaded.version, datetime.now(UTC))

    def _count_unseen(self, X: pd.DataFrame) -> None:
        """Count the rows whose categorical value init never saw (the model reads it as missing); warn on new values."""
        for name, known in self._known_categories.items():
            values = X[name]
            unseen = values.notna() & ~values.isin(known)
            n = int(unseen.sum())
            if not n:
                continue
            new_values: list[str] = []
            with self._lock:
                self._unseen_rows[name] = self._unseen_rows.get(name, 0) + n
                examples = self._unseen_examples.setdefault(name, [])
                for value in values[unseen].unique()[:MAX_UNSEEN_EXAMPLES]:
                    if len(examples) < MAX_UNSEEN_EXAMPLES and value not in examples:
                        examples.append(value)
                        new_values.append(value)
            if new_values:
                logger.warning("categorical feature %r: value(s) %s not seen at init; scored as missing (counted under "
                               "unseen_categories in /health)", name, new_values)

    @property
    def unseen_categories(self) -> dict[str, dict[str, Any]]:
        """Per categorical feature: rows scored with a value init never saw, and the first few such values."""
        with self._lock:
            return {name: {"rows": rows, "examples": list(self._unseen_examples.get(name, []))}
                    for name, rows in self._unseen_rows.items()}

    def _convert_safely(self) -> None:
        if self._wal is None:  # buffered mode: no write-ahead log
            return
        try:
            self._wal.convert_sealed()
        except OSError as error:  # the rows are durable in their segment; retried on the next tick and at shutdown
            self.last_error = f"log part write failed, rows kept in the write-ahead log: {error}"
            logger.error("prediction log part write failed (rows kept in the write-ahead log): %s", error)

    def _append(self, scored: "Scored") -> None:
        with self._lock:
            self._buffer.append(scored)
            self._buffered_rows += len(scored)
            self._unwritten_rows += len(scored)
            if self._oldest is None:
                self._oldest = time.monotonic()
            full = self._buffered_rows >= self.flush_rows
            closed = self._closed
        if closed or (full and not self._poller_running()):
            self.flush()
        elif full:
            self._wake.set()

    def _poller_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def buffered_rows(self) -> int:
        """Rows answered but not yet in a log part (durable mode: they are in the write-ahead log)."""
        return self._wal.unconverted_rows if self._wal else self._unwritten_rows

    @property
    def at_risk_rows(self) -> int:
        """Rows answered that a hard kill would lose: 0 in durable mode."""
        return 0 if self._wal else self._unwritten_rows

    def flush(self) -> int:
        """Write the buffered rows as new log part(s), one per UTC day; rows stay buffered if a write fails."""
        if self._wal is not None:
            self._wal.seal()
            try:
                return self._wal.convert_sealed()
            except OSError as error:
                self.last_error = f"log part write failed, rows kept in the write-ahead log: {error}"
                raise
        with self._flush_lock:
            with self._lock:
                chunks, self._buffer = self._buffer, []
                self._buffered_rows = 0
                self._oldest = None
            if not chunks:
                return 0
            by_day: dict[str, list[Scored]] = {}
            for chunk in chunks:
                by_day.setdefault(chunk.ts.strftime("%Y-%m-%d"), []).append(chunk)
            written = 0
            for day in sorted(by_day):
                group = by_day[day]
                try:
                    self._parts_written.append(append_predictions(self.workspace, log_frame(group)))
                except OSError as error:
                    unwritten = [c for d in sorted(by_day) if d >= day for c in by_day[d]]
                    n_unwritten = sum(len(c) for c in unwritten)
                    with self._lock:
                        self._buffer[:0] = unwritten
                        self._buffered_rows += n_unwritten
                        self._oldest = self._oldest if self._oldest is not None else time.monotonic()
                    self.last_error = f"log write failed, {n_unwritten} rows kept buffered: {error}"
                    raise
                rows = sum(len(c) for c in group)
                with self._lock:
                    self._unwritten_rows -= rows
                self._rows_logged += rows
                written += rows
            return written

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "PredictionService":
        """Load the champion (if any) and start the thread that polls the alias and flushes on time."""
        if self._thread is not None:
            return self
        # What a hard-killed server left in the write-ahead log becomes log parts before anything is served.
        try:
            self.recovery = prediction_wal.recover(self.workspace)
        except OSError as error:  # the segments stay as they are; the next start (or `recover`) takes them
            self.last_error = f"write-ahead log recovery failed, segments kept for the next start: {error}"
            logger.error("%s", self.last_error)
        self._refresh_safely()
        if self._model is None:
            logger.warning("model %s has no usable champion yet; /predict answers 503 until one is promoted", self.model_name)
        self._thread = threading.Thread(target=self._loop, name=f"labelloop-serving-{self.model_name}", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        tick = min(self.flush_seconds, self.alias_ttl_seconds, 1.0) / 2
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            if now - self._checked_at >= self.alias_ttl_seconds:
                self._refresh_safely()
            if self._wal is not None:
                age = self._wal.oldest_row_age()
                if age is not None and age >= self.flush_seconds:
                    self._wal.seal()
                if self._wal.has_sealed():
                    self._convert_safely()
                continue
            oldest = self._oldest
            if self._buffered_rows >= self.flush_rows or (oldest is not None and now - oldest >= self.flush_seconds):
                try:
                    self.flush()
                except OSError as error:  # kept buffered; retried on the next tick and at shutdown
                    logger.error("prediction log write failed (rows kept buffered): %s", error)

    def close(self) -> int:
        """Stop the poller and write everything buffered; later predictions are written at once."""
        with self._lock:
            self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._wal is not None:
            try:
                return self._wal.close()
            except OSError as error:  # durable in the write-ahead log: the next start recovers them
                self.last_error = f"log part write failed at shutdown, rows kept in the write-ahead log: {error}"
                logger.error("%s", self.last_error)
                return 0
        return self.flush()

    def health(self) -> dict[str, Any]:
        model = self._model
        return {
            "status": "ok" if model is not None else "no_model",
            "model_name": self.model_name,
            "model_version": model.version if model else None,
            "mode": self.mode,
            "buffered_rows": self.buffered_rows,
            "at_risk_rows": self.at_risk_rows,
            "wal_groups_committed": self._wal.groups_committed if self._wal else None,
            "recovered_rows": self.recovery.rows_recovered if self.recovery else 0,
            "rows_logged": self.rows_logged,
            "parts_written": len(self.parts_written),
            "alias_checked_seconds_ago": None if math.isinf(self._checked_at) else round(time.monotonic() - self._checked_at, 3),
            "refused_versions": dict(self._refused),
            "unseen_categories": self.unseen_categories,
            "last_error": self.last_error,
        }


def predict_log_in_process(workspace: Workspace, model_name: str, features_df: pd.DataFrame,
                           prediction_ids: Sequence[str | None] | None = None) -> pd.DataFrame:
    """Score `features_df` with the champion and append it to the log, exactly as POST /predict does.

    Returns the logged rows (prediction-log format). The part is written before this returns.
    Raises InvalidRequest (a ValueError naming the bad fields) or NoChampion.
    """
    # The part is written (fsync + rename) before this returns: no write-ahead log needed.
    service = PredictionService(workspace, model_name, flush_rows=max(len(features_df), 1), mode=BUFFERED)
    try:
        scored = service.predict(features_df, prediction_ids)
    finally:
        service.close()
    return scored.frame()


def score_for_log(workspace: Workspace, model_name: str, features_df: pd.DataFrame,
                  prediction_ids: Sequence[str | None] | None = None) -> pd.DataFrame:
    """POST /predict's validation and champion scoring, returning the log rows without writing them.

    For callers that write the part themselves under a name of their own (the simulated production
    traffic names parts by row range, so a rerun writes each part once).
    """
    service = PredictionService(workspace, model_name, flush_rows=max(len(features_df), 1), mode=BUFFERED)
    X = validate_features(features_df, service.schema)
    loaded = service.current_model()
    probas = np.asarray(loaded.predict_proba(X), dtype=np.float64)
    ids = _prediction_ids(prediction_ids, len(X))
    logged = _log_features(X, features_df, service.schema)
    return Scored(service.schema, logged, probas, ids, loaded.version, datetime.now(UTC)).frame()


# -- HTTP ------------------------------------------------------------------------------------------

def _error_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    detail = []
    for error in errors[:MAX_ERRORS_REPORTED]:
        loc = [p for p in error.get("loc", []) if p != "body"]
        row = next((p for p in loc[1:2] if isinstance(p, int)), None) if loc[:1] == ["rows"] else None
        field = next((p for p in reversed(loc) if isinstance(p, str)), "body")
        detail.append({"loc": loc, "field": field, "row": row, "msg": error.get("msg", ""), "type": error.get("type", "")})
    first = detail[0] if detail else {"field": None, "msg": "invalid request"}
    where = f"{first['field']}" + (f" (row {first['row']})" if first.get("row") is not None else "")
    return {"error": f"invalid request: {where}: {first['msg']}", "detail": detail,
            "errors_total": len(errors)}


def _categorical_value(value: object) -> str:
    """A categorical field's value: a string as sent, or a JSON number read as text the way init read the source."""
    from pydantic_core import PydanticCustomError

    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("string_type", "Input should be a valid string (a category; numbers are read as text)")
    if not math.isfinite(value):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    return str(as_text(value))


def _field_description(spec: ColumnSpec) -> str:
    null = "; null allowed (or leave the field out)" if spec.nullable else "; required, not null"
    if spec.role == "numeric":
        return f"numeric feature: a finite JSON number{null}"
    if spec.role == "text":
        return f"text feature: a string{null}"
    seen = f" init saw {len(spec.categories)} values, e.g. {spec.categories[:5]}" if spec.categories is not None else ""
    return (f"categorical feature: a string (a number is read as text: 3 -> \"3\"); a value init did not see is scored as "
            f"missing and counted{null}.{seen}")


def _request_models(schema: Schema, max_rows: int):
    """The /predict body model, one typed field per feature from the schema's roles.

    numeric: a strict finite number (ints accepted; strings, booleans rejected); categorical: a string or a
    number (read as text); text: a string. Nullable features accept null and may be left out; the others
    are required and not null. Unknown fields are rejected.
    """
    from typing import Annotated, NotRequired

    from pydantic import AllowInfNan, ConfigDict, Field, PlainValidator, Strict, StringConstraints, WithJsonSchema, create_model
    from typing_extensions import TypedDict

    by_role: dict[str, Any] = {
        "numeric": Annotated[float, Strict(), AllowInfNan(False)],
        "categorical": Annotated[str, PlainValidator(_categorical_value),
                                 WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}]})],
        "text": Annotated[str, Strict()],
    }
    fields: dict[str, Any] = {}
    for spec in schema.features:
        kind = by_role[spec.role]
        if spec.nullable:
            fields[spec.name] = NotRequired[Annotated[kind | None, Field(description=_field_description(spec))]]
        else:
            fields[spec.name] = Annotated[kind, Field(description=_field_description(spec))]
    read_as_text = by_role["categorical"]
    for spec in schema.columns:  # ids: not features, but logged with the row when sent
        if spec.role == "id":
            fields[spec.name] = NotRequired[Annotated[read_as_text | None, Field(
                description="id column: not a feature; logged with the prediction when given (a string, or a number "
                            "read as text)")]]
    if PREDICTION_ID in fields:
        raise ValueError(f"a feature or id column may not be called {PREDICTION_ID!r}")
    prediction_id = StringConstraints(strict=True, min_length=1, max_length=MAX_PREDICTION_ID_LENGTH)
    fields[PREDICTION_ID] = NotRequired[Annotated[str, prediction_id]]
    # Built at run time from the schema: a type checker cannot follow either model.
    Row = TypedDict("Row", fields)  # type: ignore[misc]
    Row.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    rows: Any = Annotated[list[Row], Field(
        min_length=1, max_length=max_rows,
        description="Rows to score: every feature column typed by its role in the workspace schema (see /schema); "
                    "optional prediction_id.")]
    return create_model("PredictRequest", __config__=ConfigDict(extra="forbid"), rows=(rows, ...))


def _request_frame(rows: list[dict[str, Any]], schema: Schema) -> pd.DataFrame:
    """Validated request rows as a frame in canonical types (a left-out nullable field is missing), with the id
    columns some row gave."""
    features = schema.feature_columns
    ids = [c for c in schema.id_columns if any(c in row for row in rows)]
    if schema.all_numeric and not ids:  # one float matrix: None (a null or left-out nullable field) becomes NaN
        return pd.DataFrame(np.array([[row.get(c) for c in features] for row in rows], dtype=np.float64), columns=features)
    numeric = set(schema.numeric_columns)
    # object Series: pandas would otherwise infer its string dtype, whose missing value is NaN, not None
    return pd.DataFrame({c: np.array([row.get(c) for row in rows], dtype=np.float64) if c in numeric
                         else pd.Series([row.get(c) for row in rows], dtype=object) for c in ids + features})


def _example_row(schema: Schema) -> dict[str, Any]:
    example: dict[str, Any] = {}
    for spec in schema.features:
        if spec.role == "numeric":
            example[spec.name] = 0.0
        elif spec.role == "categorical":
            example[spec.name] = spec.categories[0] if spec.categories else "a category"
        else:
            example[spec.name] = "some text"
    return example


def _explain_nulls(errors: list[dict[str, Any]], schema: Schema) -> list[dict[str, Any]]:
    """pydantic's "Input should be a valid number/string" for a null in a non-nullable feature, said plainly."""
    features = set(schema.feature_columns)
    out = []
    for error in errors:
        loc = error.get("loc", ())
        field = loc[-1] if loc else None
        if error.get("input", ...) is None and field in features and error.get("type") in ("float_type", "string_type"):
            out.append({**error, "msg": f"null is not allowed: {field} {NOT_NULLABLE}", "type": "not_nullable"})
        else:
            out.append(error)
    return out


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, decided before the body is read whole.

    A Content-Length over the limit is refused before any of the body is read. A body without one
    (chunked) is read here up to the limit (so memory stays bounded) and refused as soon as it passes
    it; a body within the limit is handed on to the app unchanged.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            # The server (h11/httptools) has checked it is a valid number and never delivers more bytes than it says.
            if int(length) > self.max_bytes:
                await self._too_large(send, f"{int(length)} bytes")
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._too_large(send, f"more than {self.max_bytes} bytes (chunked)")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send, size: str) -> None:
        payload = json.dumps({"error": f"request body too large: {size}; the limit is {self.max_bytes} bytes "
                                       f"(max_body_bytes); send fewer rows per request",
                              "max_body_bytes": self.max_bytes}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def create_app(workspace: Workspace, model_name: str, flush_rows: int = DEFAULT_FLUSH_ROWS,
               flush_seconds: float = DEFAULT_FLUSH_SECONDS, alias_ttl_seconds: float = DEFAULT_ALIAS_TTL_SECONDS,
               max_rows_per_request: int = DEFAULT_MAX_ROWS_PER_REQUEST, mode: str = DEFAULT_MODE,
               commit_wait_ms: float = DEFAULT_COMMIT_WAIT_MS, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
    """The FastAPI app; its lifespan loads the champion, runs the poller and flushes the log on shutdown."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    if int(max_body_bytes) < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    service = PredictionService(workspace, model_name, flush_rows, flush_seconds, alias_ttl_seconds,
                                mode=mode, commit_wait_ms=commit_wait_ms)
    schema = service.schema
    PredictRequest = _request_models(schema, max_rows_per_request)
    class_names = list(schema.class_names)

    @asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            rows = service.buffered_rows
            await run_in_threadpool(service.close)
            logger.info("prediction log flushed on shutdown (%d rows); %d rows logged in all", rows, service.rows_logged)

    app = FastAPI(title="labelloop serving", version="1", lifespan=lifespan,
                  description=f"Model `{model_name}@champion` of workspace {workspace.root}; every prediction is logged.")
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return JSONResponse(_error_body(_explain_nulls(list(exc.errors()), schema)), status_code=422)

    @app.exception_handler(InvalidRequest)
    async def _invalid_frame(request, exc: InvalidRequest):
        return JSONResponse(_error_body(exc.errors), status_code=422)

    @app.exception_handler(NoChampion)
    async def _no_model(request, exc: NoChampion):
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.exception_handler(LogUnavailable)
    async def _log_unavailable(request, exc: LogUnavailable):
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.post("/predict", summary="Score rows with the champion; each row is logged")
    def predict(body: PredictRequest):  # type: ignore[valid-type]  # sync: runs in the thread pool
        rows = body.rows  # type: ignore[attr-defined]
        X = _request_frame(rows, schema)
        ids = [row.get(PREDICTION_ID) for row in rows]
        scored = service.predict(X, ids if any(i is not None for i in ids) else None)
        version = scored.model_version
        predictions = [
            {PREDICTION_ID: pid, "label": label, "probabilities": dict(zip(class_names, p, strict=True)),
             "confidence": conf, "model_version": version}
            for pid, label, p, conf in zip(scored.prediction_ids, scored.labels, scored.probas.tolist(),
                                           scored.confidence.tolist(), strict=True)
        ]
        return JSONResponse({"model_name": model_name, "model_version": version, "predictions": predictions})

    @app.get("/health", summary="Serving version, buffered and logged rows")
    def health():
        body = service.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/schema", summary="What /predict accepts")
    def schema_endpoint():
        example = _example_row(schema)
        return {**schema.to_json(), "model_name": model_name, "model_version": service.health()["model_version"],
                "max_rows_per_request": max_rows_per_request, "max_body_bytes": int(max_body_bytes), "mode": mode,
                "prediction_id": "optional string per row, at most "
                f"{MAX_PREDICTION_ID_LENGTH} characters; uuid4 hex when absent",
                "request_example": {"rows": [example]}}

    return app


def run_server(workspace: Workspace, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
               flush_rows: int = DEFAULT_FLUSH_ROWS, flush_seconds: float = DEFAULT_FLUSH_SECONDS,
               alias_ttl_seconds: float = DEFAULT_ALIAS_TTL_SECONDS, max_rows_per_request: int = DEFAULT_MAX_ROWS_PER_REQUEST,
               log_level: str = "info", mode: str = DEFAULT_MODE, commit_wait_ms: float = DEFAULT_COMMIT_WAIT_MS,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Serve until SIGINT/SIGTERM; then finish in-flight requests and flush the log (`labelloop serve`)."""
    import uvicorn

    workspace.require()
    name = model_name or workspace.params().train.model_name
    app = create_app(workspace, name, flush_rows=flush_rows, flush_seconds=flush_seconds,
                     alias_ttl_seconds=alias_ttl_seconds, max_rows_per_request=max_rows_per_request, mode=mode,
                     commit_wait_ms=commit_wait_ms, max_body_bytes=max_body_bytes)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1, timeout_graceful_shutdown=30)
