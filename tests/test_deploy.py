"""Deployment files: what linters cannot check (KEDA fields, compose policy, hardened pods)."""

import json
import shutil
import subprocess
import sys
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from common.settings import Settings
from stack import REPO
from web.errors import APIError, subclasses
from web.security import is_open_path

# KEDA ScaledObject fields (keda.sh/v1alpha1), from KEDA's documentation: ScaledObject spec and the metrics-api scaler.
SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
    "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}  # fmt: skip
SCALE_TARGET_REF = {"apiVersion", "kind", "name", "envSourceContainerName"}
ADVANCED = {"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig", "scalingModifiers"}
HPA_CONFIG = {"name", "behavior"}
FALLBACK = {"failureThreshold", "replicas"}
TRIGGER = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
METRIC_TYPES = {"AverageValue", "Value", "Utilization"}
METRICS_API_METADATA = {"url", "valueLocation", "targetValue", "activationTargetValue", "format", "unsafeSsl", "authMode"}
REDIS_SECRET = "sentiment-redis-auth"


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


def sentinels(manifests) -> list[dict]:
    return [doc for doc in of_kind(manifests, "StatefulSet") if doc["metadata"]["name"] == "sentiment-redis-sentinel"]


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
    assert set(spec.get("fallback", {})) <= FALLBACK
    for trigger in spec["triggers"]:
        assert set(trigger) <= TRIGGER
        assert trigger["type"] == "metrics-api"
        assert trigger.get("metricType", "AverageValue") in METRIC_TYPES
        assert set(trigger["metadata"]) <= METRICS_API_METADATA
        # KEDA reads every metadata value as a string.
        assert all(isinstance(value, str) for value in trigger["metadata"].values())
    if "fallback" in spec:  # KEDA's fallback works only with AverageValue triggers
        assert all(trigger.get("metricType", "AverageValue") == "AverageValue" for trigger in spec["triggers"])


def test_scaled_object_scales_the_worker_on_the_backlog_the_web_pods_serve(manifests):
    from web import create_app
    from web.schemas import BacklogSchema

    (scaled,) = of_kind(manifests, "ScaledObject")
    spec = scaled["spec"]
    worker = next(d for d in of_kind(manifests, "Deployment") if d["metadata"]["name"] == spec["scaleTargetRef"]["name"])
    # One trigger per kind of work: the interactive backlog and the bulk one.
    assert sorted(trigger["metadata"]["valueLocation"] for trigger in spec["triggers"]) == ["bulk_queued_texts", "queued_texts"]
    paths = create_app(Settings.from_env(environ={})).test_client().get("/openapi.json").get_json()["paths"]
    for trigger in spec["triggers"]:
        url = urlsplit(trigger["metadata"]["url"])
        service = next(s for s in of_kind(manifests, "Service") if url.hostname.startswith(s["metadata"]["name"] + "."))
        assert url.hostname == f"{service['metadata']['name']}.{scaled['metadata']['namespace']}.svc.cluster.local"
        assert (url.port or 80) in {port["port"] for port in service["spec"]["ports"]}
        assert service["spec"]["selector"]["app.kubernetes.io/name"] == "sentiment-web"
        # The path and field exist in the API, and the path is open (KEDA sends no API key).
        assert url.path in paths and is_open_path(url.path)
        assert trigger["metadata"]["valueLocation"] in BacklogSchema().fields
        assert float(trigger["metadata"]["targetValue"]) > 0
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 60, "a worker needs time to finish its batch on SIGTERM"


def test_every_redis_server_and_client_pod_uses_the_password_secret(manifests):
    (config,) = of_kind(manifests, "ConfigMap")
    password_file = config["data"]["REDIS_PASSWORD_FILE"]
    for workload in of_kind(manifests, "Deployment") + of_kind(manifests, "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        if "redis" not in json.dumps(pod):  # the ingress's error pages talk to no Redis
            continue
        secret_volumes = {v["name"] for v in pod.get("volumes", []) if v.get("secret", {}).get("secretName") == REDIS_SECRET}
        assert secret_volumes, f"{workload['metadata']['name']} does not mount the Secret {REDIS_SECRET}"
        for container in pod["containers"] + pod.get("initContainers", []):
            mounts = {m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in secret_volumes}
            assert str(PurePosixPath(password_file).parent) in mounts, f"{container['name']} lacks the password file"
            script = " ".join(container.get("command", []) + container.get("args", []))
            if "redis-server" in script:  # a server: requirepass from the file, never on its command line
                assert "requirepass" in script and password_file in script
            probes = [container.get(p, {}).get("exec", {}).get("command", []) for p in ("readinessProbe", "livenessProbe")]
            for probe in filter(None, probes):
                assert "REDISCLI_AUTH" in " ".join(probe), f"{container['name']}'s probe would be refused"
    # Nothing in the rendered manifests carries a password value: only the Secret's name.
    assert not of_kind(manifests, "Secret")


def selects(selector: dict, labels: dict) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions with In) selects ``labels``."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "extend selects() for this operator"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def peer_matches(peer: dict, source_namespace: str, source_labels: dict, own_namespace: str) -> bool:
    if "namespaceSelector" in peer:
        namespace_ok = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": source_namespace})
    else:  # a bare podSelector means pods of the policy's own namespace
        namespace_ok = source_namespace == own_namespace
    return namespace_ok and selects(peer.get("podSelector", {}), source_labels)


