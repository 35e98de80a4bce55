# Environment of the local stack. Sourced by scripts/stack.sh, the Makefile and tests' helpers.
# Everything lives under $ERASURE_LOCAL (git-ignored). Ports are loopback-only and overridable.
# shellcheck shell=bash
ERASURE_ROOT="${ERASURE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
export ERASURE_ROOT
# issue 20: the cluster topology (scripts/cluster.sh) brings its own defaults (ports, executor, masters)
if [ "${ERASURE_TOPOLOGY:-local}" = cluster ]; then . "$ERASURE_ROOT/scripts/cluster-env.sh"; fi
export ERASURE_LOCAL="${ERASURE_LOCAL:-$ERASURE_ROOT/.local}"
export ERASURE_VENV="${ERASURE_VENV:-$ERASURE_LOCAL/venv}"

export ERASURE_PG_PORT="${ERASURE_PG_PORT:-25432}"
export ERASURE_KAFKA_PORT="${ERASURE_KAFKA_PORT:-29092}"
export ERASURE_KAFKA_CONTROLLER_PORT="${ERASURE_KAFKA_CONTROLLER_PORT:-29093}"
export ERASURE_AIRFLOW_PORT="${ERASURE_AIRFLOW_PORT:-28080}"
export ERASURE_PARTNER_PORT_BASE="${ERASURE_PARTNER_PORT_BASE:-28100}"
# Demo partner services (the catalog reads these; production points them at the real services).
_pb=$ERASURE_PARTNER_PORT_BASE
export ERASURE_PARTNER_CRM_URL="${ERASURE_PARTNER_CRM_URL:-http://127.0.0.1:$((_pb + 1))}"
export ERASURE_PARTNER_BILLING_URL="${ERASURE_PARTNER_BILLING_URL:-http://127.0.0.1:$((_pb + 2))}"
export ERASURE_PARTNER_SUPPORT_URL="${ERASURE_PARTNER_SUPPORT_URL:-http://127.0.0.1:$((_pb + 3))}"
export ERASURE_PARTNER_MARKETING_URL="${ERASURE_PARTNER_MARKETING_URL:-http://127.0.0.1:$((_pb + 11))}"
export ERASURE_PARTNER_RECOMMENDATIONS_URL="${ERASURE_PARTNER_RECOMMENDATIONS_URL:-http://127.0.0.1:$((_pb + 12))}"
unset _pb

# Secrets are generated once by `stack.sh setup` into a git-ignored file; never in code.
if [ -f "$ERASURE_LOCAL/secrets.env" ]; then
  # shellcheck disable=SC1091
  . "$ERASURE_LOCAL/secrets.env"
fi
export ERASURE_PG_USER="${ERASURE_PG_USER:-erasure}"

_pgpass="${ERASURE_PG_PASSWORD:-}"
export ERASURE_TRACKING_DSN="${ERASURE_TRACKING_DSN:-postgresql://$ERASURE_PG_USER:$_pgpass@127.0.0.1:$ERASURE_PG_PORT/erasure_tracking}"
export ERASURE_HR_DSN="${ERASURE_HR_DSN:-postgresql://$ERASURE_PG_USER:$_pgpass@127.0.0.1:$ERASURE_PG_PORT/partner_hr}"
export ERASURE_KAFKA_BOOTSTRAP="${ERASURE_KAFKA_BOOTSTRAP:-127.0.0.1:$ERASURE_KAFKA_PORT}"
export ERASURE_CATALOG="${ERASURE_CATALOG:-$ERASURE_ROOT/include/catalog}"
export ERASURE_SPARK_JARS_DIR="${ERASURE_SPARK_JARS_DIR:-$ERASURE_LOCAL/jars}"
export ERASURE_SPARK_MASTER="${ERASURE_SPARK_MASTER:-local[2]}"
export ERASURE_WAREHOUSE_DIR="${ERASURE_WAREHOUSE_DIR:-$ERASURE_LOCAL/warehouse}"
export ERASURE_DATASET_DIR="${ERASURE_DATASET_DIR:-$ERASURE_LOCAL/datasets}"

