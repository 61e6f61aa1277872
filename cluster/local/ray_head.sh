#!/usr/bin/env bash
# A local Ray head for tests and demos, started in its own session so it can be stopped by that
# session id alone (`ray stop` would kill every Ray process on the machine, other users' included).
#   cluster/local/ray_head.sh start DIR PORT   -> writes DIR/sid and DIR/ray.env
#   cluster/local/ray_head.sh stop DIR
# RAY_AUTH_MODE must be the same for the head, every driver and the CLI: we pin it in ray.env.
set -euo pipefail
cmd=${1:?start|stop}; DIR=${2:?state dir}
RAY=${RAY_BIN:-ray}

stop() {
  [ -f "$DIR/sid" ] || return 0
  local sid; sid=$(cat "$DIR/sid")
  pkill -TERM -s "$sid" 2>/dev/null || true
  for _ in $(seq 40); do pgrep -s "$sid" >/dev/null || break; sleep 0.5; done
  pkill -KILL -s "$sid" 2>/dev/null || true
  rm -f "$DIR/sid"
}

start() {
  local port=${3:?port}
  stop
  mkdir -p "$DIR"
  export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
  # This head's own State API (its dashboard): exported before `ray start` so Ray Train's placement-group
  # cleaner asks this instance, not another one on the machine (ENVIRONMENT.md §4b).
  export RAY_API_SERVER_ADDRESS=http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}
  # Optional fixed ports, so several heads can share one machine (each its own range).
  local extra=()
  [ -n "${RAY_CLIENT_SERVER_PORT:-}" ] && extra+=(--ray-client-server-port="$RAY_CLIENT_SERVER_PORT")
  [ -n "${RAY_DASHBOARD_AGENT_PORT:-}" ] && extra+=(--dashboard-agent-listen-port="$RAY_DASHBOARD_AGENT_PORT")
  [ -n "${RAY_MIN_WORKER_PORT:-}" ] && extra+=(--min-worker-port="$RAY_MIN_WORKER_PORT" \
                                               --max-worker-port="${RAY_MAX_WORKER_PORT:?}")
  setsid "$RAY" start --head --port="$port" --num-cpus="${RAY_NUM_CPUS:-2}" --disable-usage-stats \
    --temp-dir="$DIR/tmp" --object-store-memory="${RAY_OBJECT_STORE_BYTES:-2000000000}" \
    --dashboard-host=127.0.0.1 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" "${extra[@]}" >"$DIR/start.log" 2>&1 \
    || { echo "ray start failed:" >&2; tail -20 "$DIR/start.log" >&2; return 1; }
  local gcs; gcs=$(pgrep -f "gcs_server.*$DIR/tmp" | head -1)
  ps -o sid= -p "$gcs" | tr -d ' ' > "$DIR/sid"
  cat > "$DIR/ray.env" <<EOE
export RAY_AUTH_MODE=disabled
export RAY_USAGE_STATS_ENABLED=0
export RAY_ADDRESS=127.0.0.1:$port
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}
EOE
  echo "ray head ready on 127.0.0.1:$port (session $(cat "$DIR/sid"))"
}

case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  *) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
