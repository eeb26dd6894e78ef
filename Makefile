# capillary: `make up` runs a node, `make test` runs every test tier. Both prepare the
# machine first (scripts/setup.sh is idempotent).
VENV    := .venv
PY      := $(VENV)/bin/python
CLI     := $(VENV)/bin/capillary
PYTEST  := $(VENV)/bin/pytest
CONFIG  ?=
CONFIG_FLAG := $(if $(CONFIG),--config $(CONFIG),)

.PHONY: setup up down purge status test unit fuzz privileged e2e soak compose-image compose-test bench bench-setup \
	bench-report clean

setup:
	@bash scripts/setup.sh

up: setup
	$(CLI) $(CONFIG_FLAG) up --detach
	@$(CLI) $(CONFIG_FLAG) status

down:
	$(CLI) $(CONFIG_FLAG) down

purge:
	$(CLI) $(CONFIG_FLAG) down --purge

status:
	$(CLI) $(CONFIG_FLAG) status

test: setup
	$(PYTEST) tests -q -ra

unit: setup
	$(PYTEST) tests/unit -q

# Property-based fuzzing (in `make test` too). CAPILLARY_FUZZ=soak: 20x the cases, fresh ones.
fuzz: setup
	$(PYTEST) tests/fuzz -q

privileged: setup
	$(PYTEST) tests/privileged -q -ra

e2e: setup
	$(PYTEST) tests/e2e -q -ra

# The disruption suite for longer (not in CI): each disruption ROUNDS times (default 10)
# under one set of long-lived connections, then the NATS restart; figures per disruption.
ROUNDS ?= 10
soak: setup
	CAPILLARY_DISRUPTION_ROUNDS=$(ROUNDS) $(PYTEST) tests/e2e/test_disruption.py tests/e2e/test_nats_restart.py \
		-v -s -ra --timeout $$(( 600 + 300 * $(ROUNDS) ))

# capillary with Docker Compose (compose.yaml): the image, then a deployment on a real
# engine (started for the test when none runs). Caches in /var/cache/capillary.
compose-image: setup
	@bash scripts/compose-host.sh --install
	bash scripts/compose-image.sh

compose-test: setup
	@bash scripts/compose-host.sh --install
	CAPILLARY_COMPOSE_TEST=1 $(PYTEST) tests/compose -v -ra --timeout 1800

# Every benchmark, then docs/benchmarks.md with its plots (12-19 minutes). QUICK=1: the
# smoke test (small sizes, short runs, under 4 minutes), results under bench/results/quick/.
bench: bench-setup
	$(PY) bench/run.py $(if $(QUICK),--quick,)

bench-setup:
	@CAPILLARY_EXTRAS=test,bench bash scripts/setup.sh

# docs/benchmarks.md again from the results of the last full run, without running anything.
bench-report: bench-setup
	$(PY) bench/run.py --report-only

clean:
	rm -rf $(VENV) build *.egg-info
