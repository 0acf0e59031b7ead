"""labelloop installed from a wheel, away from any checkout: the flows, the tasks and every file the demo
and the deployments need come with the package (no `REPO/infra`, no `flows/…py` paths)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).parent / "uv"
SOURCES = ("labelloop", "flows", "tasks", "pyproject.toml", "README.md")


def _run(*command: str | Path, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with labelloop installed from a wheel built from a copy of the sources; its python.
    Offline: the dependencies come from uv's cache, which `make install` filled (~1 s to link them)."""
    if not UV.exists():
        pytest.skip("uv is not installed next to this Python (make install puts it there)")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    for name in SOURCES:  # a copy: building writes build/ and *.egg-info next to the sources
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    _run(UV, "build", "--wheel", "--offline", "--quiet", "--out-dir", root / "dist", source, cwd=root)
    [wheel] = (root / "dist").glob("labelloop-*.whl")
    venv = root / "venv"
    _run(UV, "venv", "--quiet", "--python", sys.executable, venv, cwd=root)
    _run(UV, "pip", "install", "--offline", "--quiet", "--python", venv / "bin" / "python", wheel, cwd=root)
    return venv / "bin" / "python"


def test_the_wheel_holds_flows_tasks_and_the_demo_resources_under_labelloop(installed, tmp_path):
    script = "import labelloop, sysconfig; print(labelloop.__file__); print(sysconfig.get_paths()['purelib'])"
    found = _run(installed, "-c", script, cwd=tmp_path).stdout.split()
    package, site_packages = Path(found[0]).parent, Path(found[1])
    assert package == site_packages / "labelloop", "labelloop was imported from somewhere else than the wheel"
    for path in ("flows/cli.py", "flows/stages.py", "flows/deploy.py", "tasks/vendor.py", "tasks/environment.py",
                 "resources/satellite.parquet", "resources/dvc.yaml", "resources/labelstudio.sh",
                 "resources/labelstudio_token.py"):
        assert (package / path).is_file(), f"labelloop/{path} is not in the wheel"
    assert not (site_packages / "flows").exists() and not (site_packages / "tasks").exists()  # nothing generic


def test_the_installed_cli_runs_and_finds_what_the_demo_and_the_deployments_need(installed, tmp_path):
    help_text = _run(installed.parent / "labelloop", "--help", cwd=tmp_path).stdout
    for command in ("demo", "serve", "deploy", "cycle"):
        assert command in help_text
    # The Label Studio script the demo runs, and every deployment's flow by its module entrypoint, the way
    # a Prefect worker loads it.
    _run(installed, "-c", """
from labelloop.flows.cli import _label_studio_script
from labelloop.flows.deploy import SPECS
from prefect.flows import load_flow_from_entrypoint

assert _label_studio_script().is_file(), _label_studio_script()
for spec in SPECS.values():
    assert ":" not in spec.flow and spec.flow.startswith("labelloop.flows."), spec.flow
    flow = load_flow_from_entrypoint(spec.flow, use_placeholder_flow=False)
    assert flow.fn.__module__ == spec.flow.rsplit(".", 1)[0], (spec.flow, flow.fn.__module__)
""", cwd=tmp_path)
