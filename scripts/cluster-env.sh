# Defaults of the cluster topology (issue 20): sourced by scripts/env.sh when ERASURE_TOPOLOGY=cluster,
# before its own defaults, so every value here can still be overridden from the environment.
# Its own state folder, Airflow home and ports (24xxx: apart from the local stack's 25xxx/28xxx/29xxx),
# the local stack's venv, jars and Kafka libraries. Started by scripts/cluster.sh (make cluster-up).
# shellcheck shell=bash
export ERASURE_LOCAL="${ERASURE_LOCAL:-$ERASURE_ROOT/.local/cluster}"
export ERASURE_VENV="${ERASURE_VENV:-$ERASURE_ROOT/.local/venv}"
export ERASURE_SPARK_JARS_DIR="${ERASURE_SPARK_JARS_DIR:-$ERASURE_ROOT/.local/jars}"
export ERASURE_KAFKA_LIBS="${ERASURE_KAFKA_LIBS:-$ERASURE_ROOT/.local/kafka/libs}"
export ERASURE_PG_PORT="${ERASURE_PG_PORT:-24432}"
export ERASURE_AIRFLOW_PORT="${ERASURE_AIRFLOW_PORT:-24080}"
export ERASURE_PARTNER_PORT_BASE="${ERASURE_PARTNER_PORT_BASE:-24100}"
export ERASURE_REDIS_PORT="${ERASURE_REDIS_PORT:-24379}"
# three KRaft nodes (broker+controller each); controller port = broker port + 1
export ERASURE_KAFKA_BROKER_PORTS="${ERASURE_KAFKA_BROKER_PORTS:-24192 24292 24392}"
_kb=""
for _p in $ERASURE_KAFKA_BROKER_PORTS; do _kb="${_kb:+$_kb,}127.0.0.1:$_p"; done
export ERASURE_KAFKA_BOOTSTRAP="${ERASURE_KAFKA_BOOTSTRAP:-$_kb}"
export ERASURE_KAFKA_PORT="${ERASURE_KAFKA_PORT:-${ERASURE_KAFKA_BROKER_PORTS%% *}}"
unset _kb _p
export ERASURE_KAFKA_REPLICATION_FACTOR="${ERASURE_KAFKA_REPLICATION_FACTOR:-3}"
export ERASURE_KAFKA_MIN_INSYNC_REPLICAS="${ERASURE_KAFKA_MIN_INSYNC_REPLICAS:-2}"
# Spark standalone: master (web UI on port + 1) and two workers (web UIs on port + 4, + 5)
export ERASURE_SPARK_MASTER_PORT="${ERASURE_SPARK_MASTER_PORT:-24077}"
export ERASURE_SPARK_MASTER="${ERASURE_SPARK_MASTER:-spark://127.0.0.1:$ERASURE_SPARK_MASTER_PORT}"
export ERASURE_SPARK_WORKER_CORES="${ERASURE_SPARK_WORKER_CORES:-2}"
export ERASURE_SPARK_WORKER_MEMORY="${ERASURE_SPARK_WORKER_MEMORY:-3g}"
# cores an application gets unless it asks (spark.cores.max): without it the first application (a
# long-lived driver, a driver left by a killed task) takes every core and the others wait for ever
export ERASURE_SPARK_APP_CORES="${ERASURE_SPARK_APP_CORES:-1}"
# Airflow: CeleryExecutor with Redis as the broker, results in the metadata database
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-CeleryExecutor}"
export AIRFLOW__CELERY__BROKER_URL="${AIRFLOW__CELERY__BROKER_URL:-redis://127.0.0.1:$ERASURE_REDIS_PORT/0}"
export ERASURE_CELERY_WORKERS="${ERASURE_CELERY_WORKERS:-2}"
export AIRFLOW__CELERY__WORKER_CONCURRENCY="${AIRFLOW__CELERY__WORKER_CONCURRENCY:-4}"
# a task instance whose Celery worker died is failed (and retried) after this many seconds without a
# heartbeat (Airflow's default is 300)
export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="${AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT:-90}"
# a task queued to a Celery worker that died before starting it stays `queued` (its message is not
# redelivered before Redis' visibility timeout, hours): the scheduler fails it (retried) after this long
export AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="${AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT:-120}"
export AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL="${AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL:-30}"
