"""The real production stack for integration tests, started by the same script as `make stack-up`.

Prefect server + MLflow server on Postgres (throwaway databases with unique names, free ports, a
private STACK_DIR), a process worker, and the deployments registered by flows/deploy.py for a
fresh small workspace. Everything started here is stopped and the databases dropped at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import stop_after_group

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "infra" / "stack.sh"
DEPLOYMENT_NAME = "it"
# No audit sample (select.audit_fraction defaults to 0.1): the stack tests count batch and import rows exactly;
# the audit is tested in tests/stages/test_audit.py and tests/flows/test_cycle_auto.py.
SMALL = ["production.rows_per_cycle=300", "select.batch_size=30", "select.audit_fraction=0", "train.n_estimators=30",
         "train.max_depth=4"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"{' '.join(args)} did not finish within {timeout:.0f} s:\n{error.stdout}\n{error.stderr}") from None
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def _postgres_ready() -> str | None:
    if not shutil.which("psql") or not shutil.which("pg_isready"):
        return "psql/pg_isready not installed (apt-get install -y postgresql-client)"
    host, port = os.environ.get("PG_HOST", "127.0.0.1"), os.environ.get("PG_PORT", "5432")
    if subprocess.run(["pg_isready", "-q", "-h", host, "-p", port], check=False).returncode != 0:
        return f"no Postgres at {host}:{port} (see docs/production.md: 'Postgres')"
    return None


class Stack:
    def __init__(self, env: dict[str, str], workspace: Path, stack_dir: Path):
        self.env = env
        self.workspace = workspace
        self.stack_dir = stack_dir
        self.prefect_url = f"http://127.0.0.1:{env['PREFECT_PORT']}"
        self.api_url = f"{self.prefect_url}/api"
        self.mlflow_url = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
        self.mlflow_db = env["MLFLOW_DB"]
        self.timings: dict[str, float] = {}

    def logs(self) -> str:
        parts = []
        for name in ("prefect", "mlflow", "worker"):
            path = self.stack_dir / f"{name}.log"
            if path.exists():
                parts.append(f"--- {name}.log (tail) ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(parts)

    def mlflow_sql(self, query: str) -> list[tuple]:
        """Ask MLflow's Postgres database directly (not through MLflow)."""
        import psycopg2

        with psycopg2.connect(host=self.env["PG_HOST"], port=self.env["PG_PORT"], user=self.env["PG_USER"],
                              dbname=self.mlflow_db) as connection, connection.cursor() as cursor:
            cursor.execute(query)
            return cursor.fetchall()


@pytest.fixture(scope="session")
def real_stack():
    reason = _postgres_ready()
    if reason:
        pytest.fail(f"the real-stack tests need Postgres: {reason}")
    # Not under pytest's basetemp: a concurrent pytest session may rotate (delete) old basetemps.
    stack_dir = Path(tempfile.mkdtemp(prefix="labelloop-stack-"))
    suffix = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "STACK_DIR": str(stack_dir),
        "PG_HOST": os.environ.get("PG_HOST", "127.0.0.1"), "PG_PORT": os.environ.get("PG_PORT", "5432"),
        "PG_USER": os.environ.get("PG_USER", "postgres"),
        "PREFECT_DB": f"labelloop_it_{suffix}_prefect", "MLFLOW_DB": f"labelloop_it_{suffix}_mlflow",
        "PREFECT_PORT": str(free_port()), "MLFLOW_PORT": str(free_port()),
        "WORK_POOL": f"labelloop-it-{suffix}",
        "STACK_START_TIMEOUT": "240",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PYTHON_BIN": str(Path(sys.executable).parent),
    }
    for key in ("PREFECT_API_URL", "PREFECT_API_KEY", "MLFLOW_TRACKING_URI", "LABELLOOP_TRACKING_URI", "PREFECT_HOME",
                "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_PROFILES_PATH", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(key, None)
    workspace = stack_dir / "ws"
    stack = Stack(env, workspace, stack_dir)

    def down() -> None:
        if os.environ.get("LABELLOOP_KEEP_STACK") == "1":  # debugging: leave it running, print how to stop it
            print(f"\nLABELLOOP_KEEP_STACK=1: stack left running; stop with: "
                  f"STACK_DIR={stack_dir} PREFECT_DB={env['PREFECT_DB']} MLFLOW_DB={env['MLFLOW_DB']} infra/stack.sh down")
        else:
            subprocess.run([str(STACK), "down"], env=env, cwd=REPO, capture_output=True, timeout=120, check=False)
            subprocess.run([str(STACK), "drop-db"], env=env, cwd=REPO, capture_output=True, timeout=120, check=False)
            shutil.rmtree(stack_dir, ignore_errors=True)

    stop = stop_after_group("real_stack", down)
    try:
        started = time.monotonic()
        _run([str(STACK), "up"], env, timeout=600)
        stack.timings["stack_up_s"] = time.monotonic() - started
        started = time.monotonic()
        args = [str(STACK), "deploy", "--workspace", str(workspace), "--name", DEPLOYMENT_NAME]
        for pair in SMALL:
            args += ["--set", pair]
        _run(args, env, timeout=600)
        stack.timings["deploy_s"] = time.monotonic() - started
        print(f"\nreal stack: Prefect {stack.prefect_url}, MLflow {stack.mlflow_url}, "
              f"up {stack.timings['stack_up_s']:.0f} s, deploy {stack.timings['deploy_s']:.0f} s")
        yield stack
    except AssertionError:
        print(stack.logs())
        raise
    finally:
        stop()


@pytest.fixture(scope="module")
def stack_client(real_stack):
    """Prefect client settings and MLflow URI of the real stack for this process, restored afterwards."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from labelloop.tasks.environment import ENV_TRACKING_URI

    saved = {k: os.environ.get(k) for k in (ENV_TRACKING_URI, "MLFLOW_TRACKING_URI")}
    os.environ[ENV_TRACKING_URI] = real_stack.mlflow_url
    try:
        with temporary_settings({PREFECT_API_URL: real_stack.api_url}):
            yield real_stack
    finally:
        for key, value in saved.items():  # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: restore both
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
