# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
UV := $(VENV)/bin/uv
PY := $(VENV)/bin/python
WORKSPACE ?= ./workspace
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export GX_ANALYTICS_ENABLED=false
export DVC_NO_ANALYTICS=1
export MLFLOW_ENABLE_TELEMETRY=false
export DO_NOT_TRACK=1

.PHONY: install install-test demo test test-fast clean chromium

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet uv

# Stamp files keep reruns instant; pyproject.toml changes trigger a reinstall.
# Bytecode is compiled at install: where PYTHONDONTWRITEBYTECODE is set (as on this machine) Python never writes a
# .pyc, so every process compiled each module it imported from source (the stages' imports: 15.9 s → 5.5 s).
# The project's own modules too; a .pyc older than its source is simply not used.
$(VENV)/.installed: pyproject.toml | $(UV)
	$(UV) pip install --compile-bytecode --python $(PY) -e '.[labelstudio]'
	$(PY) -m compileall -q -j 0 labelloop flows tasks > /dev/null
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(UV)
	$(UV) pip install --compile-bytecode --python $(PY) -e '.[test,labelstudio]'
	$(PY) -m compileall -q -j 0 labelloop flows tasks tests benchmarks > /dev/null
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/labelloop demo --workspace $(WORKSPACE)

# Two xdist workers, one OpenMP thread each (2 cores; three were no faster: 27.6 min with a demo beside it for
# the last 6, against 23.8 with two). Tests sharing a server or a module fixture run on one worker, the servers' groups first (tests/conftest.py;
# --no-loadscope-reorder keeps that order).
test: install-test lint chromium
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder --durations=15

test-fast: install-test
	$(PY) -m pytest -q -m "not slow"

# Lint, type and import-layer checks (configured in pyproject.toml); `make test` runs them first.
# mypy and import-linter find a package by its directory, so on their own they miss labelloop.flows and
# labelloop.tasks (package-dir installs them from flows/ and tasks/; the editable install resolves that with an
# import hook neither runs). Both check the installed layout instead: $(LAYOUT)/labelloop links every entry of
# labelloop/ plus each package-dir entry, rebuilt on every run from pyproject.toml. Their messages name files
# as seen there: labelloop/flows/x.py is flows/x.py, labelloop/tasks/x.py is tasks/x.py.
.PHONY: lint
LAYOUT := $(abspath $(VENV))/layout
lint: install-test
	$(VENV)/bin/ruff check
	rm -rf $(LAYOUT) && mkdir -p $(LAYOUT)/labelloop && ln -s $(CURDIR)/labelloop/* $(LAYOUT)/labelloop/
	$(PY) -c 'import tomllib; [print(name.replace(".", "/"), folder) for name, folder in \
		tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"].items()]' \
		| while read package folder; do ln -s $(CURDIR)/$$folder $(LAYOUT)/$$package; done
	cd $(LAYOUT) && $(abspath $(VENV))/bin/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(abspath $(VENV))/mypy-cache
	cd $(LAYOUT) && $(abspath $(VENV))/bin/lint-imports --no-cache --no-logo $(CURDIR)/pyproject.toml

clean:
	-$(VENV)/bin/labelloop server stop -w $(WORKSPACE) 2>/dev/null
	rm -rf $(VENV) $(WORKSPACE)

# The browser test (tests/integration/test_ui_browser.py) drives Debian's chromium with Playwright.
chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# --- production stack ---
# Prefect server + MLflow server on Postgres, a process worker (infra/stack.sh; docs/production.md).
# Knobs (environment): PREFECT_PORT MLFLOW_PORT PG_HOST PG_PORT PG_USER WORK_POOL STACK_DIR WITH_LABELSTUDIO=1.
DEPLOY_NAME ?= production
DEPLOY_MODE ?= stages
.PHONY: stack-up stack-down stack-status deploy worker

stack-up: install
	infra/stack.sh up

stack-down:
	infra/stack.sh down

stack-status:
	infra/stack.sh status

# Registers every deployment for $(WORKSPACE) (created from params.yaml if missing), then starts the worker.
deploy: install
	LABELLOOP_WORKSPACE=$(abspath $(WORKSPACE)) infra/stack.sh deploy --name $(DEPLOY_NAME) --mode $(DEPLOY_MODE) \
		--params $(abspath params.yaml)

worker: install
	infra/stack.sh worker
# --- production stack ---
