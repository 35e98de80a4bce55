#!/usr/bin/env bash
# `make demo`: set up, start the stack and the demo partners, run the whole erasure pipeline end to end
# through the REST API and the running scheduler, and print a report. Exits non-zero when any
# expectation of the report fails. Re-runnable: every run uses fresh subjects.
#
#   scripts/demo.sh [--quick] [--warehouse-rows N] [--timeout-min M]   (options: python -m erasure_demo.demo --help)
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
say() { printf '\033[1m[demo %4ss]\033[0m %s\n' "$(($(date +%s) - t0))" "$*"; }

say "1/3 set-up (venv with pinned packages, Kafka + Delta jars, PostgreSQL; cached after the first run)"
bash scripts/stack.sh setup
. scripts/env.sh
say "2/3 starting the stack: PostgreSQL, Kafka, Airflow (api-server, scheduler, dag-processor, triggerer), demo partners"
bash scripts/stack.sh up postgres kafka airflow partners
say "Airflow UI: ${AIRFLOW__API__BASE_URL}  (user admin, password: $(bash scripts/stack.sh airflow-password))"
say "3/3 running the pipeline end to end"
exec python -m erasure_demo.demo "$@"
