#!/usr/bin/env bash
# Label Studio for labelloop: install (own venv), start headless, create an access token, stop.
# Shipped in the labelloop package (`labelloop demo --vendor label-studio` runs it from there);
# infra/labelstudio.sh runs it from a checkout with LS_HOME=<repo>.
#
#   infra/labelstudio.sh install   # idempotent: $LS_HOME/.venv-labelstudio with label-studio==$LS_VERSION
#   infra/labelstudio.sh start     # headless admin on 127.0.0.1:$LS_PORT, waits for /health
#   infra/labelstudio.sh token     # personal access token -> $LS_DATA_DIR/token (0600); prints it
#   infra/labelstudio.sh up        # install + start + token (token written, not printed)
#   infra/labelstudio.sh status    # exit 0 when /health answers
#   infra/labelstudio.sh stop      # stops the server this script started (pid file)
#
# Environment (all optional):
#   LS_HOME       where the venv and the data live       (default: the current directory)
#   LS_VENV       venv for the server                    (default: $LS_HOME/.venv-labelstudio)
#   LS_UV         uv to install with                     (default: $LS_HOME/.venv/bin/uv, else uv on PATH, else pip)
#   LS_VERSION    label-studio version                   (default: 1.23.2)
#   LS_DATA_DIR   LABEL_STUDIO_BASE_DATA_DIR             (default: $LS_HOME/.labelstudio)
#   LS_PORT       port on 127.0.0.1                      (default: 8080)
#   LS_USERNAME   admin e-mail                           (default: admin@labelloop.local)
#   LS_PASSWORD   admin password                         (default: from $LS_DATA_DIR/admin-password,
#                                                          generated once with mode 0600)
#   LS_START_TIMEOUT  seconds to wait for /health        (default: 600)
#
# Usage from a shell:  export LABEL_STUDIO_API_KEY="$(infra/labelstudio.sh token)"
# The token is never written to the server log or to stderr by this script.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LS_HOME="$(cd "${LS_HOME:-.}" && pwd)"
LS_VENV="${LS_VENV:-$LS_HOME/.venv-labelstudio}"
LS_VERSION="${LS_VERSION:-1.23.2}"
LS_DATA_DIR="${LS_DATA_DIR:-$LS_HOME/.labelstudio}"
LS_PORT="${LS_PORT:-8080}"
LS_USERNAME="${LS_USERNAME:-admin@labelloop.local}"
LS_START_TIMEOUT="${LS_START_TIMEOUT:-600}"
URL="http://127.0.0.1:${LS_PORT}"
PID_FILE="$LS_DATA_DIR/server-${LS_PORT}.pid"
LOG_FILE="$LS_DATA_DIR/server-${LS_PORT}.log"
TOKEN_FILE="$LS_DATA_DIR/token"
STAMP="$LS_VENV/.installed-label-studio-$LS_VERSION"

log() { echo "[labelstudio] $*" >&2; }

# Both directories hold machine state (and the data dir the admin password and token): keep them
# out of git even before the repo's .gitignore names them.
ignore_dir() { mkdir -p "$1"; [ -f "$1/.gitignore" ] || printf '*\n' >"$1/.gitignore"; }
die() { echo "[labelstudio] error: $*" >&2; exit 1; }

pick_python() {
  local candidate
  for candidate in "${LS_PYTHON:-}" python3.11 python3.12 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1; then echo "$candidate"; return 0; fi
  done
  die "no python3 found (set LS_PYTHON)"
}

password() {
  if [ -n "${LS_PASSWORD:-}" ]; then printf '%s' "$LS_PASSWORD"; return 0; fi
  ignore_dir "$LS_DATA_DIR"
  local file="$LS_DATA_DIR/admin-password"
  if [ ! -s "$file" ]; then
    (umask 077; "$(pick_python)" -c 'import secrets; print(secrets.token_urlsafe(18), end="")' >"$file.tmp")
    mv "$file.tmp" "$file"
  fi
  cat "$file"
}

healthy() { curl -fsS -m 5 "$URL/health" >/dev/null 2>&1; }

