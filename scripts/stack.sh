#!/usr/bin/env bash
# The local stack of the erasure pipeline, started by the project itself (no Docker needed).
#
#   scripts/stack.sh setup            venv + pins, Kafka and Delta jars, Postgres binaries, secrets
#   scripts/stack.sh up [SERVICE...]  start services (default: postgres kafka airflow); idempotent
#   scripts/stack.sh down [SERVICE...] stop what this script started, by PID
#   scripts/stack.sh status           one line per service (with its supervisor's restart count)
#   scripts/stack.sh airflow-password print the Airflow UI/API admin password
#
# SERVICE is one of: postgres kafka airflow partners. Everything lives under .local/ (git-ignored).
# Every long-running process runs under scripts/supervise.py (restarted with back-off when it exits;
# output appended to its log, rotated by size, never truncated). README "Operations".
set -euo pipefail
# runuser/useradd (Postgres runs as its own OS user when we are root) live in sbin, which a minimal
# PATH (cron, `env -i`) may lack: without them Postgres would look stopped and could not be stopped
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env.sh"

L="$ERASURE_LOCAL"
RUN="$L/run"
LOGS="$L/logs"
mkdir -p "$L" "$RUN" "$LOGS" "$L/cache"

KAFKA_VERSION=4.3.1        # kafka-tools 4.4.0 needs packages Maven Central does not serve here
DELTA_VERSIONS="4.4.1 4.4.0"   # 4.4.1 is tried first; 4.4.0 is the newest served here (see README)
PY=python3.11
KLIBS="${ERASURE_KAFKA_LIBS:-$L/kafka/libs}" # the Kafka jars (the cluster topology shares the local stack's)

log() { printf '[stack] %s\n' "$*" >&2; }
die() { # message; when it ends in "see <file>", the file's tail is printed too (CI keeps only stderr)
  printf '[stack] ERROR: %s\n' "$*" >&2
  local f="${*##*see }"
  if [ "$f" != "$*" ] && [ -f "$f" ]; then
    printf '[stack] last lines of %s:\n' "$f" >&2
    tail -n 40 "$f" | sed 's/^/[stack]   | /' >&2
  fi
  exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || die "missing tool '$1': $2"; }

# ---------------------------------------------------------------- helpers
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

show_tail() { # file: its last lines on stderr
  [ -s "$1" ] || return 0
  printf '[stack] last lines of %s:\n' "$1" >&2
  tail -n 40 "$1" | sed 's/^/[stack]   | /' >&2
}

# ---------------------------------------------------------------- supervision
SUPERVISE="$ERASURE_ROOT/scripts/supervise.py"
state_get() { sed -n "s/^$2=//p" "$1" 2>/dev/null | tail -n 1; } # statefile key

