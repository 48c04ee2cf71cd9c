"""Metrics and dashboards: what the service exports, merged across processes, is what Grafana queries."""

import json
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from stack import REPO, free_port, start_web, wait_until

DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
# Series Prometheus itself adds to every scrape, not exported by the service.
PROMETHEUS_BUILTINS = {"up"}
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "le", "max", "min", "without", "avg", "increase", "irate", "on"}


def scrape(url: str) -> set[str]:
    """Names of every sample on a /metrics page (with _total, _bucket, _sum and _count suffixes)."""
    text = requests.get(url, timeout=10).text
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.fixture(scope="module")
def exported(web_url, service_env, unique) -> set[str]:
    """Everything web and worker export, after traffic that touches every metric."""
    texts = [unique("observed text one"), unique("observed text two")]
    assert requests.post(f"{web_url}/predict", json={"text": texts}, timeout=60).status_code == 200
    assert requests.post(f"{web_url}/predict", json={"text": texts}, timeout=60).status_code == 200
    assert requests.post(f"{web_url}/predict?wait=0", json={"text": [unique("observed async")]}, timeout=60).status_code in (
        200,
        202,
    )
    worker = scrape(f"http://127.0.0.1:{service_env['WORKER_METRICS_PORT']}/metrics")
    return scrape(f"{web_url}/metrics") | worker


@pytest.fixture(scope="module")
def unique():
    import uuid

    tag = uuid.uuid4().hex[:8]
    return lambda text: f"{text} ({tag})"


def panel_queries(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_groupings)
    without_strings = re.sub(r'"[^"]*"', "", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {name for name in names if name not in PROMQL_WORDS and not re.fullmatch(r"\d.*", name)}


def test_service_exports_the_documented_metrics(exported):
    expected = {
        "sentiment_http_requests_total", "sentiment_http_request_seconds_bucket", "sentiment_cache_lookups_total",
        "sentiment_predict_answers_total", "sentiment_job_wait_seconds_bucket", "sentiment_queue_jobs",
        "sentiment_queue_texts", "sentiment_workers_live", "sentiment_worker_batch_texts_bucket",
        "sentiment_worker_batch_tokens_bucket", "sentiment_worker_inference_seconds_bucket",
        "sentiment_worker_queue_wait_seconds_bucket", "sentiment_worker_jobs_total", "sentiment_worker_model_load_seconds",
        # Bulk jobs: the fixture's traffic sends none, so in a run of this module alone the worker's
        # counters show only if their outcomes are exported at 0 from the start.
        "sentiment_bulk_texts_queued_total", "sentiment_bulk_jobs_cancelled_total", "sentiment_bulk_queued_texts",
        "sentiment_worker_bulk_texts_total", "sentiment_worker_webhooks_total", "sentiment_jobs_not_replicated_total",
    }  # fmt: skip
    assert expected <= exported


def health_requests_counted(metrics_dir: Path) -> float:
    """/health requests in the counter files of ``metrics_dir``, read the way /metrics merges them."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "sentiment_http_requests_total" and sample.labels.get("endpoint") == "/health"
    )


def test_web_metrics_add_up_across_gunicorn_processes(service_env, tmp_path):
    metrics_dir = tmp_path / "metrics"
    port = free_port()
    web = start_web({**service_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, port, processes=2)
    try:
        base = f"http://127.0.0.1:{port}"

        def merged_count() -> float:
            text = requests.get(f"{base}/metrics", timeout=10).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "sentiment_http_requests_total" and sample.labels.get("endpoint") == "/health":
                        return sample.value
            return 0.0

        def per_process_counts() -> dict[str, float]:
            # Each process writes its own counter file; read them one at a time.
            counts = {}
            for counter_file in metrics_dir.glob("counter_*.db"):
                alone = Path(tempfile.mkdtemp(dir=tmp_path))
                shutil.copy(counter_file, alone)
                counts[counter_file.stem] = health_requests_counted(alone)
            return counts

        def health(_):
            # New connections each time, so either process may accept.
            return requests.get(f"{base}/health", timeout=5, headers={"Connection": "close"}).status_code

        before = per_process_counts()
        sent, served = 0, {}
        # Which process accepts is the kernel's choice: send until both have served (bounded).
        with ThreadPoolExecutor(8) as pool:
            while len(served) < 2 and sent < 2000:
                assert set(pool.map(health, range(40))) == {200}
                sent += 40
                after = per_process_counts()
                served = {name: count - before.get(name, 0) for name, count in after.items() if count > before.get(name, 0)}
        assert len(served) >= 2, f"after {sent} requests only {served} served /health: the merge was not exercised"
        # A request is counted just after its answer leaves; wait until every one is on file.
        expected = sum(before.values()) + sent
        wait_until(lambda: sum(per_process_counts().values()) >= expected, 10, "the last requests to be counted")
        assert merged_count() == sum(per_process_counts().values()), f"/metrics does not add up the processes' {served}"
    finally:
        web.close()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_queries_name_exported_metrics(path, exported):
    dashboard = json.loads(path.read_text())
    queries = panel_queries(dashboard)
    assert queries, "a dashboard without queries"
    for expr in queries:
        unknown = metric_names(expr) - exported - PROMETHEUS_BUILTINS
        assert not unknown, f"{path.name}: {expr!r} names metrics nobody exports: {unknown}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_panels_cover_the_service_and_use_the_provisioned_datasource(path):
    dashboard = json.loads(path.read_text())
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    uids = {source["uid"] for source in datasources}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids
        assert all(target["datasource"]["uid"] in uids for target in panel["targets"])
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in (
        "throughput",
        "latency",
        "cache hit",
        "queue",
        "batch size",
        "inference",
        "workers up",
        "errors",
        "bulk jobs",
        "webhooks",
    ):
        assert topic in titles, f"no panel about {topic}"
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_dashboard_queries_are_valid_promql(tmp_path):
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    rules = []
    for path in DASHBOARDS:
        for index, expr in enumerate(panel_queries(json.loads(path.read_text()))):
            rules.append({"record": f"dashboard:check_{path.stem.replace('-', '_')}_{index}", "expr": expr})
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provider_reads_the_folder_compose_mounts():
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "sentiment.yml").read_text())["providers"][0]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