def ingress_allowed(manifests, target: str, port: int, source_namespace: str, source_labels: dict) -> bool:
    """What the rendered NetworkPolicies decide for a TCP connection to pod ``target`` on ``port``."""
    policies = [
        policy
        for policy in of_kind(manifests, "NetworkPolicy")
        if "Ingress" in policy["spec"]["policyTypes"]
        and selects(policy["spec"]["podSelector"], {"app.kubernetes.io/name": target})
    ]
    assert policies, f"no policy isolates {target}"
    return any(
        any(p.get("port") == port for p in rule.get("ports", [{"port": port}]))
        and any(peer_matches(peer, source_namespace, source_labels, policy["metadata"]["namespace"]) for peer in rule["from"])
        for policy in policies
        for rule in policy["spec"].get("ingress", [])
    )


def test_network_policies_let_only_the_intended_peers_in(manifests):
    namespace = of_kind(manifests, "Namespace")[0]["metadata"]["name"]

    def pod(name):
        return (namespace, {"app.kubernetes.io/name": name})

    stranger = (namespace, {"app": "anything-else"})
    other_namespace = ("default", {"app": "curious"})
    ingress_controller = ("app-routing-system", {"app": "nginx"})
    keda = ("kube-system", {"app": "keda-operator"})
    prometheus = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
    with_failover = bool(sentinels(manifests))
    for redis_server in ("sentiment-redis", "sentiment-redis-cache"):
        for source in (pod("sentiment-web"), pod("sentiment-worker")):
            assert ingress_allowed(manifests, redis_server, 6379, *source)
        for source in (stranger, other_namespace, ingress_controller, keda, prometheus):
            assert not ingress_allowed(manifests, redis_server, 6379, *source), f"{source} reaches {redis_server}"
        # With failover the replica follows the primary and the Sentinels watch both; nothing reaches the cache.
        for source in (pod("sentiment-redis"), pod("sentiment-redis-sentinel")):
            replication = with_failover and redis_server == "sentiment-redis"
            assert ingress_allowed(manifests, redis_server, 6379, *source) == replication, f"{source} -> {redis_server}"
    if with_failover:
        for source in map(pod, ("sentiment-web", "sentiment-worker", "sentiment-redis", "sentiment-redis-sentinel")):
            assert ingress_allowed(manifests, "sentiment-redis-sentinel", 26379, *source), f"{source} cannot ask the Sentinels"
        for source in (stranger, other_namespace, ingress_controller, prometheus, pod("sentiment-redis-cache")):
            assert not ingress_allowed(manifests, "sentiment-redis-sentinel", 26379, *source), f"{source} reaches the Sentinels"
    for source in (ingress_controller, keda, prometheus):
        assert ingress_allowed(manifests, "sentiment-web", 8000, *source)
    for source in (stranger, other_namespace, ("kube-system", {"app": "something-else"})):
        assert not ingress_allowed(manifests, "sentiment-web", 8000, *source), f"{source} reaches web"
    assert ingress_allowed(manifests, "sentiment-worker", 9101, *prometheus)
    for source in (stranger, other_namespace, ingress_controller, pod("sentiment-web")):
        assert not ingress_allowed(manifests, "sentiment-worker", 9101, *source), f"{source} reaches the worker's metrics"
    policies = of_kind(manifests, "NetworkPolicy")
    default_deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert any(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in default_deny)
    # Egress: web and worker reach the Redis servers; the servers themselves call no one (DNS aside);
    # workers alone reach public http(s) addresses, for webhooks, and no private or link-local range.
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            ports = {p["port"] for p in rule["ports"]}
            if ports == {80, 443}:
                assert policy["metadata"]["name"] == "sentiment-worker"
                (block,) = [peer["ipBlock"] for peer in rule["to"]]
                assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(block["except"])
                continue
            assert ports in ({6379}, {53}, {26379}), f"{policy['metadata']['name']} opens egress to {ports}"


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
    service_deployments = ("sentiment-web", "sentiment-worker")
    for deployment in of_kind(manifests, "Deployment"):
        if deployment["metadata"]["name"] not in service_deployments:
            continue
        pod = deployment["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["initContainers"]] == ["wait-for-redis"]
        (container,) = pod["containers"]
        assert {"startupProbe", "livenessProbe"} <= set(container)
    web = next(d for d in of_kind(manifests, "Deployment") if d["metadata"]["name"] == "sentiment-web")
    (container,) = web["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_base_has_pdbs_hpa_and_settings(manifests):
    budgets = {p["metadata"]["name"] for p in of_kind(manifests, "PodDisruptionBudget")}
    with_failover = {"sentiment-redis", "sentiment-redis-sentinel"} if sentinels(manifests) else set()
    assert budgets == {"sentiment-web", "sentiment-worker"} | with_failover
    (hpa,) = of_kind(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert of_kind(manifests, "ConfigMap")[0]["data"]["REDIS_URL"]


def test_prod_runs_the_main_redis_behind_three_sentinels_on_separate_nodes():
    manifests = render("prod")
    (sentinel_set,) = sentinels(manifests)
    (redis_set,) = [doc for doc in of_kind(manifests, "StatefulSet") if doc["metadata"]["name"] == "sentiment-redis"]
    assert (sentinel_set["spec"]["replicas"], redis_set["spec"]["replicas"]) == (3, 2)
    for workload in (sentinel_set, redis_set):
        (term,) = workload["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"]
    budgets = {p["metadata"]["name"]: p["spec"] for p in of_kind(manifests, "PodDisruptionBudget")}
    assert budgets["sentiment-redis-sentinel"] == {"minAvailable": 2, "selector": sentinel_set["spec"]["selector"]}
    assert budgets["sentiment-redis"]["maxUnavailable"] == 1
    # Clients list each Sentinel by its stable name, as the StatefulSet and its headless Service make them.
    (config,) = of_kind(manifests, "ConfigMap")
    settings = Settings.from_env(environ=config["data"])
    service = sentinel_set["spec"]["serviceName"]
    assert settings.sentinel_addresses == [(f"sentiment-redis-sentinel-{n}.{service}", 26379) for n in range(3)]
    assert settings.replica_acks_required == 1
    (sentinel_container,) = sentinel_set["spec"]["template"]["spec"]["containers"]
    script = sentinel_container["command"][-1]
    assert f"sentinel monitor {settings.redis_sentinel_master} $primary 6379 2" in script
    (redis_container,) = redis_set["spec"]["template"]["spec"]["containers"]
    script = redis_container["command"][-1]
    # A restarted server asks the Sentinels for the primary and follows it, rather than come back a second primary.
    assert "get-master-addr-by-name sentiment" in script and "replicaof" in script and "masterauth" in script
    assert not sentinels(render("dev"))


def test_prod_routes_exactly_the_public_paths():
    ingresses = of_kind(render("prod"), "Ingress")
    paths = [p["path"] for ingress in ingresses for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert sorted(paths) == sorted(["/predict", "/jobs", "/health", "/ready", "/docs", "/openapi.json"])
    images = {c["image"] for spec in pod_specs(render("prod")) for c in spec["containers"]}
    assert any(image.startswith("sentimentacr.azurecr.io/sentiment-web:") for image in images)


def test_prod_ingress_buffers_requests_and_bounds_slow_clients():
    nginx = "nginx.ingress.kubernetes.io/"
    body_limits = {}
    for ingress in of_kind(render("prod"), "Ingress"):
        annotations = ingress["metadata"]["annotations"]
        assert annotations[nginx + "proxy-request-buffering"] == "on"
        assert int(annotations[nginx + "proxy-read-timeout"]) > Settings().sync_wait_s
        assert int(annotations[nginx + "limit-connections"]) > 0
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                body_limits[path["path"]] = annotations[nginx + "proxy-body-size"]
    assert body_limits.pop("/jobs") == f"{Settings().max_job_body_bytes // 1024 // 1024}m"
    assert set(body_limits.values()) == {f"{Settings().max_body_bytes // 1024 // 1024}m"}


def test_prod_ingress_sends_the_controllers_own_errors_to_a_json_error_backend():
    """The controller's own refusals go to web.error_pages; codes the web pods answer themselves stay theirs."""
    from web.error_pages import FRONT_DOOR_ERRORS, SAME_AS

    manifests = render("prod")
    nginx = "nginx.ingress.kubernetes.io/"
    app_codes = {cls.status for cls in subclasses(APIError) if isinstance(cls.status, int)}
    for ingress in of_kind(manifests, "Ingress"):
        annotations = ingress["metadata"]["annotations"]
        assert annotations[nginx + "default-backend"] == "sentiment-error-pages"
        codes = {int(code) for code in annotations[nginx + "custom-http-errors"].split(",")}
        # 413 alone is both: the error backend answers it exactly as the web pods would (the same limits).
        assert codes & app_codes <= {413}, f"{codes & app_codes} would replace the web pods' own JSON errors"
        assert codes <= set(FRONT_DOOR_ERRORS) | set(SAME_AS)
    (deployment,) = [d for d in of_kind(manifests, "Deployment") if d["metadata"]["name"] == "sentiment-error-pages"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("sentimentacr.azurecr.io/sentiment-web:")
    assert "web.error_pages:create_app()" in container["command"]
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(container)
    ingress_controller = ("app-routing-system", {"app": "nginx"})
    assert ingress_allowed(manifests, "sentiment-error-pages", 8080, *ingress_controller)
    assert not ingress_allowed(manifests, "sentiment-error-pages", 8080, "sentiment", {"app": "anything-else"})


def test_dev_runs_one_replica_of_local_images():
    manifests = render("dev")
    for deployment in of_kind(manifests, "Deployment"):
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    assert of_kind(manifests, "ScaledObject")[0]["spec"]["maxReplicaCount"] == 1


def test_compose_publishes_only_the_front_door_grafana_and_flower_and_gates_on_health():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "web", "worker", "front-door", "flower", "prometheus", "grafana"} <= set(services)
    # gunicorn is reached only through nginx, which buffers requests (slow clients) and forwards the client's address.
    assert {name for name, service in services.items() if service.get("ports")} == {"front-door", "grafana", "flower"}
    front_door = services["front-door"]
    assert "./deploy/nginx/front-door.conf.template:/etc/nginx/templates/front-door.conf.template:ro" in front_door["volumes"]
    assert front_door["environment"]["WEB_UPSTREAM"] == "web:8000"
    web_env = Settings.from_env(environ={key: str(value) for key, value in services["web"]["environment"].items()})
    assert int(front_door["environment"]["MAX_BODY_BYTES"]) == web_env.max_body_bytes
    assert web_env.trust_proxy_hops == 1
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"], "Flower is published on this host's loopback only"
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


def test_compose_locks_redis_flower_and_grafana_with_generated_secrets():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    secrets_script = services["secrets"]["command"][0]
    assert "/dev/urandom" in secrets_script and "requirepass" in secrets_script
    for name in ("redis", "redis-cache"):
        assert services[name]["command"][1] == "/run/secrets/sentiment/redis.conf"  # holds requirepass
        assert services[name]["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
        assert "REDISCLI_AUTH" in " ".join(services[name]["healthcheck"]["test"])
    for name in ("web", "worker"):
        assert services[name]["environment"]["REDIS_PASSWORD_FILE"] == "/run/secrets/sentiment/redis-password"
        assert "secrets:/run/secrets/sentiment:ro" in services[name]["volumes"]
    flower = " ".join(services["flower"]["command"])
    assert "FLOWER_BASIC_AUTH" in flower and "redis-password" in flower
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/sentiment/")
    assert grafana.get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer") == "Viewer"
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (flower_job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "flower"]
    assert flower_job["basic_auth"]["password_file"] == "/run/secrets/sentiment/flower-password"


def test_compose_v1_translation_drops_only_the_v2_options_and_says_so():
    result = subprocess.run(
        [sys.executable, "scripts/compose_v1.py", "docker-compose.yml"], cwd=REPO, capture_output=True, text=True, check=True
    )
    shipped = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    translated = yaml.safe_load(result.stdout)
    assert shipped["services"]["front-door"]["depends_on"]["web"]["restart"] is True
    assert translated["services"]["front-door"]["depends_on"]["web"] == {"condition": "service_healthy"}
    assert "services.front-door.depends_on.web.restart dropped" in result.stderr
    del shipped["services"]["front-door"]["depends_on"]["web"]["restart"]
    assert translated == shipped, "everything else is the file as written"
    if shutil.which("docker-compose"):  # Debian's 1.29 accepts the translation (make lint runs this too)
        subprocess.run(
            ["docker-compose", "--project-directory", str(REPO), "-f", "-", "config", "-q"],
            input=result.stdout, text=True, check=True, cwd=REPO,
        )  # fmt: skip


def test_dockerfiles_run_as_non_root_and_keep_torch_out_of_web():
    web = (REPO / "Dockerfile.web").read_text()
    worker = (REPO / "Dockerfile.worker").read_text()
    for dockerfile in (web, worker):
        assert "USER 10001" in dockerfile
        assert dockerfile.count("FROM ") >= 2, "multi-stage build expected"
    assert "HEALTHCHECK" in web
    assert "LD_PRELOAD=libjemalloc.so.2" in web and "libjemalloc2" in web, "gunicorn must run on jemalloc"
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


STUB_COMMANDS = {
    # The pod's name, and what each Sentinel answers (host=primary, space-separated; none: it is down).
    "hostname": 'echo "$POD_NAME"',
    "redis-cli": """host=""; while [ $# -gt 0 ]; do [ "$1" = -h ] && host="$2"; shift; done
for pair in $SENTINEL_ANSWERS; do [ "${pair%%=*}" = "$host" ] && { printf '%s\\n6379\\n' "${pair#*=}"; exit 0; }; done
exit 1""",
    "timeout": 'shift; exec "$@"',
    "sleep": "exit 0",
    "redis-server": 'echo "args: $*"; cat "$1"',
    "redis-sentinel": 'echo "args: $*"; cat "$1"',
}


def run_pod_script(tmp_path, workload: str, pod: str, sentinels_answer: dict[str, str], existing_config: str = "") -> str:
    """Run a prod StatefulSet's start-up script with stand-ins for the pod's commands; what it started, and with what config."""
    (workload_doc,) = [doc for doc in of_kind(render("prod"), "StatefulSet") if doc["metadata"]["name"] == workload]
    script = workload_doc["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in STUB_COMMANDS.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (tmp_path / "password").write_text('pa"ss\n')
    if existing_config:
        (tmp_path / "sentinel.conf").write_text(existing_config)
    for path, local in (
        ("/run/secrets/redis/password", "password"),
        ("/run/redis/auth.conf", "auth.conf"),
        ("/data/sentinel.conf", "sentinel.conf"),
    ):
        script = script.replace(path, str(tmp_path / local))
    answers = " ".join(
        f"sentiment-redis-sentinel-{number}.sentiment-redis-sentinel={primary}" for number, primary in sentinels_answer.items()
    )
    environment = {"PATH": f"{bin_dir}:/usr/bin:/bin", "POD_NAME": pod, "SENTINEL_ANSWERS": answers}
    result = subprocess.run(["sh", "-c", script], env=environment, capture_output=True, text=True, timeout=30, check=True)
    return result.stdout


def test_prod_redis_servers_follow_the_primary_the_sentinels_name_and_pod_0_only_when_none_answers(tmp_path):
    node = "sentiment-redis-{}.sentiment-redis-nodes".format
    first_start = run_pod_script(tmp_path, "sentiment-redis", "sentiment-redis-0", {})
    assert "replicaof" not in first_start and 'requirepass "pa\\"ss"' in first_start and 'masterauth "pa\\"ss"' in first_start
    assert f"replicaof {node(0)} 6379" in run_pod_script(tmp_path, "sentiment-redis", "sentiment-redis-1", {})
    # After a failover made pod 1 the primary, a restarted pod 0 comes back as its replica, whichever Sentinel answers.
    assert f"replicaof {node(1)} 6379" in run_pod_script(tmp_path, "sentiment-redis", "sentiment-redis-0", {2: node(1)})
    assert "replicaof" not in run_pod_script(tmp_path, "sentiment-redis", "sentiment-redis-1", {0: node(1)})


def test_prod_sentinels_keep_what_they_learned_and_else_ask_the_others(tmp_path):
    node = "sentiment-redis-{}.sentiment-redis-nodes".format
    fresh = run_pod_script(tmp_path, "sentiment-redis-sentinel", "sentiment-redis-sentinel-0", {})
    assert f"sentinel monitor sentiment {node(0)} 6379 2" in fresh
    assert "sentinel announce-ip sentiment-redis-sentinel-0.sentiment-redis-sentinel" in fresh
    (tmp_path / "sentinel.conf").unlink()
    # A new Sentinel asks the others, never itself.
    joined = run_pod_script(tmp_path, "sentiment-redis-sentinel", "sentiment-redis-sentinel-2", {1: node(1), 2: node(0)})
    assert f"sentinel monitor sentiment {node(1)} 6379 2" in joined
    remembered = f"sentinel monitor sentiment {node(1)} 6379 2\n"
    assert run_pod_script(tmp_path, "sentiment-redis-sentinel", "sentiment-redis-sentinel-0", {}, remembered).endswith(remembered)
