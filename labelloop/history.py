"""The workspace's cycle history (`reports/cycles.json`): one `CycleRecord` per cycle, oldest first.

Written by the cycle flow; read by the gate's stop rules, the reports and the CLI.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from labelloop.core.io import read_json, write_json
from labelloop.domain.cycle import CycleRecord
from labelloop.workspace import Workspace


def history_path(workspace: Workspace) -> Path:
    return workspace.reports_dir / "cycles.json"


def load_history(workspace: Workspace) -> list[CycleRecord]:
    return [CycleRecord(**r) for r in read_json(history_path(workspace), [])]


def append_history(workspace: Workspace, record: CycleRecord) -> None:
    history = [asdict(r) for r in load_history(workspace)]
    write_json(history_path(workspace), [*history, asdict(record)])
