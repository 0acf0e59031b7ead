"""Thread policy (issue 15): thread counts from the CPUs the process may use, passive OpenMP waiting, n_jobs "auto"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from labelloop.config import ConfigError, TrainParams, load_params, parse_params
from labelloop.core.threads import (
    auto_threads,
    available_cpus,
    cgroup_cpu_limit,
    process_cpus,
    resolve_n_jobs,
    thread_environment,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("affinity", "files", "expected"), [
    (4, {"cpu_max": "50000 100000\n"}, 1),          # half a CPU of quota: one thread, not four
    (4, {"cpu_max": "150000 100000\n"}, 2),         # 1.5 CPUs rounds up
    (8, {"cpu_max": "200000 100000"}, 2),
    (2, {"cpu_max": "800000 100000"}, 2),           # quota above the affinity: the affinity
    (3, {"cpu_max": "max 100000\n"}, 3),            # v2 "max": no limit
    (8, {"cfs_quota_us": "300000\n", "cfs_period_us": "100000\n"}, 3),   # v1
    (8, {"cfs_quota_us": "-1\n", "cfs_period_us": "100000\n"}, 8),       # v1 unlimited
    (8, {"cfs_quota_us": "20000", "cfs_period_us": "100000"}, 1),        # a fifth of a CPU is still one thread
    (6, {}, 6),                                     # no cgroup files
    (6, {"cpu_max": "garbage"}, 6),                 # unreadable kernel text never stops a fit
    (0, {}, 1),
])
def test_available_cpus_is_affinity_capped_by_the_cgroup_quota(affinity, files, expected):
    assert available_cpus(affinity, **files) == expected


def test_cgroup_cpu_limit_reads_both_versions():
    assert cgroup_cpu_limit(cpu_max="250000 100000") == 2.5
    assert cgroup_cpu_limit(cpu_max="max 100000") is None
    assert cgroup_cpu_limit(cfs_quota_us="50000", cfs_period_us="100000") == 0.5
    assert cgroup_cpu_limit(cfs_quota_us="-1", cfs_period_us="100000") is None
    assert cgroup_cpu_limit() is None


def _tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_process_cpus_reads_the_process_cgroup_v2(tmp_path):
    root = _tree(tmp_path, {
        "proc/self/cgroup": "0::/job/worker\n",
        "sys/fs/cgroup/job/worker/cpu.max": "100000 100000\n",
        "sys/fs/cgroup/cpu.max": "max 100000\n",
    })
    assert process_cpus(root, affinity=4) == 1


def test_process_cpus_falls_back_to_the_v1_cpu_controller(tmp_path):
    root = _tree(tmp_path, {
        "proc/self/cgroup": "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n",
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    })
    assert process_cpus(root, affinity=16) == 2


def test_process_cpus_without_cgroup_files_is_the_affinity(tmp_path):
    assert process_cpus(tmp_path, affinity=3) == 3
    assert 1 <= process_cpus() <= (os.cpu_count() or 1)


def test_auto_respects_a_smaller_omp_num_threads():
    assert auto_threads(4, None) == 4
    assert auto_threads(4, "1") == 1
    assert auto_threads(2, "8") == 2      # never more than the process may use
    assert auto_threads(2, "nonsense") == 2


def test_n_jobs_defaults_to_auto_and_accepts_positive_integers():
    assert TrainParams().n_jobs == "auto"
    assert load_params(REPO / "params.yaml").train.n_jobs == "auto"
    assert parse_params({"train": {"n_jobs": 1}}).train.n_jobs == 1
    assert parse_params({"train": {"n_jobs": "auto"}}).train.n_jobs == "auto"


@pytest.mark.parametrize("bad", [0, -1, "two", 2.5, True, None])
def test_bad_n_jobs_is_one_clear_error_naming_the_allowed_values(bad):
    with pytest.raises(ConfigError) as error:
        parse_params({"train": {"n_jobs": bad}})
    message = str(error.value)
    assert "train.n_jobs" in message and '"auto" or a positive integer' in message and repr(bad) in message


def test_a_fit_uses_the_resolved_thread_count():
    from labelloop.model import LabelloopClassifier
    from labelloop.schema import Schema

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 3)), np.array(["a", "b", "c"] * 20)
    schema = Schema.numeric(["f0", "f1", "f2"], ["a", "b", "c"])
    model = LabelloopClassifier.from_params(TrainParams(n_estimators=3, max_depth=2), schema).fit(X, y)
    assert model.params.n_jobs == "auto"
    assert model.estimator_.get_params()["n_jobs"] == resolve_n_jobs("auto") >= 1
    with pytest.raises(ValueError, match="positive integer"):
        TrainParams(n_jobs=0)


def test_thread_environment_keeps_what_the_user_set():
    assert thread_environment({}, 2) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"}
    assert thread_environment({"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"}, 2) == {}


_PROBE = (
    "import os, sys\n"
    "from typer.testing import CliRunner\n"
    "import labelloop.flows.cli\n"
    "gomp = lambda: any('libgomp' in line for line in open('/proc/self/maps'))\n"
    "print(os.environ.get('OMP_WAIT_POLICY'), gomp())\n"
    "result = CliRunner().invoke(labelloop.flows.cli.app, ['strategies'])\n"
    "assert result.exit_code == 0, result.output\n"
    "import xgboost\n"  # the ML stack (labelloop.model itself imports it lazily, on a fit)
    "print(os.environ.get('OMP_WAIT_POLICY'), gomp())\n"
)


def _probe(**env: str) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    environ.update(env, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", _PROBE], env=environ, cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=True)
    return out.stdout.split()


def test_passive_wait_is_set_by_the_cli_before_the_openmp_runtime_loads_and_not_at_import():
    # Importing the CLI changes nothing (no side effect at import) and loads no OpenMP; any command sets
    # the policy first, then the ML stack loads the runtime with it.
    assert _probe() == ["None", "False", "PASSIVE", "True"]


def test_the_policy_never_overrides_the_users_wait_policy():
    assert _probe(OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "False", "ACTIVE", "True"]
