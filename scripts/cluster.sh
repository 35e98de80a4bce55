#!/usr/bin/env bash
# The cluster topology of the erasure pipeline on one machine (issue 20): the same DAGs on distributed
# engines, each started for real by this script (no Docker needed).
#
#   scripts/cluster.sh setup            the local set-up (venv, jars, Kafka) + Debian's redis-server, secrets
#   scripts/cluster.sh up               start everything below; idempotent
#   scripts/cluster.sh down             stop what it started, by PID
#   scripts/cluster.sh status           one line per process
#   scripts/cluster.sh kill NAME        SIGKILL one process's child (its supervisor restarts it): fault tests
#
# PostgreSQL (as the local stack); Redis (Debian's redis-server) as the Celery broker; Airflow with the
# CeleryExecutor (api-server, scheduler, dag-processor, triggerer, ERASURE_CELERY_WORKERS=2 workers); a
# Spark standalone master and two workers (spark-class from the pinned pyspark); a three-node KRaft
# Kafka cluster (each node broker+controller) with the pipeline's topics at replication factor 3 and
# min.insync.replicas 2; the demo partners. Defaults: scripts/cluster-env.sh (ports 24xxx, state in
# .local/cluster, the local stack's venv, jars and Kafka libraries), every one overridable.
set -euo pipefail
export ERASURE_TOPOLOGY=cluster
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/stack.sh
. "$HERE/stack.sh" # its functions (supervise, wait_port, stop_pidfile, up_postgres, up_airflow...) and env

# ---------------------------------------------------------------- redis
setup_redis() {
  command -v redis-server >/dev/null 2>&1 && return
  log "redis-server missing: installing Debian's redis-server (the Celery broker)"
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    sudo -n true 2>/dev/null || die "redis-server missing and no root: apt-get install redis-server"
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after install"
}

up_redis() {
  if pid_alive "$RUN/redis.pid"; then log "redis already running"; return; fi
  check_port_free "$ERASURE_REDIS_PORT" redis
  mkdir -p "$L/redis"
  supervise redis "$LOGS/redis.log" -- redis-server --bind 127.0.0.1 --port "$ERASURE_REDIS_PORT" \
    --dir "$L/redis" --appendonly yes --save "" --daemonize no --protected-mode yes
  wait_port "$ERASURE_REDIS_PORT" redis 30 "$RUN/redis.pid" "$LOGS/redis.log"
  log "redis started on 127.0.0.1:$ERASURE_REDIS_PORT"
}
down_redis() { stop_pidfile "$RUN/redis.pid" redis; }

# ---------------------------------------------------------------- kafka: three KRaft nodes
kafka_nodes() { # "id port" per node
  local i=0 p
  for p in $ERASURE_KAFKA_BROKER_PORTS; do i=$((i + 1)); echo "$i $p"; done
}

kafka_props() { # id port voters: server.properties of one node
  local id=$1 port=$2 voters=$3 dir="$L/kafka-$1"
  cat <<EOF
process.roles=broker,controller
node.id=$id
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.quorum.voters=$voters
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=3
default.replication.factor=3
min.insync.replicas=$ERASURE_KAFKA_MIN_INSYNC_REPLICAS
offsets.topic.replication.factor=3
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
unclean.leader.election.enable=false
log.retention.hours=168
EOF
}

