"""Thread policy for XGBoost and every OpenMP/BLAS user: as many threads as CPUs the process may use, waiting passively.

On a shared or CPU-limited machine, OpenMP's default active wait makes idle worker threads spin for
their time slice, and `os.cpu_count()` counts CPUs the process is not allowed to run on (sched affinity)
or has no quota for (cgroup `cpu.max` / `cpu.cfs_quota_us`). Together they made a 2,000-row XGBoost fit
27x slower with two threads than with one on a loaded 2-core box (issue 15; docs/benchmarks.md).

`available_cpus` is pure (given the affinity size and the cgroup files' text); `process_cpus` reads them.
`thread_environment` / `apply_thread_environment` set `OMP_WAIT_POLICY=PASSIVE` and `OMP_NUM_THREADS`
unless the user set them; they must run before the OpenMP runtime loads (scikit-learn and xgboost load
it on import), so `labelloop/__init__.py` calls `apply_thread_environment` first thing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

AUTO = "auto"
ALLOWED_N_JOBS = f'"{AUTO}" or a positive integer'


def cgroup_cpu_limit(cpu_max: str | None = None, cfs_quota_us: str | None = None,
                     cfs_period_us: str | None = None) -> float | None:
    """CPUs' worth of time the cgroup allows (e.g. 1.5), or None when unlimited or unknown.

    cgroup v2 `cpu.max` is "<quota> <period>" or "max <period>"; v1 has `cpu.cfs_quota_us` (-1 = none)
    and `cpu.cfs_period_us`. Text that does not parse counts as no limit: a kernel file we cannot read
    must not stop a fit.
    """
    if cpu_max is not None:
        parts = cpu_max.split()
        if len(parts) >= 1 and parts[0] != "max":
            quota, period = _number(parts[0]), _number(parts[1]) if len(parts) > 1 else 100_000.0
            if quota is not None and period and quota > 0:
                return quota / period
        return None
    if cfs_quota_us is not None and cfs_period_us is not None:
        quota, period = _number(cfs_quota_us), _number(cfs_period_us)
        if quota is not None and period and quota > 0:
            return quota / period
    return None


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def available_cpus(affinity: int, cpu_max: str | None = None, cfs_quota_us: str | None = None,
                   cfs_period_us: str | None = None) -> int:
    """Threads worth running: the CPUs in the affinity mask, capped by the cgroup quota rounded up; at least 1."""
    limit = cgroup_cpu_limit(cpu_max, cfs_quota_us, cfs_period_us)
    cpus = max(1, int(affinity))
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return cpus


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _cgroup_paths(proc_self_cgroup: str | None) -> tuple[str | None, str | None]:
    """This process's cgroup path for v2 (`0::/path`) and for the v1 `cpu` controller."""
    v2 = v1 = None
    for line in (proc_self_cgroup or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def process_cpus(root: Path = Path("/"), affinity: int | None = None) -> int:
    """`available_cpus` for this process: its sched affinity and its cgroup's CPU quota (v2, else v1).

    `root` and `affinity` exist for tests (a fake /sys tree); by default the real ones are read.
    """
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    sys_cgroup = root / "sys" / "fs" / "cgroup"
    v2_path, v1_path = _cgroup_paths(_read(root / "proc" / "self" / "cgroup"))
    # The process's own cgroup first, then the mount's root (inside a container that is the container's cgroup).
    for directory in ([sys_cgroup / v2_path.lstrip("/")] if v2_path else []) + [sys_cgroup]:
        cpu_max = _read(directory / "cpu.max")
        if cpu_max is not None:
            return available_cpus(affinity, cpu_max=cpu_max)
    for mount in ("cpu", "cpu,cpuacct"):
        for directory in ([sys_cgroup / mount / v1_path.lstrip("/")] if v1_path else []) + [sys_cgroup / mount]:
            quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
            if quota is not None and period is not None:
                return available_cpus(affinity, cfs_quota_us=quota, cfs_period_us=period)
    return available_cpus(affinity)


def check_n_jobs(value: object) -> int | str:
    """`value` if it is "auto" or a positive int, else a ValueError naming the allowed values."""
    if value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"n_jobs must be {ALLOWED_N_JOBS} (\"auto\" = the CPUs this process may use), got {value!r}")


def auto_threads(cpus: int, omp_num_threads: str | None = None) -> int:
    """What "auto" means: the available CPUs, or fewer when the user's `OMP_NUM_THREADS` asks for fewer."""
    requested = _number(omp_num_threads.split(",")[0]) if omp_num_threads else None
    if requested is not None and requested >= 1:
        return max(1, min(cpus, int(requested)))
    return max(1, cpus)


def resolve_n_jobs(n_jobs: int | str) -> int:
    """The thread count to hand XGBoost: "auto" becomes `auto_threads` for this process, a positive int is kept."""
    n_jobs = check_n_jobs(n_jobs)
    if n_jobs == AUTO:
        return auto_threads(process_cpus(), os.environ.get("OMP_NUM_THREADS"))
    return int(n_jobs)


def thread_environment(environ: Mapping[str, str], cpus: int) -> dict[str, str]:
    """The variables to add so OpenMP/BLAS wait passively on `cpus` threads; a variable the user set is left alone."""
    wanted = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(max(1, cpus))}
    return {key: value for key, value in wanted.items() if key not in environ}


def apply_thread_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Add `thread_environment` to `environ` (default: this process's); returns what was added.

    Effective only before the OpenMP runtime is loaded: it reads these variables once, at load.
    """
    environ = os.environ if environ is None else environ
    added = thread_environment(environ, process_cpus())
    environ.update(added)
    return added
