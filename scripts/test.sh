#!/usr/bin/env bash
# `make test`: set up, start the real stack, lint and type-check, run every test, stop what this run started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/stack.sh setup
. scripts/env.sh
started=$(bash scripts/stack.sh status | awk '$2=="stopped" || $3=="stopped" {print}' | wc -l)
cleanup() { bash scripts/stack.sh down || true; }
# Stop the stack at the end only if this run started it (a developer's running stack is left alone).
if [ "$started" -gt 0 ] || [ "${CI:-}" = true ]; then trap cleanup EXIT; fi
bash scripts/stack.sh up postgres kafka airflow partners
ruff check . && ruff format --check .
mypy  # the product package, configured in pyproject.toml [tool.mypy]
python -m pytest -m "not benchmark and not faults" -p no:cacheprovider "$@"