up_kafka_cluster() {
  [ -f "$KLIBS/kafka_2.13-$KAFKA_VERSION.jar" ] || die "Kafka jars missing in $KLIBS: run scripts/cluster.sh setup"
  local voters="" id port cid started=""
  while read -r id port; do voters="${voters:+$voters,}$id@127.0.0.1:$((port + 1))"; done < <(kafka_nodes)
  local cp="$KLIBS/*"
  if [ ! -f "$L/kafka-cluster.id" ]; then
    java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 >"$L/kafka-cluster.id"
  fi
  cid=$(cat "$L/kafka-cluster.id")
  while read -r id port; do
    local name="kafka-$id" dir="$L/kafka-$id"
    if pid_alive "$RUN/$name.pid"; then continue; fi
    check_port_free "$port" "$name"
    check_port_free "$((port + 1))" "$name controller"
    mkdir -p "$dir/data"
    kafka_props "$id" "$port" "$voters" >"$dir/server.properties"
    cat >"$dir/log4j2.properties" <<EOF
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=FILE
appender.file.type=File
appender.file.name=FILE
appender.file.fileName=$LOGS/$name-server.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=WARN
logger.apache.name=org.apache
logger.apache.level=WARN
EOF
    local jopts=(-Xms128m -Xmx512m -XX:+UseG1GC -Dlog4j2.configurationFile="$dir/log4j2.properties")
    if [ ! -f "$dir/data/meta.properties" ]; then
      java -cp "$cp" "${jopts[@]}" kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" \
        >>"$LOGS/kafka-format.log" 2>&1 || die "formatting KRaft storage of $name failed; see $LOGS/kafka-format.log"
    fi
    supervise "$name" "$LOGS/$name.out" -- java -cp "$cp" "${jopts[@]}" kafka.Kafka "$dir/server.properties"
    started="$started $name"
  done < <(kafka_nodes)
  while read -r id port; do
    wait_port "$port" "kafka-$id" 120 "$RUN/kafka-$id.pid" "$LOGS/kafka-$id.out" "$LOGS/kafka-$id-server.log"
  done < <(kafka_nodes)
  [ -n "$started" ] && log "kafka cluster started:$started ($ERASURE_KAFKA_BOOTSTRAP)"
  # waits until all three brokers have registered; replication from ERASURE_KAFKA_REPLICATION_FACTOR (3)
  # and ERASURE_KAFKA_MIN_INSYNC_REPLICAS (2)
  "$ERASURE_VENV/bin/python" -m erasure.cli kafka-topics --timeout 180 >>"$LOGS/topics.log" 2>&1 ||
    die "creating topics failed; see $LOGS/topics.log"
}

down_kafka_cluster() {
  local id port
  while read -r id port; do stop_pidfile "$RUN/kafka-$id.pid" "kafka-$id"; done < <(kafka_nodes)
}

# ---------------------------------------------------------------- spark standalone
SPARK_UI_PORT=$((ERASURE_SPARK_MASTER_PORT + 1))
up_spark() {
  export SPARK_DAEMON_MEMORY="${SPARK_DAEMON_MEMORY:-256m}"
  if ! pid_alive "$RUN/spark-master.pid"; then
    check_port_free "$ERASURE_SPARK_MASTER_PORT" spark-master
    SPARK_MASTER_OPTS="-Dspark.deploy.defaultCores=$ERASURE_SPARK_APP_CORES" \
      supervise spark-master "$LOGS/spark-master.log" -- "$ERASURE_VENV/bin/spark-class" \
      org.apache.spark.deploy.master.Master --host 127.0.0.1 --port "$ERASURE_SPARK_MASTER_PORT" \
      --webui-port "$SPARK_UI_PORT"
    wait_port "$ERASURE_SPARK_MASTER_PORT" spark-master 90 "$RUN/spark-master.pid" "$LOGS/spark-master.log"
    log "spark master started: $ERASURE_SPARK_MASTER (UI http://127.0.0.1:$SPARK_UI_PORT)"
  fi
  local i
  for i in 1 2; do
    pid_alive "$RUN/spark-worker-$i.pid" && continue
    mkdir -p "$L/spark/worker-$i"
    supervise "spark-worker-$i" "$LOGS/spark-worker-$i.log" -- "$ERASURE_VENV/bin/spark-class" \
      org.apache.spark.deploy.worker.Worker --host 127.0.0.1 --webui-port "$((ERASURE_SPARK_MASTER_PORT + 3 + i))" \
      --cores "$ERASURE_SPARK_WORKER_CORES" --memory "$ERASURE_SPARK_WORKER_MEMORY" \
      --work-dir "$L/spark/worker-$i" "spark://127.0.0.1:$ERASURE_SPARK_MASTER_PORT"
  done
  # both workers registered with the master (its JSON view lists them ALIVE)
  local n=0 alive=0
  until [ "$alive" -ge 2 ]; do
    alive=$(curl -sf "http://127.0.0.1:$SPARK_UI_PORT/json/" 2>/dev/null | grep -o '"state" *: *"ALIVE"' | wc -l || true)
    n=$((n + 1)); [ $n -gt 120 ] && die "spark workers did not register; see $LOGS/spark-worker-1.log"
    sleep 1
  done
  log "spark workers registered: $alive"
}

