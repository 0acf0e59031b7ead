#!/usr/bin/env bash
# The labelloop production stack on one machine, without Docker:
#   Prefect server on Postgres, MLflow tracking server on Postgres + an artifact directory,
#   a Prefect process worker, and (optional) Label Studio via infra/labelstudio.sh.
#
#   infra/stack.sh up        # databases (idempotent), Prefect server, MLflow server, worker [, Label Studio]
#   infra/stack.sh status    # one line per component; exit 0 only when all started components answer
#   infra/stack.sh down      # stops what this script started (pid files), leaves databases and data
#   infra/stack.sh worker    # start the worker alone (idempotent)
#   infra/stack.sh deploy    # register the deployments (`labelloop deploy`) against this stack, then ensure the worker
#   infra/stack.sh env       # print the exports a shell needs to talk to this stack
#   infra/stack.sh drop-db   # DROP the two databases (asks nothing: only for throwaway stacks, e.g. tests)
#
# Environment (all optional; docker-compose.yml uses the same names and defaults):
#   STACK_DIR        state: pid files, logs, PREFECT_HOME, MLflow artifacts    (default: <repo>/.stack)
#   PG_HOST PG_PORT PG_USER PGPASSWORD   Postgres to use            (default: 127.0.0.1 5432 postgres, trust auth)
#   PREFECT_DB MLFLOW_DB                 database names              (default: labelloop_prefect, labelloop_mlflow)
#   PREFECT_PORT MLFLOW_PORT             ports on 127.0.0.1           (default: 4200, 5000)
#   STACK_HOST                           bind address                 (default: 127.0.0.1)
#   WORK_POOL                            process work pool            (default: labelloop)
#   WITH_WORKER=0                        do not start the worker with `up`
#   WITH_LABELSTUDIO=1                   also start Label Studio (infra/labelstudio.sh up; ~3 min first time)
#   STACK_START_TIMEOUT                  seconds to wait per server   (default: 180)
#   PYTHON_BIN                           venv bin dir                 (default: <repo>/.venv/bin)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$ROOT/.stack}"
PG_HOST="${PG_HOST:-127.0.0.1}"
PG_PORT="${PG_PORT:-5432}"
PG_USER="${PG_USER:-postgres}"
PREFECT_DB="${PREFECT_DB:-labelloop_prefect}"
MLFLOW_DB="${MLFLOW_DB:-labelloop_mlflow}"
STACK_HOST="${STACK_HOST:-127.0.0.1}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
WORK_POOL="${WORK_POOL:-labelloop}"
WITH_WORKER="${WITH_WORKER:-1}"
WITH_LABELSTUDIO="${WITH_LABELSTUDIO:-0}"
STACK_START_TIMEOUT="${STACK_START_TIMEOUT:-180}"
PYTHON_BIN="${PYTHON_BIN:-$ROOT/.venv/bin}"

PREFECT_URL="http://${STACK_HOST}:${PREFECT_PORT}"
MLFLOW_URL="http://${STACK_HOST}:${MLFLOW_PORT}"
PG_AUTH="${PG_USER}${PGPASSWORD:+:${PGPASSWORD}}"
PREFECT_DB_URL="postgresql+asyncpg://${PG_AUTH}@${PG_HOST}:${PG_PORT}/${PREFECT_DB}"
MLFLOW_DB_URL="postgresql://${PG_AUTH}@${PG_HOST}:${PG_PORT}/${MLFLOW_DB}"
ARTIFACTS_DIR="$STACK_DIR/mlartifacts"

log() { echo "[stack] $*" >&2; }
die() { echo "[stack] error: $*" >&2; exit 1; }

export PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
export MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1

prepare_dir() {
  mkdir -p "$STACK_DIR" "$ARTIFACTS_DIR" "$STACK_DIR/prefect-home"
  # Machine state (pids, logs, artifacts): keep it out of git even if .gitignore does not name it.
  [ -f "$STACK_DIR/.gitignore" ] || printf '*\n' >"$STACK_DIR/.gitignore"
}

# The environment every client of this stack (CLI, deploy, worker, flow runs) needs.
client_env() {
  export PREFECT_API_URL="${PREFECT_URL}/api"
  export PREFECT_HOME="$STACK_DIR/prefect-home"
  export LABELLOOP_TRACKING_URI="$MLFLOW_URL"   # what labelloop's CLI, flows and tasks read (labelloop/tasks/environment.py)
  export MLFLOW_TRACKING_URI="$MLFLOW_URL"      # for the mlflow CLI / client in a shell
}

