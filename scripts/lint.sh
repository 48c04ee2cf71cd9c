#!/usr/bin/env bash
# Lint code and deployment files; part of `make test`. Every tool must be present: a missing
# one fails the run loudly rather than skipping its check.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
BIN="$VENV/bin"

step() { printf '\n== %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "LINT FAILED: '$1' is not installed ($2)" >&2; exit 1; }; }

step "ruff"
"$BIN/ruff" check .
"$BIN/ruff" format --check .

step "hadolint"
"$BIN/hadolint" Dockerfile.web Dockerfile.worker && echo "Dockerfile.web, Dockerfile.worker: ok"

step "compose spec (Compose v2), and Debian's docker-compose 1.29 on what scripts/compose_v1.py makes of it"
"$BIN/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml scripts/docker-compose.smoke.yml
need docker-compose "apt-get install docker-compose"
v1="$(mktemp --suffix=.yml)"
"$BIN/python" scripts/compose_v1.py docker-compose.yml >"$v1"
docker-compose --project-directory . -f "$v1" -f scripts/docker-compose.smoke.yml config -q && echo "docker-compose $(docker-compose version --short): ok"
rm -f "$v1"

step "promtool"
need promtool "apt-get install prometheus"
promtool check config deploy/prometheus/prometheus.yml

step "nginx -t (the front door, as make run and compose fill it in)"
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need nginx "apt-get install nginx"  # /usr/sbin: not on a user's PATH
"$BIN/python" -m stack.front_door

step "kustomize + kubernetes-validate --strict"
need kubectl "kubectl is expected on these machines; install it from your distribution or the Kubernetes release"
rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT
for overlay in k8s/overlays/*/; do
  name="$(basename "$overlay")"
  kubectl kustomize "$overlay" > "$rendered/$name.yaml"
  if ! report="$("$BIN/kubernetes-validate" --strict --quiet "$rendered/$name.yaml" 2>&1)"; then
    echo "$report"
    echo "LINT FAILED: $overlay"
    exit 1
  fi
  # No schema exists for KEDA's ScaledObject; tests/test_deploy.py checks it against KEDA's fields.
  grep -v "Couldn't find schema for kind ScaledObject" <<<"$report" || true
  echo "$overlay: $(grep -c '^kind:' "$rendered/$name.yaml") resources valid"
done
echo
echo "lint: all checks passed"
