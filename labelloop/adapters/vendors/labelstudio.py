"""Label Studio vendor: one Label Studio project per batch, through label-studio-sdk.

What annotators see (`label_config`, generated per batch from the label set and the roles of the
columns that may leave): the item id under a header with its priority rank, each text column as its
own text block under a header naming the column, the other columns (ids, numbers, categories) as one
table in the schema's column order, and one single-choice question. Each task's data carries
`utility` (the acquisition score, a number) and `priority` (1 = the most useful item of the batch);
every project gets a Data Manager tab, "labelloop: by priority", that shows both as numbers and orders
the tasks by priority, so the labelling stream started from it takes the most useful items first. The
model's guess is a prediction (a pre-annotation) with its score and the registered model version that
made it; the project's model version is the batch's, so Label Studio pre-fills the answer with it.
Gold items look like any other task (docs/vendors.md, "What an export sends").

Annotator context (`export.context`, `export.show_guess`): a guess shown with the item is the
pre-annotation and, under guess+why, a "Why the model thinks ..." block lists the features pushing toward
and away from it. Label Studio has no way to reveal something only once a task is answered, so a guess
meant for after the answer (`show_guess: after_answer`) is not sent: neither pre-filled nor in the task
data (which the Data Manager would show).

Export is idempotent: the project is found by its title (`labelloop batch <batch_id>`) and only tasks
whose item id is not in it yet are imported, so an export that died halfway can be rerun. Fetching
downloads the project's JSON export (the raw payload, archived by the import stage) and returns the
answers of completed tasks only — a task is complete when it has at least `annotators_wanted`
non-skipped annotations; unfinished tasks are left for a later import.

Overlap: Label Studio community edition sets overlap per project, not per task, so a batch that asks
for overlap on some items is exported with `maximum_annotations = max(annotators_wanted)` for all
tasks; completion still follows each task's own `annotators_wanted`, and extra answers are returned.

Faults: every request has a timeout (`retry.timeout_seconds`, default 30 s) and the SDK's own
retries are off, so one layer decides: an unreachable server, a 5xx or a timeout makes the whole
export / fetch (idempotent) run again a bounded number of times with backoff (`retry`), then
fail with one `VendorUnavailable` naming the URL and the fault. A 4xx (bad token, unknown project)
fails at once.

The access token is an argument: the entry points read LABEL_STUDIO_API_KEY (a personal access token;
`infra/labelstudio.sh token` prints one) or a Prefect Secret block (`labelloop.tasks.vendor`), never
params.yaml, and it is never logged.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import pandas as pd

from labelloop.adapters.vendors.base import (
    ANNOTATION_COLUMNS,
    SHOW_BEFORE,
    ExportBatch,
    ExportReceipt,
    FetchedLabels,
    Guess,
    Vendor,
    VendorError,
    VendorStatus,
    VendorUnavailable,
)
from labelloop.adapters.vendors.base import json_value as _json_value
from labelloop.core.io import read_json, write_json
from labelloop.core.redact import redact_uri
from labelloop.core.retry import DEFAULT_RETRY, RetryPolicy, with_retries
from labelloop.explain import why_text

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
FROM_NAME = "label"
TO_NAME = "item"
TABLE_NAME = "columns"
WHY_NAME = "why"
NO_WHY = "(no model explanation for this item)"
FETCHED_COLUMNS = [*ANNOTATION_COLUMNS, "task_id", "parse_error"]
IMPORT_CHUNK = 500
# Statuses worth another attempt: the server is overloaded, restarting or timed out at its proxy.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Label Studio's Table tag pages its rows by 10 (antd's default page size) and sorts a dict's keys as
# text; the table is therefore a list of rows (kept in order) of at most TABLE_ROWS rows, the columns
# laid out in up to TABLE_PAIRS side-by-side (column, value) pairs, read top to bottom then left to right.
# Up to TABLE_ROWS x TABLE_PAIRS = 40 columns fit on one page; more make the table page.
TABLE_ROWS = 10
TABLE_PAIRS = 4
MISSING = "(missing)"  # how a missing value is shown to annotators
VIEW_TITLE = "labelloop: by priority"


def text_key(position: int) -> str:
    """The task-data key of the `position`-th text column (column names may hold characters that
    Label Studio's `$variables` cannot, so the data keys are positional; the header names the column)."""
    return f"text_{position}"


def _header_text(text: str) -> str:
    """`text` safe as a Header's literal value: a `$` would start a Label Studio variable."""
    return text.replace("$", "\uff04")


def label_config(label_set: list[str], text_columns: Sequence[str] = (), table: bool = True, why: bool = False) -> str:
    """The labelling interface for one batch.

    The item id (with its priority rank), one text block per text column (`$text_<k>`, under a header
    naming the column), one table of the other columns (`$table`, see `table_rows`) when there are any,
    with `why` a block saying why the model guesses what it guesses (`$why_title`, `$why`), and one
    single-choice question over the label set.
    """
    if not label_set:
        raise VendorError("cannot build a Label Studio config for an empty label set")
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in label_set)
    parts = [
        "<View>",
        '  <Header value="Item (priority rank $priority of $n_items; 1 = the most useful to label)" size="5"/>',
        f'  <Text name="{TO_NAME}" value="$item_id"/>',
    ]
    for position, column in enumerate(text_columns):
        parts.append(f"  <Header value={quoteattr(_header_text(str(column)))} size=\"5\"/>")
        parts.append(f'  <Text name="{text_key(position)}" value="${text_key(position)}"/>')
    if table:
        parts.append(f'  <Table name="{TABLE_NAME}" value="$table"/>')
    if why:
        parts.append('  <Header value="$why_title" size="6"/>')
        parts.append(f'  <Text name="{WHY_NAME}" value="$why"/>')
    parts += [
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="true" required="true">',
        choices,
        "  </Choices>",
        "</View>",
    ]
    return "\n".join(parts) + "\n"