need_postgres() {
  command -v psql >/dev/null 2>&1 || die "psql not found. Provide Postgres: 'apt-get install -y postgresql postgresql-client' \
(then 'service postgresql start'), or run one in Docker: 'docker run -d --name labelloop-pg -p 5432:5432 \
-e POSTGRES_HOST_AUTH_METHOD=trust postgres:16', or point PG_HOST/PG_PORT/PG_USER/PGPASSWORD at an existing server."
  if ! pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; then
    die "no Postgres answers at $PG_HOST:$PG_PORT. Start it ('service postgresql start'), run one in Docker \
('docker run -d --name labelloop-pg -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16'), \
or set PG_HOST/PG_PORT/PG_USER/PGPASSWORD to an existing server."
  fi
}

psql_admin() { psql -v ON_ERROR_STOP=1 -qAt -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"; }

ensure_db() {
  local name="$1"
  if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$name'")" = "1" ]; then
    log "database $name exists"
  else
    createdb -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$name" || \
      [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$name'")" = "1" ] || die "could not create database $name"
    log "database $name created"
  fi
}

drop_db() {
  psql_admin -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" && log "database $1 dropped"
}

pid_file() { echo "$STACK_DIR/$1.pid"; }
log_file() { echo "$STACK_DIR/$1.log"; }

running() {
  local file; file="$(pid_file "$1")"
  [ -f "$file" ] && kill -0 "$(cat "$file")" 2>/dev/null
}

# Start a command in its own session (process group = its pid), log to STACK_DIR/<name>.log.
start_bg() {
  local name="$1"; shift
  if running "$name"; then log "$name already running (pid $(cat "$(pid_file "$name")"))"; return 0; fi
  setsid "$@" >>"$(log_file "$name")" 2>&1 < /dev/null &
  echo $! >"$(pid_file "$name")"
  log "$name started (pid $!, log $(log_file "$name"))"
}

wait_http() {
  local name="$1" url="$2" started=$SECONDS
  while (( SECONDS - started < STACK_START_TIMEOUT )); do
    if curl -fsS -o /dev/null --max-time 3 "$url" 2>/dev/null; then
      log "$name answers at $url after $(( SECONDS - started )) s"
      return 0
    fi
    running "$name" || { tail -n 30 "$(log_file "$name")" >&2; die "$name exited during start (log $(log_file "$name"))"; }
    sleep 1
  done
  tail -n 30 "$(log_file "$name")" >&2
  die "$name did not answer $url within ${STACK_START_TIMEOUT}s (log $(log_file "$name"))"
}

stop_one() {
  local name="$1" file; file="$(pid_file "$1")"
  if ! [ -f "$file" ]; then return 0; fi
  local pid; pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
    log "$name stopped (pid $pid)"
  fi
  rm -f "$file"
}

start_prefect() {
  ensure_db "$PREFECT_DB"
  PREFECT_HOME="$STACK_DIR/prefect-home" \
  PREFECT_API_DATABASE_CONNECTION_URL="$PREFECT_DB_URL" \
  PREFECT_UI_API_URL="${PREFECT_URL}/api" \
  PREFECT_SERVER_API_HOST="$STACK_HOST" PREFECT_SERVER_API_PORT="$PREFECT_PORT" \
    start_bg prefect "$PYTHON_BIN/prefect" server start --host "$STACK_HOST" --port "$PREFECT_PORT"
}

start_mlflow() {
  ensure_db "$MLFLOW_DB"
  # The store URI (it may hold PGPASSWORD) goes through the environment, not argv: `ps` shows argv.
  MLFLOW_BACKEND_STORE_URI="$MLFLOW_DB_URL" start_bg mlflow "$PYTHON_BIN/mlflow" server \
    --artifacts-destination "$ARTIFACTS_DIR" --host "$STACK_HOST" --port "$MLFLOW_PORT" --workers 1
}

start_worker() {
  running prefect || curl -fsS -o /dev/null --max-time 3 "${PREFECT_URL}/api/health" || die "no Prefect server at $PREFECT_URL: run 'infra/stack.sh up' first"
  (
    client_env
    cd "$ROOT"
    start_bg worker "$PYTHON_BIN/prefect" worker start --pool "$WORK_POOL" --type process --name "labelloop-worker-$(hostname)-$PREFECT_PORT"
  )
}

