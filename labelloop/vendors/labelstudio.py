"""Label Studio vendor: one Label Studio project per batch, through label-studio-sdk.

Each task carries the item id, the allow-listed feature columns (shown as a table), the acquisition
score `utility` (a data column annotators can sort by in the data manager), `annotators_wanted`, and
the model's guess as a prediction with its score. Gold items look like any other task. The labelling
config is generated from the label set (one single-choice question).

Export is idempotent: the project is found by its title (`labelloop batch <batch_id>`) and only tasks
whose item id is not in it yet are imported, so an export that died halfway can be rerun. Fetching
downloads the project's JSON export (the raw payload, archived by the import stage) and returns the
answers of completed tasks only — a task is complete when it has at least `annotators_wanted`
non-skipped annotations; unfinished tasks are left for a later import.

Overlap: Label Studio community edition sets overlap per project, not per task, so a batch that asks
for overlap on some items is exported with `maximum_annotations = max(annotators_wanted)` for all
tasks; completion still follows each task's own `annotators_wanted`, and extra answers are returned.

The access token comes from LABEL_STUDIO_API_KEY (a personal access token; see infra/labelstudio.sh),
never from params.yaml, and is never logged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import pandas as pd

from labelloop.io import read_json, write_json
from labelloop.vendors.base import json_value as _json_value
from labelloop.vendors.base import ANNOTATION_COLUMNS, ExportBatch, ExportReceipt, FetchedLabels, Vendor, VendorError, VendorStatus

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
FROM_NAME = "label"
TO_NAME = "item"
FETCHED_COLUMNS = [*ANNOTATION_COLUMNS, "task_id", "parse_error"]
IMPORT_CHUNK = 500


def label_config(label_set: list[str]) -> str:
    """The labelling interface: item header, feature table, one single-choice question over the label set."""
    if not label_set:
        raise VendorError("cannot build a Label Studio config for an empty label set")
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in label_set)
    return (
        "<View>\n"
        '  <Header value="Item $item_id (acquisition score $utility)"/>\n'
        '  <Table name="features" value="$features"/>\n'
        f'  <Text name="{TO_NAME}" value="$item_id"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="true" required="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def project_title(batch_id: str) -> str:
    return f"labelloop batch {batch_id}"


def _api_errors() -> tuple[type[BaseException], ...]:
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    return (ApiError, httpx.HTTPError, OSError)


class LabelStudioVendor(Vendor):
    name = "label-studio"

    def __init__(self, url: str, api_key: str, state_dir: Path) -> None:
        if not api_key:
            raise VendorError(f"no Label Studio access token; set {TOKEN_ENV} (infra/labelstudio.sh token prints one)")
        self.url = url.rstrip("/")
        self._api_key = api_key
        self.state_dir = Path(state_dir)
        self._client: Any = None
        self._emails: dict[int, str] = {}

    def __repr__(self) -> str:  # never show the token
        return f"LabelStudioVendor(url={self.url!r}, state_dir={str(self.state_dir)!r})"

    @classmethod
    def from_env(cls, url: str, state_dir: Path) -> LabelStudioVendor:
        return cls(url, os.environ.get(TOKEN_ENV, ""), state_dir)

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                from label_studio_sdk import LabelStudio
            except ImportError as error:
                raise VendorError("label-studio-sdk is not installed; install labelloop[labelstudio]") from error
            self._client = LabelStudio(base_url=self.url, api_key=self._api_key)
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _api_errors() as error:
            detail = getattr(error, "body", None) or str(error)
            raise VendorError(f"Label Studio at {self.url}: {what} failed: {str(detail)[:500]}") from error

    # ----------------------------------------------------------------------------------------- state
    def _state_path(self, batch_id: str) -> Path:
        if not batch_id or "/" in batch_id or batch_id in (".", ".."):
            raise VendorError(f"batch id {batch_id!r} cannot name a state file")
        return self.state_dir / f"{batch_id}.json"

    def _state(self, batch_id: str) -> dict[str, Any] | None:
        return read_json(self._state_path(batch_id), default=None)

    def _find_project(self, title: str) -> Any | None:
        for project in self._call("listing projects", lambda: list(self.client.projects.list(title=title))):
            if project.title == title:
                return project
        return None

    def _project_tasks(self, project_id: int) -> dict[str, int]:
        """item_id -> task id of the tasks already in the project."""
        tasks = self._call("listing tasks", lambda: list(self.client.tasks.list(project=project_id, fields="all")))
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
        payloads = []
        for position, (_, row) in enumerate(items.iterrows()):
            data = {
                "item_id": ids.iloc[position],
                "batch_id": batch.batch_id,
                "utility": _json_value(row["utility"]) if "utility" in items.columns else None,
                "annotators_wanted": int(row["annotators_wanted"]) if "annotators_wanted" in items.columns else 1,
                "features": {c: _json_value(row[c]) for c in batch.feature_columns},
            }
            task: dict[str, Any] = {"data": data}
            guess = _json_value(row["predicted"]) if "predicted" in items.columns else None
            if guess is not None and str(guess) in batch.label_set:
                score = _json_value(row["confidence"]) if "confidence" in items.columns else None
                version = _json_value(row["model_version"]) if "model_version" in items.columns else None
                task["predictions"] = [{
                    "model_version": str(version or "labelloop"),
                    "score": float(score) if score is not None else None,
                    "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                                "value": {"choices": [str(guess)]}}],
                }]
            payloads.append(task)
        return payloads

    def export_batch(self, batch: ExportBatch) -> ExportReceipt:
        payloads = self.task_payloads(batch)
        wanted = max([p["data"]["annotators_wanted"] for p in payloads] or [1])
        title = project_title(batch.batch_id)
        state = self._state(batch.batch_id) or {}
        project = None
        if state.get("project_id") is not None:
            project = self._find_project(title)
            if project is not None and int(project.id) != int(state["project_id"]):
                project = None
        if project is None:
            project = self._find_project(title)
        if project is None:
            project = self._call(
                "creating the project",
                self.client.projects.create,
                title=title,
                description=f"labelloop batch {batch.batch_id}: {len(payloads)} items; sort by `utility` to label the most useful first.",
                label_config=label_config(list(batch.label_set)),
                maximum_annotations=int(wanted),
                show_skip_button=True,
            )
        state = {"batch_id": batch.batch_id, "project_id": int(project.id), "title": title,
                 "label_set": list(batch.label_set), "tasks": state.get("tasks", {})}
        write_json(self._state_path(batch.batch_id), state)  # remember the project before importing tasks

        existing = self._project_tasks(int(project.id))
        todo = [p for p in payloads if p["data"]["item_id"] not in existing]
        for start in range(0, len(todo), IMPORT_CHUNK):
            chunk = todo[start:start + IMPORT_CHUNK]
            self._call("importing tasks", self.client.projects.import_tasks, id=int(project.id), request=chunk, return_task_ids=True)
        if todo:
            existing = self._project_tasks(int(project.id))
        unknown = [p["data"]["item_id"] for p in payloads if p["data"]["item_id"] not in existing]
        if unknown:
            raise VendorError(f"Label Studio project {project.id} is missing tasks for items {unknown[:5]} after import")
        state["tasks"] = {p["data"]["item_id"]: existing[p["data"]["item_id"]] for p in payloads}
        state["annotators_wanted"] = {p["data"]["item_id"]: p["data"]["annotators_wanted"] for p in payloads}
        write_json(self._state_path(batch.batch_id), state)
        return ExportReceipt(batch.batch_id, self.name, len(payloads), created=bool(todo), vendor_ref=str(project.id))

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
            for known in self._call("listing users", lambda: list(self.client.users.list())):
                self._emails[int(known.id)] = str(known.email or known.username or known.id)
        return self._emails.get(user_id, f"user-{user_id}")

    def _download(self, project_id: int) -> bytes:
        chunks = self._call("downloading the export", self.client.projects.exports.download_sync,
                            id=project_id, export_type="JSON", download_all_tasks=True)
        try:
            return b"".join(chunks)
        except _api_errors() as error:
            raise VendorError(f"Label Studio at {self.url}: downloading the export failed: {error}") from error

    def parse_export(self, raw: bytes, state: dict[str, Any]) -> tuple[pd.DataFrame, int, int]:
        """(answers of completed tasks, n tasks, n completed) from a JSON export."""
        try:
            tasks = json.loads(raw)
        except json.JSONDecodeError as error:
            raise VendorError(f"Label Studio returned an export that is not JSON: {error}") from error
        if not isinstance(tasks, list):
            raise VendorError("Label Studio export is not a list of tasks")
        wanted_by_item = state.get("annotators_wanted", {})
        rows: list[dict[str, Any]] = []
        n_complete = 0
        for task in tasks:
            data = task.get("data") or {}
            item_id = data.get("item_id")
            item_id = None if item_id is None else str(item_id)
            answers = []
            for annotation in task.get("annotations") or []:
                if annotation.get("was_cancelled"):
                    continue  # skipped by the annotator: no answer
                choices = [r.get("value", {}).get("choices") for r in annotation.get("result") or []
                           if r.get("from_name") == FROM_NAME and r.get("type") == "choices"]
                choices = [c for c in choices if c]
                label, error = None, None
                if not choices:
                    error = f"annotation {annotation.get('id')} has no choice for '{FROM_NAME}'"
                elif len(choices) > 1 or len(choices[0]) != 1:
                    error = f"annotation {annotation.get('id')} has {sum(len(c) for c in choices)} choices, expected one"
                else:
                    label = str(choices[0][0])
                answers.append({"item_id": item_id, "annotator_id": self._annotator(annotation.get("completed_by")),
                                "label": label, "annotation_id": str(annotation.get("id")),
                                "task_id": int(task["id"]), "parse_error": error})
            wanted = int(wanted_by_item.get(item_id, data.get("annotators_wanted") or 1))
            if len({a["annotator_id"] for a in answers}) >= wanted:
                n_complete += 1
                rows.extend(answers)
        return pd.DataFrame(rows, columns=FETCHED_COLUMNS), len(tasks), n_complete

    def fetch_labels(self, batch_id: str) -> FetchedLabels:
        state = self._require_state(batch_id)
        raw = self._download(int(state["project_id"]))
        annotations, _, _ = self.parse_export(raw, state)
        return FetchedLabels(batch_id, annotations, raw, "labelstudio-export.json")

    def status(self, batch_id: str) -> VendorStatus:
        state = self._state(batch_id)
        if not state or "project_id" not in state:
            return VendorStatus(batch_id, 0, 0)
        _, n_tasks, n_complete = self.parse_export(self._download(int(state["project_id"])), state)
        return VendorStatus(batch_id, n_tasks, n_complete, extra={"project_id": state["project_id"], "url": self.url})
