"""Read a workspace's model registry without importing MLflow: for the commands a person waits on.

`labelloop status` and `labelloop lineage` only read aliases, tags, a model version and its run. MLflow's
own client costs seconds to import (its SQLAlchemy store alone ~2 s), so these readers go to the store
directly, read-only:

- the workspace's SQLite store (`mlflow.db`, or a `sqlite:` tracking URI): `sqlite3`, opened read-only;
- a tracking server (`http(s)://`): MLflow's REST API (`/api/2.0/mlflow/...`) with httpx, basic auth
  from the URI or MLFLOW_TRACKING_USERNAME/PASSWORD, a bearer MLFLOW_TRACKING_TOKEN;
- anything else (a Postgres URI, say): MLflow's client, through `labelloop.adapters.tracking`.

Writes always go through MLflow (`labelloop.adapters.tracking`); nothing here changes the store. The rules
over what is read (the champion history, resolving a version, the versions a user may name) are defined here
once; `labelloop.adapters.tracking` applies them through `MlflowReader`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from labelloop.adapters.tracking import (
    CHAMPION,
    CHAMPION_HISTORY_TAG,
    PREVIOUS,
    ChampionChange,
    TrackingUnavailable,
    UnknownModelVersion,
)
from labelloop.core.redact import redact_text, redact_uri
from labelloop.workspace import Workspace

DELETED_STAGE = "Deleted_Internal"  # MLflow's mark of a soft-deleted model version in its SQL store
DEFAULT_MLFLOW_WORKSPACE = "default"  # MLflow 3's `workspace` column; single-tenant stores use only this


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    run_id: str
    experiment_id: str
    run_name: str | None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest value per key


class RegistryReader(Protocol):
    def registered_model(self, name: str) -> RegisteredModel | None: ...

    def model_version(self, name: str, version: str) -> ModelVersion | None: ...

    def versions(self, name: str) -> list[str]: ...

    def run(self, run_id: str) -> Run | None: ...


# -- SQLite ------------------------------------------------------------------------------------------
def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:` tracking URI (both forms `labelloop.workspace.sqlite_uri` writes);
    None for any other URI."""
    scheme, _, rest = tracking_uri.partition("://")
    if scheme.split("+")[0] != "sqlite" or not rest.startswith("/"):
        return None
    rest = rest[1:]
    if rest.startswith("file:"):  # sqlite+pysqlite:///file:<percent-encoded path>?uri=true
        return Path(unquote(rest[len("file:"):].split("?", 1)[0]))
    return Path(rest.split("?", 1)[0])


