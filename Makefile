# The two commands of README.md: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
STACK := scripts/stack.sh
PY := .local/venv/bin/python

.PHONY: demo test test-faults setup up down status lint fmt bench

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