# Airflow: project-local home, Postgres metadata, LocalExecutor, this repo's dags/ and plugins/.
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ERASURE_LOCAL/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ERASURE_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ERASURE_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}" # CeleryExecutor: scripts/cluster-env.sh
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-8}"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://$ERASURE_PG_USER:$_pgpass@127.0.0.1:$ERASURE_PG_PORT/airflow"
export AIRFLOW__API__PORT="$ERASURE_AIRFLOW_PORT"
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$ERASURE_AIRFLOW_PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$ERASURE_AIRFLOW_PORT/execution/"
export AIRFLOW__API_AUTH__JWT_SECRET="${ERASURE_JWT_SECRET:-}"
export AIRFLOW__API__SECRET_KEY="${ERASURE_JWT_SECRET:-}"
export AIRFLOW__CORE__FERNET_KEY="${ERASURE_FERNET_KEY:-}"
# admin; viewer (read only), operator (role user: may change DAG runs, so may act in the Erasure view) and
# outsider (no role: no permission at all) exist for the Erasure view's access tests (docs/ui.md)
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,viewer:viewer,operator:user,outsider:"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$ERASURE_LOCAL/airflow/passwords.json"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-10}"
# issue 20: each DAG file is re-parsed every 30 s (Airflow's default; at 10 s the 14 files cost ~0.8 of
# the 2 cores). A parse that times out or whose result cannot be written (load, DB contention) stamps
# the file as processed without refreshing its DAGs' last_parsed_time, and the dag-processor marks a DAG
# stale (REST API 404 "Dag ... not found") once that lag exceeds stale_dag_threshold (default 50 s, as
# the timeout): so one slow parse under load hid erasure_reconcile at N=10,000. A parse may take 180 s
# and a DAG is deactivated only after 10 minutes without a good parse of a file that was processed.
export AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="${AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL:-30}"
export AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT="${AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT:-180}"
export AIRFLOW__DAG_PROCESSOR__STALE_DAG_THRESHOLD="${AIRFLOW__DAG_PROCESSOR__STALE_DAG_THRESHOLD:-600}"
export AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC=2
export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$ERASURE_LOCAL/airflow/logs"

# Connections, by URI/JSON through the environment (no secrets in code or in the metadata DB).
export AIRFLOW_CONN_ERASURE_TRACKING="postgresql://$ERASURE_PG_USER:$_pgpass@127.0.0.1:$ERASURE_PG_PORT/erasure_tracking"
export AIRFLOW_CONN_ERASURE_AIRFLOW_DB="postgresql://$ERASURE_PG_USER:$_pgpass@127.0.0.1:$ERASURE_PG_PORT/airflow" # retention: scrub run confs, db clean
export AIRFLOW_CONN_ERASURE_KAFKA="{\"conn_type\": \"kafka\", \"extra\": {\"bootstrap.servers\": \"$ERASURE_KAFKA_BOOTSTRAP\"}}"
# the Celery result backend (cluster topology) is the metadata database
if [ "$AIRFLOW__CORE__EXECUTOR" = CeleryExecutor ]; then
  export AIRFLOW__CELERY__RESULT_BACKEND="db+postgresql://$ERASURE_PG_USER:$_pgpass@127.0.0.1:$ERASURE_PG_PORT/airflow"
fi
export AIRFLOW_CONN_SPARK_DEFAULT="{\"conn_type\": \"spark\", \"host\": \"$ERASURE_SPARK_MASTER\"}"
# Ack signing keys (ERASURE_ACK_KEY_<TARGET> from secrets.env): for the demo partners and the CLI, and as
# Airflow connections erasure_ack_<target> (password = key) for the erasure_acks DAG.
for _v in $(compgen -v ERASURE_ACK_KEY_); do
  export "${_v?}"
  case "$_v" in *_PREVIOUS) continue ;; esac
  export "AIRFLOW_CONN_ERASURE_ACK_${_v#ERASURE_ACK_KEY_}={\"conn_type\": \"generic\", \"password\": \"${!_v}\"}"
done
unset _v _pgpass

export PATH="$ERASURE_VENV/bin:$PATH"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export PYSPARK_PYTHON="$ERASURE_VENV/bin/python"
# the demo package (erasure_demo: demo driver, partner simulators) is not installed: import it from include/
case ":${PYTHONPATH:-}:" in *":$ERASURE_ROOT/include:"*) ;; *) export PYTHONPATH="$ERASURE_ROOT/include${PYTHONPATH:+:$PYTHONPATH}" ;; esac
export PIP_CACHE_DIR="$ERASURE_LOCAL/cache/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
