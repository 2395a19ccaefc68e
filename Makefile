# Two entry points for a fresh machine (see README.md):
#   make bench   create .venv, install the project, run the default benchmark
#   make test    create .venv, install the project with its test tools, run the test-suite
#   make test-soak  the minutes-long fault-injection and race tests and the peft catalogue's contracts (CI runs both)
# The venv is rebuilt only when pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Empty: the default benchmark (pre-trained glip-nano, the main methods, the shapes-odinw suite).
BENCH_ARGS ?=

.PHONY: install bench test test-soak clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

bench: install
	$(PY) run_bench.py $(BENCH_ARGS)

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -m "not soak and not extended" $(PYTEST_ARGS)

# The soak tests (cells killed over 20 times, two launchers racing on one results folder) and the peft
# catalogue's contract tests: CI runs them too.
test-soak: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -m "soak or extended" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
