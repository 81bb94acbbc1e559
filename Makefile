# Quick start: `make run` (the main job) and `make test` (the suite). Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall when the project's requirements change.
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint bench setup clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

# The main job: train the default small MesaNet on the Python standard library (about 10 minutes on
# 2 CPU cores), evaluate it (runs/small/summary.md, per_position.png), and print a generated sample.
# Running it again reuses the finished run.
run: $(STAMP)
	$(PY) -m mesanet train small
	$(PY) -m mesanet eval runs/small
	$(PY) -m mesanet generate runs/small --prompt "def " --max-new-tokens 120 --temperature 0.7 --seed 0

test: $(STAMP)
	$(PY) -m pytest

# Lint (ruff: pyflakes, import order, statement errors) and the format check (ruff format); both configured in
# pyproject.toml. CI runs them before the tests; `$(VENV)/bin/ruff format src tests benchmarks experiments` fixes the format.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# Side by side with flash-linear-attention's pure-PyTorch MesaNet: `make bench PEER=path/to/fla/ops/mesa_net/naive.py`
# (loaded at run time; the project ships no peer code).
PEER ?=
bench: $(STAMP)
	$(PY) -m benchmarks.bench_mesa_op --preconditioners $(if $(PEER),--peer $(PEER))
	$(PY) -m benchmarks.bench_models

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
