# The two commands of README.md: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
STACK := scripts/stack.sh
PY := .local/venv/bin/python

.PHONY: demo test test-faults setup up down status lint fmt bench cluster-up cluster-down cluster-status test-cluster bench-e2e

## Set up, start the stack and demo partners, run the whole pipeline end to end, print the report.
demo:
	bash scripts/demo.sh

## Set up, start the stack, run lint and the whole test suite, stop what was started (also on failure).
test:
	bash scripts/test.sh

setup:
	bash $(STACK) setup

up: setup
	bash $(STACK) up

down:
	bash $(STACK) down

status:
	bash $(STACK) status

lint:
	.local/venv/bin/ruff check . && .local/venv/bin/ruff format --check . && .local/venv/bin/mypy

fmt:
	.local/venv/bin/ruff check --fix . && .local/venv/bin/ruff format .

bench: setup
	bash -c '. scripts/env.sh && bash $(STACK) up postgres kafka && $(PY) -m pytest -m benchmark tests/benchmarks -p no:cacheprovider'

## Slow fault tests (~7 min): Postgres restart, Kafka down for 3 minutes, each on a private stack.
test-faults: setup
	bash -c '. scripts/env.sh && $(PY) -m pytest -m faults tests/integration/test_stack_faults.py -p no:cacheprovider'

## The cluster topology (issue 20, README "Scaling out"): CeleryExecutor + Redis and two workers, a Spark
## standalone master and two workers, three KRaft Kafka brokers (RF 3, min.insync.replicas 2).
cluster-up:
	bash scripts/cluster.sh setup && bash scripts/cluster.sh up

cluster-down:
	bash scripts/cluster.sh down

cluster-status:
	bash scripts/cluster.sh status

## Scale benchmark through the real scheduler (issue 20, README "Scaling out"): BENCH_E2E_N requests (default 1000;
## e.g. 1000,10000) x the demo catalog through the intake table, the DAGs driven until every one is complete, a bare
## baseline in the same run; figures in .local/bench/e2e.json (~15-25 min at N=1,000 on 2 cores).
bench-e2e: setup
	bash -c '. scripts/env.sh && bash $(STACK) up postgres kafka airflow partners && ERASURE_TEST_SHARED_AIRFLOW_DB=1 $(PY) -m pytest -m benchmark tests/benchmarks/bench_e2e.py -p no:cacheprovider -s'

## End to end on the cluster topology with a Celery worker and a Kafka broker killed mid-run (~25 min).
## The cluster runs with the test's catalog: the demo's targets with one warehouse table (tests/cluster/catalog.py).
test-cluster:
	bash -c 'export ERASURE_TOPOLOGY=cluster && bash scripts/cluster.sh setup && . scripts/env.sh && export ERASURE_CATALOG="$$ERASURE_LOCAL/catalog-test" && $(PY) tests/cluster/catalog.py "$$ERASURE_CATALOG" && bash scripts/cluster.sh up && $(PY) -m pytest -m cluster tests/cluster -p no:cacheprovider -s'
