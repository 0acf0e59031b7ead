# First thing in any labelloop process (CLI, flows, Prefect workers, simulator, library use): passive
# OpenMP waiting on the CPUs actually available, set before scikit-learn/xgboost load the OpenMP runtime
# (it reads these variables once, at load). A value the user set is kept. See labelloop/threads.py.
from labelloop.threads import apply_thread_environment as _apply_thread_environment

_apply_thread_environment()
