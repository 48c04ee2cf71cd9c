#!/usr/bin/env bash
# Smoke test of the images and the compose stack on this machine (docs/deployment.md, "Smoke test";
# not in CI). Builds both images, runs docker-compose.yml as shipped (secrets, redis, redis-cache,
# web, worker and the nginx front door), posts to /predict through the front door, scales the
# workers to 2 and posts again, then brings the stack down and up again. Every step prints "ok" or
# "FAILED: why"; the script stops at the first failure and says which step it was.
#
# Machine constraints it works within:
# - a private dockerd with --storage-driver=vfs, no bridge, no iptables; containers use host networking;
# - nothing can be pulled: missing images get local stand-ins (debootstrap'd bookworm with Debian's
#   python3 tagged python:3.11-slim-bookworm; Debian's redis-server tagged redis:7.2.5-bookworm;
#   Debian's nginx, with the official image's template step, tagged nginx:1.27.5-alpine);
# - the compose engine is Debian's docker-compose 1.29: scripts/compose_v1.py drops the few Compose
#   v2 options it refuses, and prints each one;
# - pip inside builds gets the host CA bundle as a build secret, never baked into a layer.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
WORK="${SMOKE_DIR:-/tmp/sentiment-smoke}"
SOCKET="$WORK/docker.sock"
export DOCKER_HOST="unix://$SOCKET"
DOCKER=/usr/bin/docker   # Debian's docker.io client: its builder has BuildKit built in
CA_BUNDLE="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
V1="$WORK/docker-compose.v1.yml"
RESOLVED="$WORK/docker-compose.resolved.yml"
COMPOSE=(docker-compose -p sentiment-smoke --project-directory "$REPO" -f "$RESOLVED")
# The front door: compose's only public API port (host networking: 127.0.0.1:18080 here).
DOOR=http://127.0.0.1:18080
current_step=""

step() { current_step="$1"; printf '\n== %s\n' "$1"; step_started=$(date +%s); }
ok() { echo "ok: $current_step ($(( $(date +%s) - step_started ))s)${1:+ - $1}"; }
fail() { echo "FAILED at step '$current_step': $*" >&2; cleanup; exit 1; }
cleanup() {
  [ -S "$SOCKET" ] && "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1
  [ -f "$WORK/dockerd.pid" ] && kill "$(cat "$WORK/dockerd.pid")" 2>/dev/null
  rm -rf "$REPO/local-wheels"
}
trap 'cleanup; exit 130' INT TERM

step "tools"
for tool in dockerd debootstrap docker-compose curl; do
  command -v "$tool" >/dev/null || fail "$tool missing: apt-get install docker.io debootstrap docker-compose curl"
done
smoke_started=$(date +%s)
[ -x "$DOCKER" ] || fail "$DOCKER missing: apt-get install docker.io"
ok

step "start a private dockerd (vfs, no bridge, no iptables)"
mkdir -p "$WORK"
dockerd --storage-driver=vfs --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
  -H "unix://$SOCKET" --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
  >"$WORK/dockerd.log" 2>&1 &
for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
"$DOCKER" info >/dev/null 2>&1 || fail "dockerd did not start; see $WORK/dockerd.log"
ok

step "base image python:3.11-slim-bookworm"
if "$DOCKER" image inspect python:3.11-slim-bookworm >/dev/null 2>&1; then
  ok "present"
else
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 || fail "debootstrap; see $WORK/debootstrap.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "$DOCKER" import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin' - python:3.11-slim-bookworm >/dev/null \
    || fail "docker import"
  ok "built a local stand-in ($("$DOCKER" run --rm --network host python:3.11-slim-bookworm python --version))"
fi

step "redis image redis:7.2.5-bookworm"
if "$DOCKER" image inspect redis:7.2.5-bookworm >/dev/null 2>&1; then
  ok "present"
else
  printf 'FROM python:3.11-slim-bookworm\nRUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*\n' \
    | "$DOCKER" build --network host -t redis:7.2.5-bookworm - >"$WORK/redis-build.log" 2>&1 || fail "redis stand-in; see $WORK/redis-build.log"
  ok "built a local stand-in with Debian's redis-server ($("$DOCKER" run --rm --network host redis:7.2.5-bookworm redis-server --version | cut -d' ' -f3))"
fi

