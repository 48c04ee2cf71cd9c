"""Deployment files: what linters cannot check (KEDA fields, compose policy, hardened pods)."""

import shutil
import subprocess
import sys

import pytest
import yaml

from tests.support import REPO

# KEDA ScaledObject fields (keda.sh/v1alpha1), from KEDA's documentation: ScaledObject spec and the redis lists scaler.
SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
    "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}  # fmt: skip
SCALE_TARGET_REF = {"apiVersion", "kind", "name", "envSourceContainerName"}
ADVANCED = {"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig", "scalingModifiers"}
HPA_CONFIG = {"name", "behavior"}
TRIGGER = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
REDIS_LIST_METADATA = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "usernameFromEnv", "passwordFromEnv",
    "listName", "listLength", "activationListLength", "enableTLS", "unsafeSsl", "databaseIndex",
}  # fmt: skip


def render(overlay: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is not installed: kustomize overlays cannot be rendered")
    output = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s" / "overlays" / overlay)], check=True, capture_output=True)
    return [doc for doc in yaml.safe_load_all(output.stdout) if doc]


@pytest.fixture(scope="module", params=["dev", "prod"])
def manifests(request) -> list[dict]:
    return render(request.param)


def of_kind(manifests, kind):
    return [doc for doc in manifests if doc["kind"] == kind]


def pod_specs(manifests):
    return [doc["spec"]["template"]["spec"] for doc in manifests if doc["kind"] in ("Deployment", "StatefulSet")]


def test_scaled_object_uses_only_documented_keda_fields(manifests):
    (scaled,) = of_kind(manifests, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC
    assert set(spec["scaleTargetRef"]) <= SCALE_TARGET_REF
    assert set(spec.get("advanced", {})) <= ADVANCED
    assert set(spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {})) <= HPA_CONFIG
    for trigger in spec["triggers"]:
        assert set(trigger) <= TRIGGER
        assert trigger["type"] == "redis"
        assert set(trigger["metadata"]) <= REDIS_LIST_METADATA
        # KEDA reads every metadata value as a string.
        assert all(isinstance(value, str) for value in trigger["metadata"].values())


def test_scaled_object_scales_the_worker_on_the_celery_queue(manifests):
    (scaled,) = of_kind(manifests, "ScaledObject")
    spec = scaled["spec"]
    worker = next(d for d in of_kind(manifests, "Deployment") if d["metadata"]["name"] == spec["scaleTargetRef"]["name"])
    (config,) = of_kind(manifests, "ConfigMap")
    assert spec["triggers"][0]["metadata"]["listName"] == config["data"]["QUEUE_NAME"]
    assert spec["triggers"][0]["metadata"]["address"].startswith(config["data"]["REDIS_URL"].split("//")[1].split(":")[0])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 60, "a worker needs time to finish its batch on SIGTERM"


def test_pods_are_hardened(manifests):
    for pod in pod_specs(manifests):
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"] + pod.get("initContainers", []):
            security = container["securityContext"]
            assert security["capabilities"]["drop"] == ["ALL"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert "limits" in container["resources"] and "requests" in container["resources"]
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), image


def test_service_pods_wait_for_redis_and_have_probes(manifests):
    for deployment in of_kind(manifests, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["initContainers"]] == ["wait-for-redis"]
        (container,) = pod["containers"]
        assert {"startupProbe", "livenessProbe"} <= set(container)
    web = next(d for d in of_kind(manifests, "Deployment") if d["metadata"]["name"] == "sentiment-web")
    (container,) = web["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_base_has_pdbs_hpa_and_settings(manifests):
    assert {p["metadata"]["name"] for p in of_kind(manifests, "PodDisruptionBudget")} == {"sentiment-web", "sentiment-worker"}
    (hpa,) = of_kind(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert of_kind(manifests, "ConfigMap")[0]["data"]["REDIS_URL"]


def test_prod_routes_exactly_the_public_paths():
    (ingress,) = of_kind(render("prod"), "Ingress")
    paths = {p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert paths == {"/predict", "/jobs", "/health", "/ready", "/docs", "/openapi.json"}
    images = {c["image"] for spec in pod_specs(render("prod")) for c in spec["containers"]}
    assert any(image.startswith("sentimentacr.azurecr.io/sentiment-web:") for image in images)


def test_dev_runs_one_replica_of_local_images():
    manifests = render("dev")
    for deployment in of_kind(manifests, "Deployment"):
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    assert of_kind(manifests, "ScaledObject")[0]["spec"]["maxReplicaCount"] == 1


def test_compose_publishes_only_web_grafana_and_flower_and_gates_on_health():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "web", "worker", "flower", "prometheus", "grafana"} <= set(services)
    assert {name for name, service in services.items() if service.get("ports")} == {"web", "grafana", "flower"}
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name} image {image!r} is not pinned"
    for name in ("redis", "redis-cache"):
        command = services[name]["command"]
        assert "--maxmemory" in command and "healthcheck" in services[name]
    assert services["redis"]["command"][services["redis"]["command"].index("--maxmemory-policy") + 1] == "noeviction"
    assert services["redis-cache"]["command"][services["redis-cache"]["command"].index("--maxmemory-policy") + 1] == "allkeys-lru"
    for name in ("web", "worker"):
        assert all(dep["condition"] == "service_healthy" for dep in services[name]["depends_on"].values())
        assert "container_name" not in services[name]  # --scale needs generated names


def test_dockerfiles_run_as_non_root_and_keep_torch_out_of_web():
    web = (REPO / "Dockerfile.web").read_text()
    worker = (REPO / "Dockerfile.worker").read_text()
    for dockerfile in (web, worker):
        assert "USER 10001" in dockerfile
        assert dockerfile.count("FROM ") >= 2, "multi-stage build expected"
    assert "HEALTHCHECK" in web
    requirements = [line.split("==")[0] for line in (REPO / "requirements" / "web.txt").read_text().splitlines()]
    assert "torch" not in requirements and "transformers" not in requirements
    assert "TORCH_INDEX_URL" in worker and "MODEL_ID" in worker


def test_web_app_never_imports_torch():
    """Building the web app must not import torch or transformers, even indirectly."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys, web; web.create_app(); print('torch' in sys.modules, 'transformers' in sys.modules)"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["False", "False"]
