# The two commands a new user needs (see README):
#   make run   - start the gateway with the example config and the embedded SQLite store
#   make test  - create the environment, build the Cython scanner, run the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= examples/plano_config.yaml

.PHONY: run test test-deep env bench bench-tools bench-quick bench-smoke clean

$(VENV)/.installed: pyproject.toml setup.py $(wildcard plano_fast/*.pyx plano_fast/*.pxd plano_fast/*.pxi plano_fast/*/*.pyx plano_fast/*/*.pxi plano_fast/*/*.pxd plano_fast/wire/*.h)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the build requirements (pinned in pyproject.toml) for the in-place build below
	$(PY) -c "import subprocess, sys, tomllib; subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', *tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']])"
	$(PY) -m pip install -q -e '.[test]'
	$(PY) setup.py -q build_ext --inplace
	touch $@

env: $(VENV)/.installed

run: env
	$(PY) -m plano_fast migrate --config $(CONFIG)
	$(PY) -m plano_fast serve --config $(CONFIG)

# The suite in TEST_WORKERS processes (pytest-xdist), a whole test file to each (a module's
# gateway is started once): on 2 cores ~8 min instead of ~11 (the serial suite broke the
# 10-minute budget; benchmarks/results/suite-20261206k.md).  TEST_WORKERS=0 runs one process;
# PYTEST_ARGS come after, so PYTEST_ARGS=-n0 wins too.
TEST_WORKERS ?= 2
test: env
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The property tests at their deep counts (tests/hypothesis_budget.py): a soak, not CI's run
test-deep: env
	PLANO_FAST_HYPOTHESIS=deep $(PY) -m pytest -q $(PYTEST_ARGS)

# Side-by-side: direct, nginx (when installed), plano_fast modes; results in benchmarks/results/
# The default is issue 27's table with everything on (README "Performance"); BENCH_ARGS=... for another.
BENCH_ARGS ?= --modes config:1+2,firewall:1+2,managed:1,managed-pg:1 --with-portkey --with-features --c1-runs 3
bench: env bench-tools
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# The baselines' tools (wrk for saturation, nginx for the ratio base): from Debian's packages when
# missing and this is root on a Debian-like machine; else the harness says what it skipped.
# Only the missing ones are installed; when nginx-light is, the service its package starts on
# port 80 is stopped (the harness runs its own).  An nginx that was already there is left alone.
bench-tools:
	@missing=""; command -v wrk >/dev/null || missing=" wrk"; \
	command -v nginx >/dev/null || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (Debian packages) for the benchmark's baselines"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1; } || \
	      echo "could not install$$missing: the benchmark runs without them"; \
	    case "$$missing" in *nginx-light*) { service nginx stop || nginx -s stop; } >/dev/null 2>&1 || true;; esac; \
	  else echo "wrk or nginx missing (apt-get install$$missing): the benchmark runs without them"; fi; \
	fi

bench-quick: env
	$(PY) benchmarks/run.py --quick --modes config --workers 1

bench-smoke: env
	PLANO_FAST_RUN_BENCH_SMOKE=1 $(PY) -m pytest -q -m bench tests/test_bench_smoke.py

# Micro-benchmarks (pytest-benchmark): the scanner, the stores
bench-micro: env
	$(PY) -m pytest -q benchmarks --benchmark-only

clean:
	rm -rf $(VENV) build *.egg-info
	# every Cython module's generated C, build and annotation (no hand-written .c in the tree)
	find plano_fast \( -name '*.c' -o -name '*.so' -o -name '*.html' \) -delete
