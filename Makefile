# The two commands a new user needs (see README):
#   make run   - start the gateway with the example config and the embedded SQLite store
#   make test  - create the environment, build the Cython scanner, run the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= examples/plano_config.yaml

.PHONY: run test env bench clean

$(VENV)/.installed: pyproject.toml setup.py plano_fast/_scan.pyx
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) setup.py -q build_ext --inplace
	touch $@

env: $(VENV)/.installed

run: env
	$(PY) -m plano_fast migrate --config $(CONFIG)
	$(PY) -m plano_fast serve --config $(CONFIG)

test: env
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: env
	$(PY) -m pytest -q benchmarks --benchmark-only

clean:
	rm -rf $(VENV) build *.egg-info plano_fast/_scan.c plano_fast/*.so