def _shown(value: Any) -> Any:
    """A JSON value as shown in the table: numbers and strings as they are, a missing value spelled out."""
    return MISSING if value is None else value


def table_rows(values: dict[str, Any]) -> list[dict[str, Any]]:
    """One item's columns as the rows of Label Studio's Table, in `values`' order, on one page.

    `len(values)` columns make `ceil(n / pairs)` rows of `pairs` (column, value) pairs, with
    `pairs = min(TABLE_PAIRS, ceil(n / TABLE_ROWS))`; column k is in pair `k // rows`, row `k % rows`.
    The pairs' keys differ only by zero-width spaces, so every pair's header reads "column | value".
    """
    names = list(values)
    if not names:
        return []
    pairs = min(TABLE_PAIRS, max(1, math.ceil(len(names) / TABLE_ROWS)))
    n_rows = math.ceil(len(names) / pairs)
    rows = []
    for r in range(n_rows):
        row: dict[str, Any] = {}
        for p in range(pairs):
            k = p * n_rows + r
            suffix = "\u200b" * p
            row["column" + suffix] = names[k] if k < len(names) else ""
            row["value" + suffix] = _shown(values[names[k]]) if k < len(names) else ""
        rows.append(row)
    return rows


def batch_has_why(batch: ExportBatch) -> bool:
    """Whether some item of the batch shows an explanation with its guess (the project then has the why block)."""
    return any(g is not None and g.shown == SHOW_BEFORE and g.why is not None
               for g in (batch.guess(p) for p in range(len(batch.items))))


def why_block(guess: Guess | None) -> tuple[str, str]:
    """The why block's header and text for one task: why the model thinks what it guesses, or that it says nothing."""
    if guess is None or guess.why is None:
        return "Model explanation", NO_WHY
    score = f" (confidence {guess.score:.2f})" if guess.score is not None else ""
    return _header_text(f"Why the model thinks {guess.label!r}{score}"), why_text(guess.why)


def _priority_view() -> dict[str, Any]:
    """The Data Manager tab that lists a batch's tasks by priority, utility and priority shown as numbers."""
    return {"title": VIEW_TITLE, "ordering": ["tasks:data.priority"],
            "columnsDisplayType": {"tasks:data.priority": "Number", "tasks:data.utility": "Number"}}