down_spark() {
  local i
  for i in 1 2; do stop_pidfile "$RUN/spark-worker-$i.pid" "spark-worker-$i"; done
  stop_pidfile "$RUN/spark-master.pid" spark-master
}

# ---------------------------------------------------------------- celery workers
up_workers() {
  local i
  for i in $(seq 1 "$ERASURE_CELERY_WORKERS"); do
    pid_alive "$RUN/celery-worker-$i.pid" && continue
    # each worker serves its task logs on its own port (the api-server reads running tasks' logs there)
    supervise "celery-worker-$i" "$LOGS/celery-worker-$i.log" -- env \
      AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="$((ERASURE_AIRFLOW_PORT + 10 + i))" \
      "$ERASURE_VENV/bin/airflow" celery worker --celery-hostname "worker-$i@%h" \
      --concurrency "$AIRFLOW__CELERY__WORKER_CONCURRENCY" --pid "$RUN/celery-worker-$i.celery.pid"
  done
  local n=0
  until "$ERASURE_VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import os, sys
from airflow.providers.celery.executors.celery_executor import app
replies = app.control.ping(timeout=2.0) or []
sys.exit(0 if len(replies) >= int(os.environ["ERASURE_CELERY_WORKERS"]) else 1)
EOF
  do
    n=$((n + 1)); [ $n -gt 60 ] && die "celery workers did not answer a ping; see $LOGS/celery-worker-1.log"
    sleep 2
  done
  log "celery workers up: $ERASURE_CELERY_WORKERS (broker $AIRFLOW__CELERY__BROKER_URL)"
}

down_workers() {
  local i
  for i in $(seq 1 "$ERASURE_CELERY_WORKERS"); do stop_pidfile "$RUN/celery-worker-$i.pid" "celery-worker-$i"; done
}

# ---------------------------------------------------------------- commands
cluster_up() {
  [ -f "$L/secrets.env" ] && [ -x "$ERASURE_VENV/bin/python" ] || die "not set up: run scripts/cluster.sh setup first"
  up_postgres
  up_redis
  up_kafka_cluster
  up_spark
  up_airflow
  up_workers
  up_partners
  log "cluster topology up: Airflow http://127.0.0.1:$ERASURE_AIRFLOW_PORT (CeleryExecutor), Spark $ERASURE_SPARK_MASTER, Kafka $ERASURE_KAFKA_BOOTSTRAP"
}

cluster_down() {
  down_partners
  down_workers
  down_airflow
  down_spark
  down_kafka_cluster
  down_redis
  down_postgres
}

cluster_status() {
  cmd_status | grep -v '^kafka '
  supervised_line "$RUN/redis.pid" "redis     " "127.0.0.1:$ERASURE_REDIS_PORT "
  local id port i
  while read -r id port; do supervised_line "$RUN/kafka-$id.pid" "kafka-$id   " "127.0.0.1:$port "; done < <(kafka_nodes)
  supervised_line "$RUN/spark-master.pid" "spark-master" "$ERASURE_SPARK_MASTER "
  for i in 1 2; do supervised_line "$RUN/spark-worker-$i.pid" "spark-worker-$i" ""; done
  for i in $(seq 1 "$ERASURE_CELERY_WORKERS"); do supervised_line "$RUN/celery-worker-$i.pid" "celery-worker-$i" ""; done
}

cluster_kill() { # name: SIGKILL the supervised child (and its process group); its supervisor restarts it
  local st="$RUN/$1.state" child
  [ -f "$st" ] || die "no such process: $1"
  child=$(state_get "$st" child_pid)
  [ -n "$child" ] || die "$1 has no running child"
  kill -KILL -- "-$child" 2>/dev/null || kill -KILL "$child"
  log "killed $1 (pid $child)"
}

case "${1:-}" in
  setup) cmd_setup; setup_redis ;;
  up) cluster_up ;;
  down) cluster_down ;;
  status) cluster_status ;;
  kill) cluster_kill "${2:?name, e.g. celery-worker-1 or kafka-2}" ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
