#!/usr/bin/env bash
# Deploy an overlay to AKS (not run in CI).
#   RESOURCE_GROUP=rg CLUSTER=aks ACR_NAME=sentimentacr TAG=1.0.0 scripts/deploy-aks.sh [prod|dev]
# Needs the KEDA add-on (az aks update --enable-keda) and the ACR attached to the cluster
# (az aks update --attach-acr "$ACR_NAME").
set -euo pipefail
cd "$(dirname "$0")/.."
OVERLAY="${1:-prod}"
: "${RESOURCE_GROUP:?}" "${CLUSTER:?}" "${ACR_NAME:?}"
TAG="${TAG:-$(git rev-parse --short HEAD)}"
REGISTRY="${ACR_NAME}.azurecr.io"
# The registry named in k8s/overlays/prod, replaced here by yours.
OVERLAY_REGISTRY=sentimentacr.azurecr.io

az aks get-credentials --resource-group "$RESOURCE_GROUP" --name "$CLUSTER" --overwrite-existing
kubectl get crd scaledobjects.keda.sh >/dev/null \
  || { echo "KEDA is not installed in $CLUSTER: az aks update -g $RESOURCE_GROUP -n $CLUSTER --enable-keda"; exit 1; }

# The Redis password: a random one on the first deploy; an existing Secret is kept (docs/deployment.md rotates it).
kubectl get namespace sentiment >/dev/null 2>&1 || kubectl create namespace sentiment
kubectl -n sentiment get secret sentiment-redis-auth >/dev/null 2>&1 \
  || kubectl -n sentiment create secret generic sentiment-redis-auth --from-literal=password="$(openssl rand -hex 32)"

# A throw-away overlay on top of the chosen one pins the registry and tag for this deploy.
deploy_dir="k8s/overlays/.deploy-$TAG"
trap 'rm -rf "$deploy_dir"' EXIT
mkdir -p "$deploy_dir"
cat > "$deploy_dir/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../$OVERLAY
images:
  - name: sentiment-web
    newName: $REGISTRY/sentiment-web
    newTag: "$TAG"
  - name: sentiment-worker
    newName: $REGISTRY/sentiment-worker
    newTag: "$TAG"
  - name: $OVERLAY_REGISTRY/sentiment-web
    newName: $REGISTRY/sentiment-web
    newTag: "$TAG"
  - name: $OVERLAY_REGISTRY/sentiment-worker
    newName: $REGISTRY/sentiment-worker
    newTag: "$TAG"
YAML
kubectl apply -k "$deploy_dir"
kubectl -n sentiment rollout status deployment/sentiment-web --timeout=300s
kubectl -n sentiment rollout status deployment/sentiment-worker --timeout=600s
kubectl -n sentiment get pods,hpa,scaledobject