def project_title(batch_id: str, namespace: str | None = None) -> str:
    """The project's title is its idempotency key; the workspace id keeps two workspaces' batches apart."""
    return f"labelloop {namespace} batch {batch_id}" if namespace else f"labelloop batch {batch_id}"


def _api_errors() -> tuple[type[BaseException], ...]:
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    return (ApiError, httpx.HTTPError, OSError)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _malformed(item_id: str | None, task_id: int | None, reason: str) -> dict[str, Any]:
    return {"item_id": item_id, "annotator_id": None, "label": None, "annotation_id": None, "task_id": task_id,
            "parse_error": reason}


class LabelStudioVendor(Vendor):
    name = "label-studio"

    def __init__(self, url: str, api_key: str, state_dir: Path, namespace: str | None = None,
                 retry: RetryPolicy = DEFAULT_RETRY) -> None:
        if not api_key:
            raise VendorError(f"no Label Studio access token; set {TOKEN_ENV} (infra/labelstudio.sh token prints one)")
        self.url = url.rstrip("/")
        self._api_key = api_key
        self.state_dir = Path(state_dir)
        self.namespace = namespace
        self._client: Any = None
        self._emails: dict[int, str] = {}
        self.policy = retry
        # The SDK's own retries (5xx only, 1-60 s sleeps) are switched off: labelloop.core.retry is the one layer.
        self._options: dict[str, Any] = {"max_retries": 0}

    def __repr__(self) -> str:  # never show the token
        return f"LabelStudioVendor(url={self.shown_url!r}, state_dir={str(self.state_dir)!r})"

    @property
    def shown_url(self) -> str:
        """The server's URL for messages, reports and status: any credential in it redacted."""
        return redact_uri(self.url)

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                from label_studio_sdk import LabelStudio
            except ImportError as error:
                raise VendorError("label-studio-sdk is not installed; install labelloop[labelstudio]") from error
            # An explicit timeout: a server that accepts the connection and never answers must not hang the stage.
            self._client = LabelStudio(base_url=self.url, api_key=self._api_key, timeout=self.policy.timeout_seconds)
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, request_options=self._options, **kwargs)
        except _api_errors() as error:
            raise self._fault(what, error) from error

    def _fault(self, what: str, error: BaseException) -> VendorError:
        """One line naming the server and the fault; transient faults as `VendorUnavailable`."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        if isinstance(error, ApiError):
            status = int(error.status_code or 0)
            body = error.body if isinstance(error.body, str) else json.dumps(error.body, default=str) if error.body else ""
            detail, transient = f"HTTP {status}{': ' + body[:300] if body else ''}", status in TRANSIENT_STATUS
        elif isinstance(error, httpx.TimeoutException):
            detail, transient = f"no answer within {self.policy.timeout_seconds:g} s ({type(error).__name__})", True
        elif isinstance(error, httpx.ConnectError):
            detail, transient = f"cannot connect ({error})", True
        else:
            detail = f"{type(error).__name__}: {error}"
            transient = isinstance(error, (httpx.TransportError, ConnectionError, TimeoutError))
        error_type = VendorUnavailable if transient else VendorError
        return error_type(f"Label Studio at {self.shown_url}: {what} failed: {detail[:500]}")

    # ----------------------------------------------------------------------------------------- state
    def _state_path(self, batch_id: str) -> Path:
        if not batch_id or "/" in batch_id or batch_id in (".", ".."):
            raise VendorError(f"batch id {batch_id!r} cannot name a state file")
        return self.state_dir / f"{batch_id}.json"

    def _state(self, batch_id: str) -> dict[str, Any] | None:
        return read_json(self._state_path(batch_id), default=None)

    def _find_project(self, title: str) -> Any | None:
        for project in self._call("listing projects", lambda **o: list(self.client.projects.list(title=title, **o))):
            if project.title == title:
                return project
        return None

    def _project_tasks(self, project_id: int) -> dict[str, int]:
        """item_id -> task id of the tasks already in the project."""
        tasks = self._call("listing tasks", lambda **o: list(self.client.tasks.list(project=project_id, fields="all", **o)))
        mapping: dict[str, int] = {}
        for task in tasks:
            item_id = (task.data or {}).get("item_id")
            if item_id is not None:
                mapping.setdefault(str(item_id), int(task.id))
        return mapping

    # ---------------------------------------------------------------------------------------- export
    def task_payloads(self, batch: ExportBatch) -> list[dict[str, Any]]:
        items = batch.items
        ids = batch.checked_ids()
        priorities = batch.priorities()
        text_columns, table_columns = batch.text_columns, batch.table_columns
        with_why = batch_has_why(batch)
        payloads = []
        for position in range(len(items)):
            row = items.iloc[position]
            values = batch.values(position)
            data: dict[str, Any] = {
                "item_id": ids.iloc[position],
                "batch_id": batch.batch_id,
                "utility": _json_value(row["utility"]) if "utility" in items.columns else None,
                "priority": priorities[position],
                "n_items": len(items),
                "annotators_wanted": int(row["annotators_wanted"]) if "annotators_wanted" in items.columns else 1,
            }
            for k, column in enumerate(text_columns):
                text = values[column]
                data[text_key(k)] = MISSING if text is None else str(text)
            if table_columns:
                data["table"] = table_rows({c: values[c] for c in table_columns})
            task: dict[str, Any] = {"data": data}
            guess = batch.guess(position)
            # Only a guess shown with the item: Label Studio cannot reveal one after the answer (show_guess
            # after_answer), so such a guess is not sent at all — neither pre-filled nor in the task data.
            shown = guess if guess is not None and guess.shown == SHOW_BEFORE else None
            if with_why:
                data["why_title"], data["why"] = why_block(shown)
            if shown is not None:
                prediction: dict[str, Any] = {
                    "score": shown.score,
                    "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                                "value": {"choices": [shown.label]}}],
                }
                if shown.model_version is not None:
                    prediction["model_version"] = shown.model_version
                task["predictions"] = [prediction]
            payloads.append(task)
        return payloads

    @staticmethod
    def batch_model_version(payloads: list[dict[str, Any]]) -> str | None:
        """The model version most of the batch's guesses come from (review and easy items may carry an
        older one); Label Studio pre-fills answers with the predictions of the project's model version."""
        versions = Counter(p["model_version"] for task in payloads for p in task.get("predictions", [])
                           if p.get("model_version"))
        return max(sorted(versions), key=versions.__getitem__) if versions else None

    def export_batch(self, batch: ExportBatch) -> ExportReceipt:
        payloads = self.task_payloads(batch)
        # The whole export is idempotent (project found by title, only missing tasks imported), so a
        # retry after a fault halfway through creates nothing twice.
        return with_retries(f"Label Studio export of batch {batch.batch_id}", lambda: self._export(batch, payloads), self.policy)

    def _export(self, batch: ExportBatch, payloads: list[dict[str, Any]]) -> ExportReceipt:
        wanted = max([p["data"]["annotators_wanted"] for p in payloads] or [1])
        title = project_title(batch.batch_id, self.namespace)
        state = self._state(batch.batch_id) or {}
        project = None
        if state.get("project_id") is not None:
            project = self._find_project(title)
            if project is not None and int(project.id) != int(state["project_id"]):
                project = None
        if project is None:
            project = self._find_project(title)
        if project is None:
            version = self.batch_model_version(payloads)
            extra = {"model_version": version} if version is not None else {}
            project = self._call(
                "creating the project",
                self.client.projects.create,
                title=title,
                description=f"labelloop batch {batch.batch_id}: {len(payloads)} items. Label from the "
                            f"'{VIEW_TITLE}' tab to take the most useful items first (priority 1 = most useful).",
                label_config=label_config(list(batch.label_set), batch.text_columns, table=bool(batch.table_columns),
                                          why=batch_has_why(batch)),
                maximum_annotations=int(wanted),
                show_skip_button=True,
                show_collab_predictions=True,
                **extra,
            )
        state = {"batch_id": batch.batch_id, "project_id": int(project.id), "title": title,
                 "label_set": list(batch.label_set), "tasks": state.get("tasks", {})}
        write_json(self._state_path(batch.batch_id), state)  # remember the project before importing tasks

        self._ensure_priority_view(int(project.id))
        existing = self._project_tasks(int(project.id))
        todo = [p for p in payloads if p["data"]["item_id"] not in existing]
        for start in range(0, len(todo), IMPORT_CHUNK):
            chunk = todo[start:start + IMPORT_CHUNK]
            self._call("importing tasks", self.client.projects.import_tasks,
                       id=int(project.id), request=chunk, return_task_ids=True)
        if todo:
            existing = self._project_tasks(int(project.id))
        unknown = [p["data"]["item_id"] for p in payloads if p["data"]["item_id"] not in existing]
        if unknown:
            raise VendorError(f"Label Studio project {project.id} is missing tasks for items {unknown[:5]} after import")
        state["tasks"] = {p["data"]["item_id"]: existing[p["data"]["item_id"]] for p in payloads}
        state["annotators_wanted"] = {p["data"]["item_id"]: p["data"]["annotators_wanted"] for p in payloads}
        write_json(self._state_path(batch.batch_id), state)
        return ExportReceipt(batch.batch_id, self.name, len(payloads), created=bool(todo), vendor_ref=str(project.id))

    def _ensure_priority_view(self, project_id: int) -> None:
        """The project's "by priority" Data Manager tab, created once (found by its title on a rerun)."""
        views = self._call("listing Data Manager tabs", lambda **o: list(self.client.views.list(project=project_id, **o)))
        if any((view.data or {}).get("title") == VIEW_TITLE for view in views):
            return
        self._call("creating the Data Manager tab", self.client.views.create, project=project_id, data=_priority_view())

    # ----------------------------------------------------------------------------------------- fetch
    def _require_state(self, batch_id: str) -> dict[str, Any]:
        state = self._state(batch_id)
        if not state or "project_id" not in state:
            raise VendorError(f"batch {batch_id} was never exported to Label Studio (no {self._state_path(batch_id)})")
        return state

    def _annotator(self, user: Any) -> str:
        if isinstance(user, dict):
            return str(user.get("email") or user.get("id"))
        if user is None:
            return ""
        user_id = int(user)
        if user_id not in self._emails:
            for known in self._call("listing users", lambda **o: list(self.client.users.list(**o))):
                self._emails[int(known.id)] = str(known.email or known.username or known.id)
        return self._emails.get(user_id, f"user-{user_id}")

    def _download(self, project_id: int) -> bytes:
        chunks = self._call("downloading the export", self.client.projects.exports.download_sync,
                            id=project_id, export_type="JSON", download_all_tasks=True)
        try:
            return b"".join(chunks)
        except _api_errors() as error:  # the download streams: a fault can come while reading the body
            raise self._fault("downloading the export", error) from error

    def parse_export(self, raw: bytes, state: dict[str, Any]) -> tuple[pd.DataFrame, int, int]:
        """(answers of completed tasks, n tasks, n completed) from a JSON export.

        A payload that is not a JSON list is one `VendorError`; inside it, a task or annotation of the
        wrong shape becomes a row with a `parse_error` (quarantined by the import), never a crash.
        """
        try:
            tasks = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise VendorError(f"Label Studio at {self.shown_url} returned an export that is not JSON: {error}") from error
        if not isinstance(tasks, list):
            raise VendorError(f"Label Studio at {self.shown_url} returned an export that is not a list of tasks "
                              f"(got {type(tasks).__name__})")
        wanted_by_item = state.get("annotators_wanted", {})
        rows: list[dict[str, Any]] = []
        n_complete = 0
        for position, task in enumerate(tasks):
            if not isinstance(task, dict):
                rows.append(_malformed(None, None, f"task #{position} is a {type(task).__name__}, not an object"))
                continue
            task_id = _as_int(task.get("id"))
            data = task.get("data")
            if not isinstance(data, dict):
                data = {}
            item_id = data.get("item_id")
            if isinstance(item_id, (dict, list)):
                rows.append(_malformed(None, task_id, f"task {task_id}: item_id is a {type(item_id).__name__}"))
                continue
            item_id = None if item_id is None else str(item_id)
            annotations = task.get("annotations") or []
            if not isinstance(annotations, list):
                rows.append(_malformed(item_id, task_id,
                                       f"task {task_id}: annotations is a {type(annotations).__name__}, not a list"))
                continue
            answers = [self._answer(annotation, item_id, task_id) for annotation in annotations
                       if not (isinstance(annotation, dict) and annotation.get("was_cancelled"))]  # skipped: no answer
            wanted = _as_int(wanted_by_item.get(item_id, data.get("annotators_wanted"))) or 1
            if len({a["annotator_id"] for a in answers}) >= wanted:  # unfinished tasks wait for a later import
                n_complete += 1
                rows.extend(answers)
        return pd.DataFrame(rows, columns=FETCHED_COLUMNS), len(tasks), n_complete

    def _answer(self, annotation: Any, item_id: str | None, task_id: int | None) -> dict[str, Any]:
        """One annotation as an answer row; a malformed one carries its `parse_error`."""
        if not isinstance(annotation, dict):
            return _malformed(item_id, task_id, f"task {task_id}: an annotation is a {type(annotation).__name__}, not an object")
        annotation_id = str(annotation.get("id"))
        user = annotation.get("completed_by")
        if not (user is None or isinstance(user, dict) or _as_int(user) is not None):
            return _malformed(item_id, task_id, f"annotation {annotation_id}: completed_by {str(user)[:80]!r} is not a user")
        results = annotation.get("result") or []
        if not isinstance(results, list):
            return _malformed(item_id, task_id, f"annotation {annotation_id}: result is a {type(results).__name__}, not a list")
        choices = [r["value"].get("choices") for r in results
                   if isinstance(r, dict) and r.get("from_name") == FROM_NAME and r.get("type") == "choices"
                   and isinstance(r.get("value"), dict)]
        choices = [c for c in choices if c]
        label, error = None, None
        if not choices:
            error = f"annotation {annotation_id} has no choice for '{FROM_NAME}'"
        elif len(choices) > 1 or not isinstance(choices[0], list) or len(choices[0]) != 1:
            n_choices = sum(len(c) if isinstance(c, list) else 1 for c in choices)
            error = f"annotation {annotation_id} has {n_choices} choices, expected one"
        elif not isinstance(choices[0][0], str):
            error = f"annotation {annotation_id}: the choice is a {type(choices[0][0]).__name__}, not a label"
        else:
            label = choices[0][0]
        return {"item_id": item_id, "annotator_id": self._annotator(user), "label": label,
                "annotation_id": annotation_id, "task_id": task_id, "parse_error": error}

    def fetch_labels(self, batch_id: str) -> FetchedLabels:
        state = self._require_state(batch_id)
        return with_retries(f"Label Studio fetch of batch {batch_id}", lambda: self._fetch(batch_id, state), self.policy)

    def _fetch(self, batch_id: str, state: dict[str, Any]) -> FetchedLabels:
        raw = self._download(int(state["project_id"]))
        annotations, _, _ = self.parse_export(raw, state)
        return FetchedLabels(batch_id, annotations, raw, "labelstudio-export.json")

    def status(self, batch_id: str) -> VendorStatus:
        state = self._state(batch_id)
        if not state or "project_id" not in state:
            return VendorStatus(batch_id, 0, 0)
        _, n_tasks, n_complete = with_retries(f"Label Studio status of batch {batch_id}",
                                              lambda: self.parse_export(self._download(int(state["project_id"])), state),
                                              self.policy)
        return VendorStatus(batch_id, n_tasks, n_complete, extra={"project_id": state["project_id"], "url": self.shown_url})