class SqliteReader:
    """MLflow's SQL schema, read with sqlite3 in read-only mode (never creates or migrates the file)."""

    def __init__(self, path: Path):
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._columns: dict[str, set[str]] = {}

    def _connect(self) -> sqlite3.Connection | None:
        if self._connection is None:
            if not self.path.exists():
                return None
            self._connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        return self._connection

    def _has(self, table: str, column: str) -> bool:
        connection = self._connect()
        if connection is None:
            return False
        if table not in self._columns:
            self._columns[table] = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        return column in self._columns[table]

    def _rows(self, query: str, *args: Any) -> list[tuple]:
        """Rows of `query`; `{ws}` becomes a workspace filter on stores that have MLflow 3's column."""
        connection = self._connect()
        if connection is None or not self._has("registered_models", "name"):
            return []  # a store MLflow never initialised: nothing registered
        table = query.split(" FROM ", 1)[1].split()[0]
        scoped = self._has(table, "workspace")
        query = query.replace("{ws}", "AND workspace = ?" if scoped else "")
        if scoped:
            args = (*args, DEFAULT_MLFLOW_WORKSPACE)
        try:
            return list(connection.execute(query, args))
        except sqlite3.OperationalError as error:  # locked past the timeout, or a schema MLflow changed
            raise TrackingUnavailable(f"reading the MLflow store {self.path}: {error}") from error

    def registered_model(self, name: str) -> RegisteredModel | None:
        if not self._rows("SELECT name FROM registered_models WHERE name = ? {ws}", name):
            return None
        tags = dict(self._rows("SELECT key, value FROM registered_model_tags WHERE name = ? {ws}", name))
        aliases = {alias: str(version) for alias, version in
                   self._rows("SELECT alias, version FROM registered_model_aliases WHERE name = ? {ws}", name)}
        return RegisteredModel(name, tags, aliases)

    def model_version(self, name: str, version: str) -> ModelVersion | None:
        rows = self._rows("SELECT run_id FROM model_versions WHERE name = ? AND version = ? "
                          "AND current_stage != ? {ws}", name, int(version), DELETED_STAGE)
        if not rows:
            return None
        tags = dict(self._rows("SELECT key, value FROM model_version_tags WHERE name = ? AND version = ? {ws}",
                               name, int(version)))
        return ModelVersion(name, str(version), rows[0][0], tags)

    def versions(self, name: str) -> list[str]:
        return [str(v) for (v,) in self._rows("SELECT version FROM model_versions WHERE name = ? AND current_stage != ? "
                                              "{ws} ORDER BY version", name, DELETED_STAGE)]

    def run(self, run_id: str) -> Run | None:
        rows = self._rows("SELECT run_uuid, experiment_id, name FROM runs WHERE run_uuid = ?", run_id)
        if not rows:
            return None
        run_uuid, experiment_id, run_name = rows[0]
        metrics = {key: float("nan") if is_nan else float(value) for key, value, is_nan in
                   self._rows("SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", run_id)}
        return Run(run_uuid, str(experiment_id), run_name,
                   dict(self._rows("SELECT key, value FROM tags WHERE run_uuid = ?", run_id)),
                   dict(self._rows("SELECT key, value FROM params WHERE run_uuid = ?", run_id)), metrics)


# -- REST --------------------------------------------------------------------------------------------
class RestReader:
    """MLflow's REST API 2.0 (what MLflow's own client calls), with httpx."""

    def __init__(self, tracking_uri: str, environ: Mapping[str, str] | None = None, timeout: float = 30.0,
                 transport: Any = None):
        environ = os.environ if environ is None else environ
        parts = urlsplit(tracking_uri)
        self.base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")
        self.shown = redact_uri(tracking_uri)
        username = unquote(parts.username) if parts.username else environ.get("MLFLOW_TRACKING_USERNAME")
        password = unquote(parts.password) if parts.password else environ.get("MLFLOW_TRACKING_PASSWORD")
        self.auth = (username, password or "") if username else None
        token = environ.get("MLFLOW_TRACKING_TOKEN")
        self.headers = {"Authorization": f"Bearer {token}"} if token and not self.auth else {}
        self.timeout = timeout
        self.transport = transport  # tests: an in-process WSGI app
        self._client: Any = None

    def _get(self, endpoint: str, **query: Any) -> dict | None:
        """The JSON answer, or None for RESOURCE_DOES_NOT_EXIST; any other failure is TrackingUnavailable."""
        import httpx

        if self._client is None:
            self._client = httpx.Client(base_url=self.base, auth=self.auth, headers=self.headers, timeout=self.timeout,
                                        transport=self.transport)
        try:
            response = self._client.get(f"/api/2.0/mlflow/{endpoint}", params=query)
        except httpx.HTTPError as error:
            raise TrackingUnavailable(redact_text(f"MLflow tracking server at {self.shown}: {endpoint}: {error}")) from error
        if response.status_code == 404 and "RESOURCE_DOES_NOT_EXIST" in response.text:
            return None
        if response.status_code != 200:
            raise TrackingUnavailable(redact_text(f"MLflow tracking server at {self.shown}: {endpoint} answered "
                                                  f"HTTP {response.status_code}: {response.text[:300]}"))
        return response.json()

    @staticmethod
    def _pairs(items: list[dict] | None) -> dict[str, str]:
        return {item["key"]: item.get("value", "") for item in items or []}

    def registered_model(self, name: str) -> RegisteredModel | None:
        answer = self._get("registered-models/get", name=name)
        if answer is None:
            return None
        model = answer.get("registered_model", {})
        aliases = {a["alias"]: str(a["version"]) for a in model.get("aliases", [])}
        return RegisteredModel(name, self._pairs(model.get("tags")), aliases)

    def model_version(self, name: str, version: str) -> ModelVersion | None:
        answer = self._get("model-versions/get", name=name, version=str(version))
        if answer is None:
            return None
        found = answer["model_version"]
        return ModelVersion(name, str(found["version"]), found.get("run_id"), self._pairs(found.get("tags")))

    def versions(self, name: str) -> list[str]:
        found: list[str] = []
        token = None
        while True:
            query = {"filter": f"name = '{name}'", "max_results": 1000} | ({"page_token": token} if token else {})
            answer = self._get("model-versions/search", **query) or {}
            found += [str(v["version"]) for v in answer.get("model_versions", [])]
            token = answer.get("next_page_token")
            if not token:
                return sorted(found, key=int)

    def run(self, run_id: str) -> Run | None:
        answer = self._get("runs/get", run_id=run_id)
        if answer is None:
            return None
        info, data = answer["run"]["info"], answer["run"].get("data", {})
        metrics = {m["key"]: float(m["value"]) for m in data.get("metrics", [])}
        return Run(info["run_id"], str(info["experiment_id"]), info.get("run_name"), self._pairs(data.get("tags")),
                   self._pairs(data.get("params")), metrics)


