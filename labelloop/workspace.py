"""A workspace: every durable piece of state of one deployment of the loop, under one directory.

    <root>/
      predictions/date=YYYY-MM-DD/part-*.parquet   the prediction log
      pool/candidates.parquet     captured rows not yet queued or labelled
      batches/<batch_id>/         batch.parquet + meta.json (strategy, seed, status, receipts)
      labels/raw/<batch_id>/      vendor payloads exactly as received
      labels/final/<batch_id>.parquet  aggregated labels
      quarantine/                 rejected rows with their reasons
      audit/candidates/<window>.parquet  per capture window, a uniform sample of all its rows (audit candidates)
      registry/                   git + DVC repo: data/labeled.parquet, data/holdout.parquet, data/audit.parquet,
                                  dataset_card.json, params.yaml (this workspace's knobs), schema.json (features, label set),
                                  dvc.yaml (validate → train → evaluate)
      dvc-remote/                 the default DVC remote (a local directory)
      mlflow.db, mlartifacts/     MLflow tracking + registry (SQLite) and artifacts
      simulator/                  demo only: traffic.parquet (unlabelled stream) and oracle.parquet (its truth)
      state/                      watermarks and cursors
      reports/                    cycle history, learning curve, stage params
      quality/                    label-quality state: gold_tracker.json, review_queue.json
      vendor/<vendor>/            each vendor's own state (simulated answers, Label Studio project ids)
      filedrop/                   the file-drop vendor's default drop folder
      .prefect/                   Prefect's home for runs without a Prefect server

The MLflow store is SQLite in the workspace unless the workspace is opened with a tracking server
(`tracking_server`, which the entry points read from `$LABELLOOP_TRACKING_URI`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from labelloop.config import Params, load_params
from labelloop.schema import Schema


def sqlite_uri(path: Path) -> str:
    """The SQLAlchemy/MLflow URI of the SQLite file at `path`, for any path.

    `sqlite:///<path>` is taken literally by SQLAlchemy except that a `?` starts its query (so
    `/data/ws?1/mlflow.db` would open the file `/data/ws`, shared with `/data/ws?2`), and percent-escapes
    there are not decoded. A path with any character that needs escaping therefore uses SQLite's own URI
    filename (`file:` + percent-encoded path, `uri=true`), which SQLite decodes; a plain path keeps the
    plain form, so existing workspaces keep the URI they always had. The driver is named
    (`sqlite+pysqlite`) because MLflow creates the "parent directory" of whatever follows a bare
    `sqlite:///`, which for `file:/...` would be a stray `file:` directory in the current directory.
    """
    absolute = str(Path(path).absolute())
    encoded = quote(absolute, safe="/")
    if encoded == absolute:
        return f"sqlite:///{absolute}"
    return f"sqlite+pysqlite:///file:{encoded}?uri=true"


class WorkspaceError(RuntimeError):
    """The workspace is missing or not in the state a command needs."""


@dataclass(frozen=True)
class Workspace:
    root: Path
    tracking_server: str | None = None  # an MLflow tracking server's URI; None: SQLite in the workspace

    @classmethod
    def at(cls, path: str | Path, tracking_server: str | None = None) -> Workspace:
        return cls(Path(path).expanduser().resolve(), tracking_server or None)

    # -- layout -----------------------------------------------------------------------------
    # params.yaml and schema.json live in the registry: versioned with every data version, and
    # where `dvc repro` / `dvc exp run -S train.max_depth=8` expect them.
    @property
    def params_path(self) -> Path:
        return self.registry_dir / "params.yaml"

    @property
    def schema_path(self) -> Path:
        return self.registry_dir / "schema.json"

    @property
    def pipeline_path(self) -> Path:
        """The registry's DVC pipeline (validate → train → evaluate)."""
        return self.registry_dir / "dvc.yaml"

    @property
    def ready_marker(self) -> Path:
        return self.state_dir / "initialized.json"

    @property
    def workspace_id(self) -> str | None:
        """Random id written at init; None for a workspace made before ids existed."""
        if not self.ready_marker.exists():
            return None
        return json.loads(self.ready_marker.read_text()).get("workspace_id")

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    @property
    def pool_path(self) -> Path:
        return self.root / "pool" / "candidates.parquet"

    @property
    def batches_dir(self) -> Path:
        return self.root / "batches"

    @property
    def raw_labels_dir(self) -> Path:
        return self.root / "labels" / "raw"

    @property
    def final_labels_dir(self) -> Path:
        return self.root / "labels" / "final"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def registry_dir(self) -> Path:
        return self.root / "registry"

    @property
    def labeled_path(self) -> Path:
        return self.registry_dir / "data" / "labeled.parquet"

    @property
    def holdout_path(self) -> Path:
        return self.registry_dir / "data" / "holdout.parquet"

    @property
    def audit_path(self) -> Path:
        """The audit set: append-only, time-stamped labelled audit items (uniform over captured traffic, with
        their weights), versioned with the labelled set (labelloop/stages/audit.py documents its columns)."""
        return self.registry_dir / "data" / "audit.parquet"

    @property
    def audit_candidates_dir(self) -> Path:
        """Per capture window, its audit candidates (a uniform sample of all its rows) for select to draw from."""
        return self.root / "audit" / "candidates"

    @property
    def card_path(self) -> Path:
        return self.registry_dir / "dataset_card.json"

    @property
    def dvc_remote_dir(self) -> Path:
        return self.root / "dvc-remote"

    @property
    def simulator_dir(self) -> Path:
        return self.root / "simulator"

    @property
    def traffic_path(self) -> Path:
        """Demo workspaces: the unlabelled production stream the production stage scores."""
        return self.simulator_dir / "traffic.parquet"

    @property
    def oracle_path(self) -> Path:
        """Demo workspaces: the true label of every traffic and seed row (what simulated annotators answer)."""
        return self.simulator_dir / "oracle.parquet"

    @property
    def quality_dir(self) -> Path:
        return self.root / "quality"

    @property
    def review_queue_path(self) -> Path:
        return self.quality_dir / "review_queue.json"

    @property
    def vendor_dir(self) -> Path:
        """Vendors' own state, one folder per vendor."""
        return self.root / "vendor"

    @property
    def filedrop_dir(self) -> Path:
        """The file-drop vendor's drop folder when `export.filedrop_url` names none."""
        return self.root / "filedrop"

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME for commands run without a Prefect server: their runs stay with the workspace."""
        return self.root / ".prefect"

    @property
    def gitignore_path(self) -> Path:
        """Ignores everything: a workspace inside a git checkout never lands in it."""
        return self.root / ".gitignore"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def tracking_uri(self) -> str:
        """MLflow store: the tracking server this workspace was opened with, else SQLite in the workspace."""
        return self.tracking_server or sqlite_uri(self.root / "mlflow.db")

    def batch_dir(self, batch_id: str) -> Path:
        return self.batches_dir / batch_id

    # -- state ------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.ready_marker.exists() and self.schema_path.exists() and (self.registry_dir / ".git").exists()

    def require(self) -> Workspace:
        if not self.exists():
            raise WorkspaceError(f"no labelloop workspace at {self.root}; create one with `labelloop init {self.root}`")
        return self

    def params(self) -> Params:
        return load_params(self.params_path)

    def schema(self) -> Schema:
        self.require()
        return Schema.from_json(json.loads(self.schema_path.read_text()))