start_labelstudio() {
  if [ -x "$ROOT/infra/labelstudio.sh" ]; then
    log "Label Studio: infra/labelstudio.sh up (first run installs its venv and migrates: minutes)"
    "$ROOT/infra/labelstudio.sh" up
  else
    log "WITH_LABELSTUDIO=1 but infra/labelstudio.sh is missing: skipped"
  fi
}

status_one() {
  local name="$1" url="$2"
  if curl -fsS -o /dev/null --max-time 3 "$url" 2>/dev/null; then
    echo "$name: up      $url$(running "$name" && echo " (pid $(cat "$(pid_file "$name")"))")"
  elif running "$name"; then
    echo "$name: starting (pid $(cat "$(pid_file "$name")")), $url not answering yet"; return 1
  else
    echo "$name: down"; return 1
  fi
}

print_env() {
  cat <<EOF
export PREFECT_API_URL=${PREFECT_URL}/api
export LABELLOOP_TRACKING_URI=${MLFLOW_URL}
export MLFLOW_TRACKING_URI=${MLFLOW_URL}
export PREFECT_HOME=${STACK_DIR}/prefect-home
EOF
}

# The servers' Python needs a Postgres driver for MLflow (Prefect uses asyncpg, a Prefect dependency).
ensure_python_deps() {
  [ -x "$PYTHON_BIN/prefect" ] && [ -x "$PYTHON_BIN/mlflow" ] || die "no Prefect/MLflow in $PYTHON_BIN: run 'make install' first (or set PYTHON_BIN)"
  if ! "$PYTHON_BIN/python" -c "import psycopg2" 2>/dev/null; then
    log "installing psycopg2-binary (MLflow's Postgres driver) into $PYTHON_BIN"
    if [ -x "$PYTHON_BIN/uv" ]; then "$PYTHON_BIN/uv" pip install --quiet --python "$PYTHON_BIN/python" psycopg2-binary
    else "$PYTHON_BIN/python" -m pip install --quiet psycopg2-binary; fi
  fi
}

cmd="${1:-}"
case "$cmd" in
  up)
    started=$SECONDS
    prepare_dir
    need_postgres
    ensure_python_deps
    start_prefect   # both servers start in parallel (~20 s each on 2 idle cores)
    start_mlflow
    wait_http prefect "${PREFECT_URL}/api/health"
    wait_http mlflow "${MLFLOW_URL}/health"
    [ "$WITH_WORKER" = "1" ] && start_worker
    [ "$WITH_LABELSTUDIO" = "1" ] && start_labelstudio
    print_env >"$STACK_DIR/env"
    log "stack up in $(( SECONDS - started )) s — Prefect UI ${PREFECT_URL}, MLflow UI ${MLFLOW_URL}"
    log "clients: source $STACK_DIR/env   (or: eval \"\$(infra/stack.sh env)\")"
    ;;
  worker)
    prepare_dir
    start_worker
    ;;
  deploy)
    prepare_dir
    client_env
    curl -fsS -o /dev/null --max-time 5 "${PREFECT_URL}/api/health" || die "no Prefect server at $PREFECT_URL: run 'make stack-up' first"
    cd "$ROOT"
    "$PYTHON_BIN/labelloop" deploy --work-pool "$WORK_POOL" "${@:2}"
    start_worker
    ;;
  status)
    rc=0
    status_one prefect "${PREFECT_URL}/api/health" || rc=1
    status_one mlflow "${MLFLOW_URL}/health" || rc=1
    if running worker; then echo "worker: up      pool $WORK_POOL (pid $(cat "$(pid_file worker)"))"; else echo "worker: down"; rc=1; fi
    if [ "$WITH_LABELSTUDIO" = "1" ] && [ -x "$ROOT/infra/labelstudio.sh" ]; then
      "$ROOT/infra/labelstudio.sh" status && echo "labelstudio: up" || { echo "labelstudio: down"; rc=1; }
    fi
    exit $rc
    ;;
  down)
    stop_one worker
    stop_one mlflow
    stop_one prefect
    if [ "$WITH_LABELSTUDIO" = "1" ] && [ -x "$ROOT/infra/labelstudio.sh" ]; then "$ROOT/infra/labelstudio.sh" stop || true; fi
    log "stack down (databases $PREFECT_DB, $MLFLOW_DB and $STACK_DIR kept)"
    ;;
  drop-db)
    need_postgres
    drop_db "$PREFECT_DB"
    drop_db "$MLFLOW_DB"
    ;;
  env)
    print_env
    ;;
  *)
    sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] || exit 2
    ;;
esac
