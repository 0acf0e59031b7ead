"""A data version as an MLflow dataset input: what a training run was trained and evaluated on.

The labelled set and the holdout live in the workspace's data registry (git + DVC); a data version is a
git tag there (`data-v3`, `holdout-v1`). Each training run logs both as MLflow dataset inputs, so the
run page lists them (not "No dataset") and runs compare by the data they saw:

- name: the tag (`data-v3`; the holdout `holdout-v1`);
- digest: the DVC md5 of the file at that tag (the content hash DVC keys its cache and remote by);
- source: a `dvc` source — the registry, the tag and the path (`<registry>@data-v3`, `data/labeled.parquet`);
  `source.load()` fetches that file at that tag with DVC (`dvc get`);
- context: `training` (the labelled set) or `evaluation` (the holdout);
- schema and profile (rows) from the frame, as MLflow's pandas datasets record them.

MLflow is imported by this module: import it lazily, only where a run is logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_registered_sources, register_dataset_source

from labelloop.adapters import versioning
from labelloop.columns import LABEL

TRAINING, EVALUATION = "training", "evaluation"


class DvcDatasetSource(DatasetSource):
    """A file of a git + DVC repository at a revision (a data tag)."""

    def __init__(self, repo: str, rev: str, path: str):
        self.repo, self.rev, self.path = str(repo), str(rev), str(path)

    @property
    def uri(self) -> str:
        return f"{self.repo}@{self.rev}"

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self, dst_path: str | None = None) -> str:
        """The file at `rev`, fetched with DVC into `dst_path` (a new temporary directory by default); its path."""
        import tempfile

        from dvc.repo import Repo

        out = Path(dst_path or tempfile.mkdtemp(prefix="labelloop-dataset-")) / Path(self.path).name
        Repo.get(self.repo, self.path, out=str(out), rev=self.rev)
        return str(out)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # never guessed from a string: built from the registry and tag

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDatasetSource:
        raise NotImplementedError("a DVC dataset source is built from its repository, revision and path")

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "repo": self.repo, "rev": self.rev, "path": self.path}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcDatasetSource:
        return cls(source_dict["repo"], source_dict["rev"], source_dict["path"])


def dvc_md5(registry: Path, rev: str, relative_path: str) -> str:
    """The md5 DVC recorded for `relative_path` at `rev` (its `.dvc` pointer at that revision)."""
    pointer = versioning.show_at(registry, rev, f"{relative_path}.dvc")
    outs = (yaml.safe_load(pointer) or {}).get("outs") if pointer else None
    if not outs or not outs[0].get("md5"):
        raise ValueError(f"{relative_path} has no DVC pointer with an md5 at {rev} in {registry}")
    return str(outs[0]["md5"])


def data_version_dataset(frame: pd.DataFrame, registry: Path, rev: str, path: Path):
    """The MLflow dataset for `path` (a DVC-tracked file of `registry`) at tag `rev`, holding `frame`."""
    from mlflow.data.pandas_dataset import from_pandas

    registry = registry.resolve()
    relative = path.resolve().relative_to(registry).as_posix()
    source = DvcDatasetSource(str(registry), rev, relative)
    targets = LABEL if LABEL in frame.columns else None
    return from_pandas(frame, source=source, targets=targets, name=rev, digest=dvc_md5(registry, rev, relative))


def log_data_versions(registry: Path, inputs: list[tuple[pd.DataFrame, str, Path, str]]) -> None:
    """Log each (frame, tag, path, context) as a dataset input of the active run."""
    import mlflow

    registered: list[Any] = get_registered_sources()
    if DvcDatasetSource not in registered:  # so mlflow.data.get_source() rebuilds it in this process
        register_dataset_source(DvcDatasetSource)  # type: ignore[arg-type]  # MLflow registers classes (its hint: instances)
    for frame, rev, path, context in inputs:
        mlflow.log_input(data_version_dataset(frame, registry, rev, path), context=context)
