# Quick start: `make run` (the main job) and `make test` (the suite). Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall when the project's requirements change.
STAMP := $(VENV)/.installed

.PHONY: run test test-fast bench setup clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

# The main job: until the training pipeline exists, the Mesa operator's benchmark report.
run: $(STAMP)
	$(PY) benchmarks/bench_mesa_op.py

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/bench_mesa_op.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
