#!/usr/bin/env bash
# Build both images and push them to Azure Container Registry (not run in CI).
#   ACR_NAME=sentimentacr TAG=1.0.0 scripts/acr-push.sh
# Optional: MODEL_BACKEND=onnx, MODEL_ID=<hub id> (baked in at build time).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ACR_NAME:?set ACR_NAME to the registry name (without .azurecr.io)}"
TAG="${TAG:-$(git rev-parse --short HEAD)}"
REGISTRY="${ACR_NAME}.azurecr.io"

az acr login --name "$ACR_NAME"
docker build -f Dockerfile.web -t "$REGISTRY/sentiment-web:$TAG" .
docker build -f Dockerfile.worker \
  --build-arg MODEL_BACKEND="${MODEL_BACKEND:-onnx}" \
  --build-arg MODEL_ID="${MODEL_ID:-}" \
  -t "$REGISTRY/sentiment-worker:$TAG" .
docker push "$REGISTRY/sentiment-web:$TAG"
docker push "$REGISTRY/sentiment-worker:$TAG"
echo "pushed $REGISTRY/sentiment-web:$TAG and $REGISTRY/sentiment-worker:$TAG"
