# Hypercord: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; installed before the project so pip never pulls a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TEST_PROCESSES ?= 2

.PHONY: run test lint venv install-test install-run install-redis

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Installs the app with its test extras on a CPU-only torch.
install-test: $(VENV)/bin/python
	$(PY) -m pip install -q "$(TORCH_CPU)" || $(PY) -m pip install -q "$(TORCH_CPU)" --index-url "$(TORCH_CPU_INDEX)"
	$(PY) -m pip install -q -e ".[test,dev]"

# Installs the app for running it (torch as resolved by pip: CUDA where available).
install-run: $(VENV)/bin/python
	$(PY) -m pip install -q -e .

# The Redis test tier (tests/engine/redis) starts its own redis-server on loopback. CI is a clean Debian run as
# root: install it there when it is missing; anyone else is told how.
install-redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server is missing: install it (Debian/Ubuntu: sudo apt-get install redis-server)" >&2; exit 1; fi; }

run: install-run
	$(PY) -m bot

# Two pytest processes, each taking whole modules (the end-to-end scenarios together; tests/conftest.py), so a
# module's bot or worker is started once: the worker-backed and end-to-end tiers mostly wait on subprocesses, so two
# processes share CI's two cores well.
test: install-test install-redis
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadfile
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
