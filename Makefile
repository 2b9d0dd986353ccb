# Hypercord: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; installed before the project so pip never pulls a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: run test lint venv install-test install-run

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Installs the app with its test extras on a CPU-only torch.
install-test: $(VENV)/bin/python
	$(PY) -m pip install -q "$(TORCH_CPU)" || $(PY) -m pip install -q "$(TORCH_CPU)" --index-url "$(TORCH_CPU_INDEX)"
	$(PY) -m pip install -q -e ".[test,dev]"

# Installs the app for running it (torch as resolved by pip: CUDA where available).
install-run: $(VENV)/bin/python
	$(PY) -m pip install -q -e .

run: install-run
	$(PY) -m bot

test: install-test
	OMP_NUM_THREADS=1 $(PY) -m pytest -q
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