step "front door image nginx:1.27.5-alpine"
if "$DOCKER" image inspect nginx:1.27.5-alpine >/dev/null 2>&1; then
  ok "present"
else
  context="$WORK/nginx-standin"  # its own folder: dockerd's data root beside it is not readable as context
  mkdir -p "$context"
  # Debian's nginx, and the official image's one step this stack uses: each
  # /etc/nginx/templates/*.template, filled in by envsubst (defined variables only), becomes a conf.d file.
  printf '%s\n' 'FROM python:3.11-slim-bookworm' \
    'RUN apt-get update && apt-get install -y --no-install-recommends nginx gettext-base && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/*' \
    'COPY entrypoint.sh /docker-entrypoint.sh' \
    'ENTRYPOINT ["/bin/sh", "/docker-entrypoint.sh"]' >"$context/Dockerfile"
  cat >"$context/entrypoint.sh" <<'ENTRYPOINT'
set -eu
defined=$(env | cut -d= -f1 | sed 's/^/$/' | tr '\n' ' ')
for template in /etc/nginx/templates/*.template; do
  [ -e "$template" ] || continue
  envsubst "$defined" <"$template" >"/etc/nginx/conf.d/$(basename "$template" .template)"
done
exec nginx -g 'daemon off;'
ENTRYPOINT
  "$DOCKER" build --network host -t nginx:1.27.5-alpine "$context" >"$WORK/nginx-build.log" 2>&1 \
    || fail "nginx stand-in; see $WORK/nginx-build.log"
  ok "built a local stand-in with Debian's nginx ($("$DOCKER" run --rm --network host --entrypoint nginx nginx:1.27.5-alpine -v 2>&1))"
fi

step "build sentiment-web:1.0.0"
DOCKER_BUILDKIT=1 "$DOCKER" build --network host --secret id=pip_cert,src="$CA_BUNDLE" \
  -f Dockerfile.web -t sentiment-web:1.0.0 . >"$WORK/web-build.log" 2>&1 || fail "see $WORK/web-build.log"
ok "$("$DOCKER" image inspect -f '{{.Size}}' sentiment-web:1.0.0 | awk '{printf "%.0f MB", $1/1e6}')"

step "build sentiment-worker:1.0.0 (torch from local-wheels/)"
mkdir -p local-wheels
torch_wheel="$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1)"
[ -n "$torch_wheel" ] && cp "$torch_wheel" local-wheels/
DOCKER_BUILDKIT=1 "$DOCKER" build --network host --secret id=pip_cert,src="$CA_BUNDLE" --build-arg TORCH_INDEX_URL= \
  -f Dockerfile.worker -t sentiment-worker:1.0.0 . >"$WORK/worker-build.log" 2>&1 || fail "see $WORK/worker-build.log"
rm -rf local-wheels
ok "$("$DOCKER" image inspect -f '{{.Size}}' sentiment-worker:1.0.0 | awk '{printf "%.0f MB", $1/1e6}')"

live_workers() { curl -fsS -m 2 "$DOOR/ready" 2>/dev/null | grep -o '"workers": [0-9]*' | grep -o '[0-9]*$'; }
wait_for_workers() {
  for _ in $(seq 180); do [ "$(live_workers)" = "$1" ] && return 0; sleep 1; done
  fail "$1 worker(s) never reported ready through the front door: $(curl -sS -m 5 "$DOOR/ready"; "${COMPOSE[@]}" logs --tail 30 2>&1)"
}
predict() {
  curl -fsS -m 60 "$DOOR/predict" -H 'Content-Type: application/json' -d '{"text": ["I hate you.", "I love you."]}' || fail "no answer"
}
check_predict() {
  local answer
  answer="$(predict)"
  echo "$answer"
  echo "$answer" | grep -q '"predictions": \[\[{"label": "NEGATIVE"' || fail "unexpected answer"
  [ -z "${first_answer:-}" ] || [ "$answer" = "$first_answer" ] || fail "a different answer than before: $first_answer"
  first_answer="$answer"
}
redis_password() { "$DOCKER" run --rm -v sentiment-smoke_secrets:/secrets:ro redis:7.2.5-bookworm cat /secrets/redis-password; }

step "docker-compose config: docker-compose.yml as shipped (for Compose v1) + scripts/docker-compose.smoke.yml"
python3 scripts/compose_v1.py docker-compose.yml >"$V1" || fail "translation for Compose v1"
# Host networking has no published ports (docker refuses both at once), so drop them from the
# merged file; everything else is the project's compose file as written.
docker-compose --project-directory "$REPO" -f "$V1" -f scripts/docker-compose.smoke.yml config >"$RESOLVED" || fail "compose config"
python3 - "$RESOLVED" <<'PY' || fail "could not drop published ports"
import sys, yaml
path = sys.argv[1]
config = yaml.safe_load(open(path))
for service in config["services"].values():
    service.pop("ports", None)
yaml.safe_dump(config, open(path, "w"))
PY
ok

step "docker-compose up front-door worker (and what they depend on: secrets, redis, redis-cache, web)"
"${COMPOSE[@]}" up -d front-door worker >"$WORK/compose-up.log" 2>&1 || fail "see $WORK/compose-up.log"
wait_for_workers 1
ready_after=$(( $(date +%s) - step_started ))
ok "ready through the front door ${ready_after}s after up: $(curl -fsS "$DOOR/ready")"

step "POST /predict through the front door, 1 worker"
check_predict
ok

step "a body over MAX_BODY_BYTES: 413 JSON from nginx"
head -c 1100000 /dev/zero | tr '\0' 'a' | sed 's/^/{"text": ["/; s/$/"]}/' >"$WORK/too-big.json"
refused="$(curl -sS -m 30 -o "$WORK/too-big.answer" -w '%{http_code} %{content_type}' "$DOOR/predict" \
  -H 'Content-Type: application/json' --data-binary @"$WORK/too-big.json")"
[ "$refused" = "413 application/json" ] || fail "expected 413 application/json, got $refused: $(head -c 300 "$WORK/too-big.answer")"
grep -q '"error": "payload_too_large"' "$WORK/too-big.answer" || fail "not the service's error shape: $(head -c 300 "$WORK/too-big.answer")"
# Answered by nginx, not passed on: web's own request counter holds no 413.
web_metrics="$(curl -fsS -m 5 http://127.0.0.1:18000/metrics)" || fail "web's /metrics did not answer"
echo "$web_metrics" | grep -q '^sentiment_http_requests_total{' || fail "web's /metrics counts no requests"
! echo "$web_metrics" | grep -q 'status="413"' || fail "web answered the 413, not the front door"
ok "$(cat "$WORK/too-big.answer")"

step "Redis refuses a client without the password"
refusal="$("$DOCKER" run --rm --network host redis:7.2.5-bookworm redis-cli -p 16379 ping 2>&1)"
echo "$refusal" | grep -q NOAUTH || fail "expected NOAUTH, got: $refusal"
ok "$refusal"

step "scale workers to 2"
"${COMPOSE[@]}" up -d --no-recreate --scale worker=2 worker >>"$WORK/compose-up.log" 2>&1 || fail "see $WORK/compose-up.log"
wait_for_workers 2
scaled_after=$(( $(date +%s) - step_started ))
ok "${scaled_after}s: $(curl -fsS "$DOOR/ready")"

step "POST /predict through the front door, 2 workers: the same answer"
check_predict
ok

step "down and up again: the secrets service keeps its passwords"
password="$(redis_password)"
[ -n "$password" ] || fail "no redis password in the secrets volume after the first up"
"${COMPOSE[@]}" down >>"$WORK/compose-up.log" 2>&1 || fail "compose down; see $WORK/compose-up.log"
"${COMPOSE[@]}" up -d front-door worker >>"$WORK/compose-up.log" 2>&1 || fail "second up; see $WORK/compose-up.log"
wait_for_workers 1
[ "$(redis_password)" = "$password" ] || fail "the second up made a new redis password"
check_predict
ok "the same password, and the stack serves again after $(( $(date +%s) - step_started ))s"

step "not run here"
echo "flower, prometheus, grafana: their images (mher/flower, prom/prometheus, grafana/grafana) cannot be pulled on this machine"
ok


step "figures"
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'sentiment|python|redis|nginx'
echo "ready after up: ${ready_after}s; scaled to 2 workers in ${scaled_after}s; whole smoke test: $(( $(date +%s) - smoke_started ))s"
cleanup
ok "stack and its volumes removed"