# -- any other store: MLflow's client --------------------------------------------------------------------
class MlflowReader:
    """Postgres, MySQL, a `file:` store...: no shortcut, MLflow's client (imported on first use)."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace

    def _client(self):
        from labelloop.adapters import tracking

        return tracking.client(self.workspace)

    def _missing(self, error: Exception) -> bool:
        return getattr(error, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"

    def registered_model(self, name: str) -> RegisteredModel | None:
        try:
            model = self._client().get_registered_model(name)
        except Exception as error:  # MlflowException; anything else is re-raised
            if self._missing(error):
                return None
            raise
        return RegisteredModel(name, dict(model.tags), {a: str(v) for a, v in (model.aliases or {}).items()})

    def model_version(self, name: str, version: str) -> ModelVersion | None:
        try:
            found = self._client().get_model_version(name, str(version))
        except Exception as error:  # MlflowException
            if self._missing(error):
                return None
            raise
        return ModelVersion(name, str(found.version), found.run_id, dict(found.tags))

    def versions(self, name: str) -> list[str]:
        return sorted((str(v.version) for v in self._client().search_model_versions(f"name = '{name}'")), key=int)

    def run(self, run_id: str) -> Run | None:
        try:
            found = self._client().get_run(run_id)
        except Exception as error:  # MlflowException
            if self._missing(error):
                return None
            raise
        return Run(found.info.run_id, str(found.info.experiment_id), found.info.run_name, dict(found.data.tags),
                   dict(found.data.params), dict(found.data.metrics))


def reader(workspace: Workspace, environ: Mapping[str, str] | None = None) -> RegistryReader:
    """The cheapest reader for the workspace's tracking store."""
    uri = workspace.tracking_uri
    if uri.startswith(("http://", "https://")):
        return RestReader(uri, environ)
    path = sqlite_path(uri)
    if path is not None:
        return SqliteReader(path)
    return MlflowReader(workspace)


# -- what the commands ask ------------------------------------------------------------------------------
def aliases(store: RegistryReader, model_name: str) -> dict[str, str]:
    """{alias: version} of a registered model ({} when nothing is registered under the name)."""
    model = store.registered_model(model_name)
    return dict(model.aliases) if model is not None else {}