cmd_install() {
  if [ -f "$STAMP" ] && [ -x "$LS_VENV/bin/label-studio" ]; then
    log "label-studio $LS_VERSION already installed in $LS_VENV"
    return 0
  fi
  local start=$SECONDS py
  py="$(pick_python)"
  local uv=""
  if [ -n "${LS_UV:-}" ] && [ -x "$LS_UV" ]; then uv="$LS_UV"
  elif [ -x "$LS_HOME/.venv/bin/uv" ]; then uv="$LS_HOME/.venv/bin/uv"
  elif command -v uv >/dev/null 2>&1; then uv="$(command -v uv)"; fi
  log "installing label-studio==$LS_VERSION into $LS_VENV (takes minutes the first time)"
  if [ -n "$uv" ]; then
    [ -x "$LS_VENV/bin/python" ] || "$uv" venv --quiet --python "$py" "$LS_VENV"
    ignore_dir "$LS_VENV"
    "$uv" pip install --quiet --python "$LS_VENV/bin/python" "label-studio==$LS_VERSION"
  else
    [ -x "$LS_VENV/bin/python" ] || "$py" -m venv "$LS_VENV"
    ignore_dir "$LS_VENV"
    "$LS_VENV/bin/python" -m pip install --quiet --upgrade pip
    "$LS_VENV/bin/python" -m pip install --quiet "label-studio==$LS_VERSION"
  fi
  [ -x "$LS_VENV/bin/label-studio" ] || die "install finished but $LS_VENV/bin/label-studio is missing"
  touch "$STAMP"
  log "installed in $((SECONDS - start)) s"
}

cmd_start() {
  [ -x "$LS_VENV/bin/label-studio" ] || die "label-studio is not installed; run: $0 install"
  ignore_dir "$LS_DATA_DIR"
  if healthy; then
    log "a server already answers on $URL"
    return 0
  fi
  if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    log "server pid $(cat "$PID_FILE") is starting; waiting for it"
  else
    local pw
    pw="$(password)"
    log "starting label-studio on $URL (data: $LS_DATA_DIR; log: $LOG_FILE)"
    # setsid: own process group, so `stop` ends the server and its children and nothing else.
    LABEL_STUDIO_BASE_DATA_DIR="$LS_DATA_DIR" \
    LABEL_STUDIO_USERNAME="$LS_USERNAME" \
    LABEL_STUDIO_PASSWORD="$pw" \
    LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true \
    LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=false \
    COLLECT_ANALYTICS=false \
    DJANGO_DB=sqlite \
    setsid "$LS_VENV/bin/label-studio" start --no-browser --host 127.0.0.1 --port "$LS_PORT" \
      --data-dir "$LS_DATA_DIR" >"$LOG_FILE" 2>&1 < /dev/null &
    echo $! >"$PID_FILE"
  fi
  local start=$SECONDS
  until healthy; do
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      tail -n 40 "$LOG_FILE" >&2 || true
      die "label-studio exited before answering /health (log: $LOG_FILE)"
    fi
    if [ $((SECONDS - start)) -ge "$LS_START_TIMEOUT" ]; then
      tail -n 40 "$LOG_FILE" >&2 || true
      die "label-studio did not answer $URL/health within $LS_START_TIMEOUT s"
    fi
    sleep 2
  done
  log "healthy after $((SECONDS - start)) s"
}

cmd_token_file() {
  healthy || die "no server answers on $URL; run: $0 start"
  local pw
  pw="$(password)"
  LS_URL="$URL" LS_USERNAME="$LS_USERNAME" LS_PASSWORD="$pw" LS_TOKEN_FILE="$TOKEN_FILE" \
    "$(pick_python)" "$HERE/labelstudio_token.py"
}

cmd_token() { cmd_token_file; cat "$TOKEN_FILE"; echo; }

cmd_stop() {
  if [ ! -f "$PID_FILE" ]; then log "no pid file at $PID_FILE; nothing to stop"; return 0; fi
  local pid
  pid="$(cat "$PID_FILE")"
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping label-studio (process group $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  fi
  rm -f "$PID_FILE"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  token) cmd_token ;;
  up) cmd_install; cmd_start; cmd_token_file; log "token written to $TOKEN_FILE" ;;
  status) healthy && log "healthy on $URL" ;;
  stop) cmd_stop ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 {install|start|token|up|status|stop|url}" >&2; exit 2 ;;
esac
