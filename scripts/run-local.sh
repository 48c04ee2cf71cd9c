#!/usr/bin/env bash
# Run the whole service on this machine: Redis (unless REDIS_URL is set), one worker and gunicorn.
# Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8000}"
VENV="${VENV:-.venv}"
RUN_DIR="$(mktemp -d -t sentiment-run-XXXXXX)"
pids=()

stop_all() {
  trap - INT TERM EXIT
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN_DIR"
}
trap stop_all INT TERM EXIT

if [ -z "${REDIS_URL:-}" ]; then
  REDIS_PORT="${REDIS_PORT:-6379}"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN_DIR" --save "" --appendonly yes \
    --logfile "$RUN_DIR/redis.log" &
  pids+=($!)
  export REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$REDIS_PORT" ping >/dev/null || { echo "redis-server did not start; see $RUN_DIR/redis.log"; exit 1; }
fi

"$VENV/bin/python" -m worker &
pids+=($!)
PORT="$PORT" "$VENV/bin/gunicorn" -c web/gunicorn_conf.py 'web:create_app()' &
pids+=($!)

for _ in $(seq 600); do
  if curl -fsS "http://127.0.0.1:${PORT}/ready" >/dev/null 2>&1; then break; fi
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "a process exited during start-up"; exit 1; }; done
  sleep 0.2
done
echo
echo "Sentiment Score API: http://127.0.0.1:${PORT}  (docs: http://127.0.0.1:${PORT}/docs; Ctrl-C stops)"
echo
wait -n "${pids[@]}"
echo "a process exited; stopping the rest"
