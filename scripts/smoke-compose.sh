#!/usr/bin/env bash
# Smoke test of the images and the compose stack on this machine (documented in README; not in CI).
# Builds both images, runs redis + redis-cache + web + worker with docker-compose, posts to
# /predict, scales the workers to 2 and posts again. Every step prints "ok" or "FAILED: why";
# the script stops at the first failure and says which step it was.
#
# Machine constraints it works within (see README, "Smoke test"):
# - a private dockerd with --storage-driver=vfs, no bridge, no iptables; containers use host networking;
# - nothing can be pulled: missing base images get local stand-ins (debootstrap'd bookworm with
#   Debian's python3 tagged python:3.11-slim-bookworm; redis from Debian tagged redis:7.2.5-bookworm);
# - pip inside builds gets the host CA bundle as a build secret, never baked into a layer.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
WORK="${SMOKE_DIR:-/tmp/sentiment-smoke}"
SOCKET="$WORK/docker.sock"
export DOCKER_HOST="unix://$SOCKET"
DOCKER=/usr/bin/docker   # Debian's docker.io client: its builder has BuildKit built in
CA_BUNDLE="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
RESOLVED="$WORK/docker-compose.resolved.yml"
COMPOSE=(docker-compose -p sentiment-smoke -f "$RESOLVED")
WEB=http://127.0.0.1:18000
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

live_workers() { curl -fsS -m 2 "$WEB/ready" 2>/dev/null | grep -o '"workers": [0-9]*' | grep -o '[0-9]*$'; }
wait_for_workers() {
  for _ in $(seq 180); do [ "$(live_workers)" = "$1" ] && return 0; sleep 1; done
  fail "$1 worker(s) never reported ready: $(curl -sS -m 5 "$WEB/ready"; "${COMPOSE[@]}" logs --tail 30 2>&1)"
}
check_predict() {
  local answer
  answer="$(curl -fsS -m 60 "$WEB/predict" -H 'Content-Type: application/json' \
    -d "{\"text\": [\"I hate you. $1\", \"I love you. $1\"]}")" || fail "no answer"
  echo "$answer"
  echo "$answer" | grep -q '"predictions": \[\[{"label": "NEGATIVE"' || fail "unexpected answer"
}

step "docker-compose config: docker-compose.yml + scripts/docker-compose.smoke.yml"
# Host networking has no published ports (docker refuses both at once), so drop them from the
# merged file; everything else is the project's compose file as written.
docker-compose -f docker-compose.yml -f scripts/docker-compose.smoke.yml config >"$RESOLVED" || fail "compose config"
python3 - "$RESOLVED" <<'PY' || fail "could not drop published ports"
import sys, yaml
path = sys.argv[1]
config = yaml.safe_load(open(path))
for service in config["services"].values():
    service.pop("ports", None)
yaml.safe_dump(config, open(path, "w"))
PY
ok

step "docker-compose up redis redis-cache web worker (1 worker)"
"${COMPOSE[@]}" up -d redis redis-cache web worker >"$WORK/compose-up.log" 2>&1 || fail "see $WORK/compose-up.log"
wait_for_workers 1
ok "ready after $(( $(date +%s) - step_started ))s: $(curl -fsS "$WEB/ready")"

step "POST /predict with 1 worker"
check_predict one
ok

step "Redis refuses a client without the password"
refusal="$("$DOCKER" run --rm --network host redis:7.2.5-bookworm redis-cli -p 16379 ping 2>&1)"
echo "$refusal" | grep -q NOAUTH || fail "expected NOAUTH, got: $refusal"
ok "$refusal"

step "scale workers to 2"
"${COMPOSE[@]}" up -d --no-recreate --scale worker=2 worker >>"$WORK/compose-up.log" 2>&1 || fail "see $WORK/compose-up.log"
wait_for_workers 2
ok "$(curl -fsS "$WEB/ready")"

step "POST /predict with 2 workers"
check_predict two
ok

step "not run here"
echo "flower, prometheus, grafana: their images (mher/flower, prom/prometheus, grafana/grafana) cannot be pulled on this machine"
ok

step "images"
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'sentiment|python|redis'
cleanup
ok "stack removed"
