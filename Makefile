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

.PHONY: install install-test demo test test-fast clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet uv

# Stamp files keep reruns instant; pyproject.toml changes trigger a reinstall.
$(VENV)/.installed: pyproject.toml | $(UV)
	$(UV) pip install --python $(PY) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(UV)
	$(UV) pip install --python $(PY) -e '.[test,labelstudio]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/labelloop demo --workspace $(WORKSPACE)

test: install-test
	$(PY) -m pytest -q

test-fast: install-test
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(WORKSPACE)