def version_ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] → '1–3, 5'."""
    parts: list[tuple[int, int]] = []
    for number in sorted(numbers):
        if parts and parts[-1][1] == number - 1:
            parts[-1] = (parts[-1][0], number)
        else:
            parts.append((number, number))
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in parts)


def describe_versions(store: RegistryReader, model_name: str) -> str:
    """'model 'x' has versions 1–5; aliases champion=5, previous-champion=3' — what a user may name."""
    model = store.registered_model(model_name)
    if model is None:
        return f"model {model_name!r} has no registered versions yet (run `labelloop train` or `labelloop cycle`)"
    versions = [int(v) for v in store.versions(model_name)]
    shown = ", ".join(f"{alias}={version}" for alias, version in sorted(model.aliases.items())) or "none"
    return f"model {model_name!r} has versions {version_ranges(versions) or 'none'}; aliases {shown}"


def resolve_version(store: RegistryReader, model_name: str, ref: str) -> str:
    """A version number ('3' or 'v3') or an alias → the version number; anything else is one
    `UnknownModelVersion` naming the versions and aliases that exist."""
    ref = str(ref).strip()
    number = ref[1:] if ref[:1] in ("v", "V") and ref[1:].isdigit() else ref
    model = store.registered_model(model_name)
    if model is None:
        raise UnknownModelVersion(f"no version {ref!r}: {describe_versions(store, model_name)}")
    if number.isdigit():
        if store.model_version(model_name, number) is None:
            raise UnknownModelVersion(f"no version {ref!r}: {describe_versions(store, model_name)}")
        return str(int(number))
    if ref not in model.aliases:
        raise UnknownModelVersion(f"no version or alias {ref!r}: {describe_versions(store, model_name)}")
    return model.aliases[ref]


def champion_history(store: RegistryReader, model_name: str) -> list[ChampionChange]:
    """Every change of `champion`, oldest first, read through `store` (the one definition:
    `labelloop.adapters.tracking.champion_history` reads through MLflow's client with it)."""
    model = store.registered_model(model_name)
    if model is None:
        return []

    def version_tags(version: str) -> dict[str, str]:
        found = store.model_version(model_name, version)
        return dict(found.tags) if found is not None else {}

    return history_from(model.tags, model.aliases, version_tags)


def history_from(tags: Mapping[str, str], aliases: Mapping[str, str],
                 version_tags: Callable[[str], Mapping[str, str]]) -> list[ChampionChange]:
    """The champion history from a registered model's tags and aliases: the recorded changes; for a store
    older than the history, entries derived from its aliases (previous-champion, unless a rollback demoted it,
    then champion); for an alias moved without a record (by hand in the MLflow UI, or a crash between the move
    and its record), an `unrecorded` entry. Those carry recorded=False (written with the next change)."""
    history = [ChampionChange.from_json(value) for key, value in sorted(tags.items()) if key.startswith(CHAMPION_HISTORY_TAG)]
    champion = aliases.get(CHAMPION)
    if champion is None or (history and history[-1].version == champion):
        return history

    def change(version: str, by: str, reason: str, replaced: str | None) -> ChampionChange:
        return ChampionChange(str(version), None, by, reason, version_tags(version).get("data_tag"), replaced, recorded=False)

    if history:
        return [*history, change(champion, "unrecorded", "the champion alias was moved without a record (by hand, or a "
                                 "run killed right after the move)", history[-1].version)]
    previous = aliases.get(PREVIOUS)
    if previous and previous != champion and not version_tags(previous).get("rolled_back"):
        history.append(change(previous, "derived", "champion before labelloop kept a champion history", None))
    champion_tags = version_tags(champion)
    reason = (champion_tags.get("promoted_because") or champion_tags.get("gate.reasons")
              or "champion before labelloop kept a champion history")
    history.append(change(champion, "derived", reason, previous))
    return history
