# Quick start on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run report test test-slow benchmarks lint docs clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

DOCS_INSTALLED := $(VENV)/.docs-installed
$(DOCS_INSTALLED): $(INSTALLED) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	touch $(DOCS_INSTALLED)

## The main job (experiments/conf/experiment/main.yaml): on the 200-step cart-pole swing-up
## against the lab real, HDS (5,000 real transitions), PODS in sim, the oracle, PODS+sysid and
## the classical energy_lqr, each evaluated in sim and on the lab; prints one table.
run: $(INSTALLED)
	$(BIN)/python -m experiments.train experiment=main

## The sim-vs-real testbed report.
report: $(INSTALLED)
	$(BIN)/python -m sim2real.report

## The test suite (tests marked `slow` excluded; `make test-slow` runs them), one test file
## per worker process: compiling is single-threaded, so two workers use both cores of a
## 2-core machine. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
## The docs extra is installed first: tests/test_docs.py builds the site with --strict.
test: $(INSTALLED) $(DOCS_INSTALLED)
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=15

test-slow: $(INSTALLED)
	$(BIN)/python -m pytest -m slow --durations=15

benchmarks: $(INSTALLED)
	$(BIN)/python benchmarks/rollout_throughput.py

## The documentation site, built into site/ with --strict (a broken link or page fails).
docs: $(INSTALLED) $(DOCS_INSTALLED)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache .ruff_cache *.egg-info site