supervise() { # name logfile [supervise.py options] -- command...: start it under its supervisor
  local name=$1 logf=$2
  shift 2
  rm -f "$RUN/$name.state"
  setsid nohup "$PY" "$SUPERVISE" --name "$name" --log "$logf" --state "$RUN/$name.state" "$@" \
    >>"$LOGS/supervise.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

start_failed() { # pidfile: the supervisor is gone or its child already exited once
  pid_alive "$1" || return 0
  local r
  r=$(state_get "${1%.pid}.state" restarts)
  [ -n "$r" ] && [ "$r" -gt 0 ]
}

supervised_line() { # pidfile label detail: one status line
  local pf=$1 label=$2 detail=$3 st="${1%.pid}.state" pid
  if ! pid_alive "$pf"; then echo "$label stopped"; return; fi
  pid=$(cat "$pf")
  if [ "$(state_get "$st" supervisor_pid)" != "$pid" ]; then
    echo "$label running  ${detail}(pid $pid, not supervised: restart it with down/up)"
  elif [ "$(state_get "$st" state)" = running ]; then
    echo "$label running  ${detail}(pid $(state_get "$st" child_pid), restarts $(state_get "$st" restarts))"
  else
    echo "$label restarting  (restarts $(state_get "$st" restarts), last exit $(state_get "$st" last_exit) at $(state_get "$st" last_exit_at), next try $(state_get "$st" next_start_at); see $(state_get "$st" log))"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_port_free() { # port service
  if port_open "$1"; then
    die "port $1 (needed by $2) is already in use by another process; stop it or set the port variable (see scripts/env.sh)"
  fi
}

wait_port() { # port name seconds pidfile logfile [other log holding the cause]
  local i=0
  while ! port_open "$1"; do
    i=$((i + 1))
    if start_failed "$4"; then
      [ -n "${6:-}" ] && show_tail "$6"
      stop_pidfile "$4" "$2"
      die "$2 exited during start; see $5"
    fi
    if [ "$i" -ge "$(($3 * 2))" ]; then
      [ -n "${6:-}" ] && show_tail "$6"
      stop_pidfile "$4" "$2"
      die "$2 did not open port $1 within $3 s; see $5"
    fi
    sleep 0.5
  done
}

PG_OS_USER=postgres
as_pg() { # run a command as the postgres OS user when we are root (Postgres refuses root)
  if [ "$(id -u)" = 0 ]; then runuser -u "$PG_OS_USER" -- "$@"; else "$@"; fi
}
ensure_pg_os_user() {
  [ "$(id -u)" = 0 ] || return 0
  id -u postgres >/dev/null 2>&1 && return 0
  PG_OS_USER=erasure_pg
  id -u "$PG_OS_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$PG_OS_USER" || die "cannot create OS user $PG_OS_USER for Postgres"
}

pg_bin() { # Debian's versioned bin dir first (initdb needs `postgres` beside it), else PATH
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then dirname "$(command -v pg_ctl)"; fi
}

# ---------------------------------------------------------------- setup
setup_secrets() {
  setup_ack_keys
  [ -f "$L/secrets.env" ] && return
  log "generating local secrets into $L/secrets.env"
  local gen="import secrets,base64;print"
  umask 077
  {
    echo "ERASURE_PG_PASSWORD=$($PY -c "$gen(secrets.token_hex(16))")"
    echo "ERASURE_JWT_SECRET=$($PY -c "$gen(secrets.token_urlsafe(32))")"
    echo "ERASURE_FERNET_KEY=$($PY -c "$gen(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())")"
    echo "ERASURE_ADMIN_PASSWORD=$($PY -c "$gen(secrets.token_urlsafe(12))")"
  } >"$L/secrets.env"
  umask 022
  setup_ack_keys
}

# Ack signing keys of the demo Kafka partners (docs/kafka.md): added once, also to an older secrets.env.
setup_ack_keys() {
  [ -f "$L/secrets.env" ] || return 0
  local t var
  for t in marketing_events recommendations; do
    var="ERASURE_ACK_KEY_${t^^}"
    grep -q "^$var=" "$L/secrets.env" || echo "$var=$($PY -c 'import secrets;print(secrets.token_hex(32))')" >>"$L/secrets.env"
  done
}

setup_venv() {
  need "$PY" "install Python 3.11"
  local stamp="$ERASURE_VENV/.installed" want
  want=$(cat "$ERASURE_ROOT/pyproject.toml" "$ERASURE_ROOT/constraints.txt" | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  log "installing the Python environment (pinned; ~2-4 min cold, cached in $L/cache/pip)"
  [ -x "$ERASURE_VENV/bin/python" ] || "$PY" -m venv "$ERASURE_VENV"
  "$ERASURE_VENV/bin/pip" install -q "pip==25.3"
  "$ERASURE_VENV/bin/pip" install -q -c "$ERASURE_ROOT/constraints.txt" -e "$ERASURE_ROOT[dev]"
  "$ERASURE_VENV/bin/pip" check >/dev/null || die "pip check failed in $ERASURE_VENV"
  echo "$want" >"$stamp"
}

mvn_fetch() { # pom outdir [extra args]
  local pom=$1 out=$2
  shift 2
  mvn -q -B -Dmaven.repo.local="$L/m2" -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$out" "$@" >"$LOGS/mvn-$(basename "$pom" .xml).log" 2>&1
}

setup_jars() {
  need java "install a Java 17 JDK (apt-get install openjdk-17-jdk-headless)"
  need mvn "install Maven (apt-get install maven)"
  if [ ! -f "$KLIBS/kafka_2.13-$KAFKA_VERSION.jar" ]; then
    log "fetching Apache Kafka $KAFKA_VERSION and its dependencies from Maven Central"
    mkdir -p "$KLIBS"
    mvn_fetch "$ERASURE_ROOT/tools/maven/kafka-pom.xml" "$KLIBS" || die "Kafka download failed; see $LOGS/mvn-kafka-pom.log"
  fi
  if ! ls "$ERASURE_SPARK_JARS_DIR"/delta-spark_4.2_2.13-*.jar >/dev/null 2>&1; then
    mkdir -p "$ERASURE_SPARK_JARS_DIR"
    local v ok=""
    for v in $DELTA_VERSIONS; do
      log "fetching Delta $v jars and the Postgres JDBC driver from Maven Central"
      if mvn_fetch "$ERASURE_ROOT/tools/maven/delta-pom.xml" "$ERASURE_SPARK_JARS_DIR" -Ddelta.version="$v"; then
        ok=$v
        break
      fi
      log "Delta $v is not served: $(grep -m1 -o 'Could not find artifact [^ ]*' "$LOGS/mvn-delta-pom.log" || true)"
    done
    [ -n "$ok" ] || die "no Delta jars could be fetched; see $LOGS/mvn-delta-pom.log"
  fi
}

setup_postgres() {
  if [ -z "$(pg_bin)" ]; then
    log "PostgreSQL server binaries missing: installing Debian's postgresql"
    if [ "$(id -u)" = 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
      sudo -n true 2>/dev/null || die "pg_ctl/initdb missing and no root: apt-get install postgresql"
      sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
  fi
  [ -n "$(pg_bin)" ] || die "PostgreSQL binaries still missing after install"
}

# Debian's chromium for the browser tests of the Erasure UI (docs/ui.md); Playwright never downloads one.
setup_chromium() {
  [ -x /usr/bin/chromium ] && return
  log "chromium missing: installing Debian's chromium (browser tests)"
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo -n true 2>/dev/null || die "chromium missing and no root: apt-get install chromium"
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  [ -x /usr/bin/chromium ] || die "chromium still missing after install"
}

cmd_setup() {
  setup_secrets
  . "$ERASURE_ROOT/scripts/env.sh"
  setup_postgres
  setup_chromium
  setup_jars
  setup_venv
  "$ERASURE_VENV/bin/python" -m erasure.cli keys init --dir "$L/secrets" # receipt keys, once (docs/evidence.md)
  log "setup complete"
}

# ---------------------------------------------------------------- postgres
PGDATA="$L/pg/data"
up_postgres() {
  local bin
  bin=$(pg_bin)
  [ -n "$bin" ] || die "PostgreSQL binaries missing: run scripts/stack.sh setup"
  ensure_pg_os_user
  mkdir -p "$L/pg/run"
  [ "$(id -u)" = 0 ] && chown "$PG_OS_USER" "$L/pg" "$L/pg/run"
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    log "initialising PostgreSQL cluster in $PGDATA"
    local pwfile="$L/pg/.pw"
    printf '%s\n' "$ERASURE_PG_PASSWORD" >"$pwfile"
    [ "$(id -u)" = 0 ] && chown "$PG_OS_USER" "$pwfile"
    as_pg "$bin/initdb" -D "$PGDATA" -U "$ERASURE_PG_USER" --pwfile="$pwfile" -A scram-sha-256 -E UTF8 >>"$LOGS/initdb.log" 2>&1 ||
      die "initdb failed; see $LOGS/initdb.log"
    rm -f "$pwfile"
  fi
  if pid_alive "$RUN/postgres.pid" || as_pg "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    log "postgres already running on 127.0.0.1:$ERASURE_PG_PORT"
  else
    check_port_free "$ERASURE_PG_PORT" postgres
    local as_user=()
    [ "$(id -u)" = 0 ] && as_user=(--user "$PG_OS_USER")
    # the postmaster in the foreground under its supervisor; SIGINT is PostgreSQL's fast shutdown
    supervise postgres "$L/pg/postgres.log" "${as_user[@]}" --stop-signal SIGINT -- \
      "$bin/postgres" -D "$PGDATA" -c listen_addresses=127.0.0.1 -p "$ERASURE_PG_PORT" -k "$L/pg/run" \
      -c max_connections=200 -c fsync=off -c synchronous_commit=off
    local i=0
    until "$bin/pg_isready" -q -h 127.0.0.1 -p "$ERASURE_PG_PORT"; do
      i=$((i + 1))
      if start_failed "$RUN/postgres.pid" || [ "$i" -gt 120 ]; then
        stop_pidfile "$RUN/postgres.pid" postgres
        die "postgres did not start; see $L/pg/postgres.log"
      fi
      sleep 0.5
    done
    log "postgres started on 127.0.0.1:$ERASURE_PG_PORT"
  fi
  export PGPASSWORD="$ERASURE_PG_PASSWORD"
  local db
  for db in airflow erasure_tracking partner_hr; do
    if ! psql -h 127.0.0.1 -p "$ERASURE_PG_PORT" -U "$ERASURE_PG_USER" -d postgres -tAc "select 1 from pg_database where datname='$db'" | grep -q 1; then
      psql -h 127.0.0.1 -p "$ERASURE_PG_PORT" -U "$ERASURE_PG_USER" -d postgres -qc "create database $db" >/dev/null
      log "created database $db"
    fi
  done
  # the demo HR directory (a postgres_table target of the catalog) lives in its own database
  PGOPTIONS="-c client_min_messages=warning" psql "$ERASURE_HR_DSN" -qc "CREATE SCHEMA IF NOT EXISTS hr; CREATE TABLE IF NOT EXISTS hr.directory (
      employee_id text PRIMARY KEY, name text NOT NULL, phone text, home_address text, is_test boolean NOT NULL DEFAULT false)" >/dev/null
  "$ERASURE_VENV/bin/python" -m erasure.cli db upgrade >>"$LOGS/migrate.log" 2>&1 || die "tracking migrations failed; see $LOGS/migrate.log"
  up_hive_metastore
}

# The Hive metastore Spark keeps tables by name in (ERASURE_SPARK_METASTORE_DATABASE, see
# erasure.spark.metastore_conf): its database and schema, created once. DataNucleus' SchemaTool creates
# the schema from the package.jdo of Spark's own hive-metastore jar in one go (left to Spark, DataNucleus
# creates tables lazily inside its transactions and the first CREATE TABLE waits on its own lock).
HIVE_METASTORE_DB=hive_metastore
up_hive_metastore() {
  local db=$HIVE_METASTORE_DB q=(psql -h 127.0.0.1 -p "$ERASURE_PG_PORT" -U "$ERASURE_PG_USER" -tA)
  if ! "${q[@]}" -d postgres -c "select 1 from pg_database where datname='$db'" | grep -q 1; then
    "${q[@]}" -d postgres -qc "create database $db" >/dev/null
    log "created database $db"
  fi
  "${q[@]}" -d "$db" -c "select 1 from information_schema.tables where table_name='TBLS'" | grep -q 1 && return 0
  local jars dir="$L/hive-metastore"
  jars=$("$ERASURE_VENV/bin/python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')
  mkdir -p "$dir"
  (cd "$dir" && unzip -o -q "$jars"/hive-metastore-*.jar package.jdo) || die "package.jdo not found in $jars/hive-metastore-*.jar"
  (
    umask 077
    printf '%s\n' "javax.jdo.option.ConnectionURL=jdbc:postgresql://127.0.0.1:$ERASURE_PG_PORT/$db" \
      "javax.jdo.option.ConnectionDriverName=org.postgresql.Driver" \
      "javax.jdo.option.ConnectionUserName=$ERASURE_PG_USER" \
      "javax.jdo.option.ConnectionPassword=$ERASURE_PG_PASSWORD" \
      "datanucleus.identifierFactory=datanucleus1" \
      "datanucleus.rdbms.useLegacyNativeValueStrategy=true" \
      "datanucleus.schema.autoCreateAll=true" >"$dir/datanucleus.properties"
  )
  java -cp "$jars/*:$(ls "$ERASURE_SPARK_JARS_DIR"/postgresql-*.jar | head -n 1)" org.datanucleus.store.schema.SchemaTool \
    -create -api JDO -props "$dir/datanucleus.properties" "$dir/package.jdo" >>"$LOGS/hive-metastore.log" 2>&1 ||
    { rm -f "$dir/datanucleus.properties"; die "Hive metastore schema creation failed; see $LOGS/hive-metastore.log"; }
  rm -f "$dir/datanucleus.properties"
  log "created the Hive metastore schema in database $db"
}

down_postgres() {
  ensure_pg_os_user
  local bin
  bin=$(pg_bin)
  if pid_alive "$RUN/postgres.pid"; then stop_pidfile "$RUN/postgres.pid" postgres; return 0; fi
  [ -f "$PGDATA/postmaster.pid" ] || return 0
  if as_pg "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >>"$LOGS/pg-stop.log" 2>&1; then
    log "postgres stopped"
  elif as_pg "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    die "postgres could not be stopped; see $LOGS/pg-stop.log"
  fi # else it was not running (a stale postmaster.pid)
}

# ---------------------------------------------------------------- kafka
KDIR="$L/kafka"
up_kafka() {
  [ -f "$KLIBS/kafka_2.13-$KAFKA_VERSION.jar" ] || die "Kafka jars missing: run scripts/stack.sh setup"
  if pid_alive "$RUN/kafka.pid"; then
    log "kafka already running on $ERASURE_KAFKA_BOOTSTRAP"
  else
    check_port_free "$ERASURE_KAFKA_PORT" kafka
    check_port_free "$ERASURE_KAFKA_CONTROLLER_PORT" "kafka controller"
    mkdir -p "$KDIR/data"
    sed -e "s|@PORT@|$ERASURE_KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$ERASURE_KAFKA_CONTROLLER_PORT|g" \
      -e "s|@LOG_DIRS@|$KDIR/data|g" "$ERASURE_ROOT/tools/kafka/server.properties.in" >"$KDIR/server.properties"
    cat >"$KDIR/log4j2.properties" <<EOF
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=FILE
appender.file.type=File
appender.file.name=FILE
appender.file.fileName=$LOGS/kafka-server.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=WARN
logger.apache.name=org.apache
logger.apache.level=WARN
EOF
    local cp="$KLIBS/*"
    local jopts=(-Xms256m -Xmx768m -XX:+UseG1GC -Dlog4j2.configurationFile="$KDIR/log4j2.properties")
    if [ ! -f "$KDIR/data/meta.properties" ]; then
      local id
      id=$(java -cp "$cp" "${jopts[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
      java -cp "$cp" "${jopts[@]}" kafka.tools.StorageTool format --standalone -t "$id" -c "$KDIR/server.properties" \
        >>"$LOGS/kafka-format.log" 2>&1 || die "formatting KRaft storage failed; see $LOGS/kafka-format.log"
      log "formatted KRaft storage (cluster $id)"
    fi
    supervise kafka "$LOGS/kafka.out" -- java -cp "$cp" "${jopts[@]}" kafka.Kafka "$KDIR/server.properties"
    wait_port "$ERASURE_KAFKA_PORT" kafka 90 "$RUN/kafka.pid" "$LOGS/kafka.out" "$LOGS/kafka-server.log"
    log "kafka started on $ERASURE_KAFKA_BOOTSTRAP"
  fi
  # retried inside until the broker has registered with its controller (erasure.kafka_admin.ensure_topics)
  if ! "$ERASURE_VENV/bin/python" -m erasure.cli kafka-topics >>"$LOGS/topics.log" 2>&1; then
    local f
    for f in "$LOGS/kafka.out" "$LOGS/kafka-server.log"; do
      [ -s "$f" ] && { log "last lines of $f:"; tail -n 20 "$f" | sed 's/^/[stack]   | /' >&2; }
    done
    die "creating topics failed; see $LOGS/topics.log"
  fi
}

stop_pidfile() { # pidfile name: the supervisor stops its child (stop signal, then SIGKILL after 30 s)
  pid_alive "$1" || { rm -f "$1"; return 0; }
  local pid i child
  pid=$(cat "$1")
  child=$(state_get "${1%.pid}.state" child_pid)
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 90); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    [ -n "$child" ] && { kill -KILL -- "-$child" 2>/dev/null || true; }
  fi
  rm -f "$1"
  log "$2 stopped"
}

down_kafka() { stop_pidfile "$RUN/kafka.pid" kafka; }

# ---------------------------------------------------------------- airflow
AIRFLOW_COMPONENTS="api-server scheduler dag-processor triggerer"
up_airflow() {
  mkdir -p "$AIRFLOW_HOME"
  if [ ! -f "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" ]; then
    printf '{"admin": "%s"}\n' "$ERASURE_ADMIN_PASSWORD" >"$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
  fi
  airflow db migrate >>"$LOGS/airflow-migrate.log" 2>&1 || die "airflow db migrate failed; see $LOGS/airflow-migrate.log"
  # per-target pools from the catalog (issue 4); `pools import` upserts, so this is idempotent
  "$ERASURE_VENV/bin/python" -m erasure.cli pools >"$RUN/pools.json" 2>>"$LOGS/airflow-pools.log" &&
    airflow pools import "$RUN/pools.json" >>"$LOGS/airflow-pools.log" 2>&1 ||
    die "creating the Airflow pools failed; see $LOGS/airflow-pools.log"
  local c started=""
  for c in $AIRFLOW_COMPONENTS; do
    if pid_alive "$RUN/airflow-$c.pid"; then continue; fi
    [ "$c" = api-server ] && check_port_free "$ERASURE_AIRFLOW_PORT" "airflow api-server"
    supervise "airflow-$c" "$LOGS/airflow-$c.log" -- "$ERASURE_VENV/bin/airflow" "$c"
    started="$started $c"
  done
  wait_port "$ERASURE_AIRFLOW_PORT" "airflow api-server" 120 "$RUN/airflow-api-server.pid" "$LOGS/airflow-api-server.log"
  local i=0
  until curl -sf "http://127.0.0.1:$ERASURE_AIRFLOW_PORT/api/v2/monitor/health" >/dev/null; do
    i=$((i + 1)); [ $i -gt 120 ] && die "airflow api-server not healthy; see $LOGS/airflow-api-server.log"; sleep 1
  done
  [ -n "$started" ] && log "airflow started:$started (http://127.0.0.1:$ERASURE_AIRFLOW_PORT, user admin)" || log "airflow already running"
}

down_airflow() {
  local c
  for c in $AIRFLOW_COMPONENTS; do stop_pidfile "$RUN/airflow-$c.pid" "airflow $c"; done
}

# ---------------------------------------------------------------- demo partners
up_partners() {
  if pid_alive "$RUN/partners.pid"; then log "partners already running"; return; fi
  supervise partners "$LOGS/partners.log" -- "$ERASURE_VENV/bin/python" -m erasure_demo.partners.run --catalog "$ERASURE_CATALOG"
  wait_port "${ERASURE_PARTNER_CRM_URL##*:}" partners 60 "$RUN/partners.pid" "$LOGS/partners.log"
  log "demo partners started (HTTP from port $ERASURE_PARTNER_PORT_BASE, Kafka consumers)"
}
down_partners() { stop_pidfile "$RUN/partners.pid" partners; }

# ---------------------------------------------------------------- commands
cmd_up() {
  [ -f "$L/secrets.env" ] && [ -x "$ERASURE_VENV/bin/python" ] || die "not set up: run scripts/stack.sh setup first"
  local s list=${*:-postgres kafka airflow}
  for s in $list; do
    case $s in
      postgres | kafka | airflow | partners) "up_$s" ;;
      *) die "unknown service '$s' (postgres kafka airflow partners)" ;;
    esac
  done
}

cmd_down() {
  local s list=${*:-partners airflow kafka postgres}
  for s in $list; do
    case $s in
      postgres | kafka | airflow | partners) "down_$s" ;;
      *) die "unknown service '$s'" ;;
    esac
  done
}

cmd_status() {
  ensure_pg_os_user
  local bin
  bin=$(pg_bin)
  if pid_alive "$RUN/postgres.pid"; then
    supervised_line "$RUN/postgres.pid" "postgres  " "127.0.0.1:$ERASURE_PG_PORT "
  elif [ -n "$bin" ] && [ -f "$PGDATA/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    echo "postgres   running  127.0.0.1:$ERASURE_PG_PORT (not supervised: restart it with down/up)"
  else echo "postgres   stopped"; fi
  supervised_line "$RUN/kafka.pid" "kafka     " "$ERASURE_KAFKA_BOOTSTRAP "
  local c
  for c in $AIRFLOW_COMPONENTS; do
    supervised_line "$RUN/airflow-$c.pid" "$(printf 'airflow %-14s' "$c")" ""
  done
  supervised_line "$RUN/partners.pid" "partners  " ""
}

# sourced (scripts/cluster.sh uses its functions): define only
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0
case "${1:-}" in
  setup) cmd_setup ;;
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  airflow-password) echo "$ERASURE_ADMIN_PASSWORD" ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
