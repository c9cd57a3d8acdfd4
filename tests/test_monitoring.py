"""The monitoring layer of the demo deployment (docker/monitoring.compose.yml): valid
Compose, every demo service serving its metrics where Prometheus scrapes them, a
Prometheus configuration promtool accepts, a Grafana dashboard whose queries name
only metrics choreo exposes, Grafana provisioned with it and its data sources, and the
services' and the tracker's traces going over OTLP to a collector that receives them
where they send and passes them to Jaeger. The collector, Jaeger and Grafana images are
pulled from Docker Hub and never run here: these checks are structural."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from choreo.metrics import ServiceMetrics
from tests.test_alert_rules import TRACKER_METRICS, _family_names, promtool  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = ROOT / "docker" / "monitoring.compose.yml"
PROMETHEUS = ROOT / "docker" / "prometheus"
DASHBOARD = ROOT / "docker" / "grafana" / "choreo-dashboard.json"
DEMO_SERVICES = ["orders", "inventory", "payment", "shipping"]
GRAFANA = ROOT / "docker" / "grafana" / "provisioning"
COLLECTOR = ROOT / "docker" / "otel" / "collector.yaml"
PULLED = {"otel-collector", "jaeger", "grafana"}  # images from Docker Hub, not built here


def exposed_metrics() -> set[str]:
    names = set(TRACKER_METRICS)
    for family in ServiceMetrics("x").registry.collect():
        names |= _family_names(family.name, family.type)
    return names


@pytest.fixture(scope="module")
def overlay() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(OVERLAY.read_text())
    return document


def test_the_overlay_is_valid_compose(overlay: dict[str, Any]) -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(overlay)]
    assert errors == []
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(overlay["services"]) - {"prometheus"} - PULLED <= set(base["services"])


def test_every_demo_service_serves_what_prometheus_scrapes(overlay: dict[str, Any]) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for c in jobs["choreo-services"]["static_configs"] for t in c["targets"]}
    for name in DEMO_SERVICES:
        env = overlay["services"][name]["environment"]
        port = env["CHOREO_SERVICE_HTTP"].rsplit(":", 1)[1]
        assert f"{name}:{port}" in targets
        assert env["CHOREO_SERVICE_TOKEN"]  # beyond loopback, /metrics needs its token
        assert "/readyz" in " ".join(overlay["services"][name]["healthcheck"]["test"])
    assert {t for c in jobs["choreo-tracker"]["static_configs"] for t in c["targets"]} == {
        "tracker:8088"
    }
    for job in jobs.values():
        assert job["authorization"]["credentials_file"]
    prometheus = overlay["services"]["prometheus"]
    assert all(p.startswith("127.0.0.1:") for p in prometheus["ports"])
    assert set(prometheus["environment"]) == {"CHOREO_TRACKER_TOKEN", "CHOREO_SERVICE_TOKEN"}
    dockerfile = (PROMETHEUS / "Dockerfile").read_text()
    assert "FROM debian:bookworm-slim" in dockerfile
    assert "apt-get install -y --no-install-recommends prometheus" in dockerfile


def test_promtool_accepts_the_configuration(promtool: Path, tmp_path: Path) -> None:  # noqa: F811
    text = (PROMETHEUS / "prometheus.yml").read_text()
    for path in re.findall(r"/tmp/[\w-]+", text):  # the token files, made by the entrypoint
        text = text.replace(path, str(tmp_path / Path(path).name))
        (tmp_path / Path(path).name).write_text("token")
    text = text.replace("/etc/prometheus/choreo-alerts.yml", str(PROMETHEUS / "choreo-alerts.yml"))
    (tmp_path / "prometheus.yml").write_text(text)
    done = subprocess.run([str(promtool), "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


def test_the_dashboard_queries_only_exposed_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "choreo-sagas"
    exposed = exposed_metrics()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    used = {name for e in exprs for name in re.findall(r"\bchoreo_[a-z_]+", e)}
    assert used <= exposed, sorted(used - exposed)
    assert {"choreo_sagas", "choreo_dead_letters_total", "choreo_consumer_lag"} <= used
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["description"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts, container path to host path; relative host paths are
    taken from the first compose file's directory (the repository's root), Compose's rule
    for several -f files."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = ROOT / source
    return mounts


def test_paths_in_the_overlay_are_relative_to_the_base_file(overlay: dict[str, Any]) -> None:
    assert (ROOT / overlay["services"]["prometheus"]["build"]["context"] / "Dockerfile").is_file()
    for name, service in overlay["services"].items():
        for host in _mounts(service).values():
            assert host.exists(), (name, host)


def test_pulled_images_are_pinned_and_said_to_be_pulled(overlay: dict[str, Any]) -> None:
    for name in PULLED:
        image = overlay["services"][name]["image"]
        repository, _, tag = image.rpartition(":")
        assert repository.startswith("docker.io/"), image
        assert tag not in ("", "latest"), image
        assert all(p.startswith("127.0.0.1:") for p in overlay["services"][name].get("ports", []))
    header = OVERLAY.read_text().split("\nx-", 1)[0]
    assert "Docker Hub" in header
    assert "not run on the project's build machine" in header
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    for name in PULLED:
        assert overlay["services"][name]["image"].removeprefix("docker.io/") in deployment


def test_grafana_is_provisioned_with_its_data_sources_and_the_dashboard(
    overlay: dict[str, Any],
) -> None:
    grafana = overlay["services"]["grafana"]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == GRAFANA
    sources = yaml.safe_load((GRAFANA / "datasources" / "choreo.yaml").read_text())
    assert sources["apiVersion"] == 1
    by_type = {s["type"]: s for s in sources["datasources"]}
    # Prometheus at the overlay's prometheus service, on the port it listens on.
    prometheus_port = overlay["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert by_type["prometheus"]["url"] == f"http://prometheus:{prometheus_port}"
    assert by_type["prometheus"]["isDefault"] is True
    jaeger_ui = overlay["services"]["jaeger"]["ports"][0].rsplit(":", 1)[1]
    assert by_type["jaeger"]["url"] == f"http://jaeger:{jaeger_ui}"
    assert [s for s in sources["datasources"] if s.get("isDefault")] == [by_type["prometheus"]]
    # The dashboard provider reads the directory the dashboard file is mounted in.
    providers = yaml.safe_load((GRAFANA / "dashboards" / "choreo.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    shown = [t for t, host in mounts.items() if host == DASHBOARD]
    assert len(shown) == 1
    assert Path(shown[0]).parent == Path(provider["options"]["path"])
    # Its panels take the data source from a variable of type prometheus: the default one.
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${" + variable["name"] + "}"
    assert all(p.startswith("127.0.0.1:") for p in grafana["ports"])
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${")


def test_traces_go_where_the_collector_receives_them(overlay: dict[str, Any]) -> None:
    services = overlay["services"]
    collector = services["otel-collector"]
    (config_path,) = [c.split("=", 1)[1] for c in collector["command"] if c.startswith("--config")]
    assert _mounts(collector)[config_path] == COLLECTOR
    config = yaml.safe_load(COLLECTOR.read_text())
    pipeline = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(config[kind]), kind
    assert "otlp" in pipeline["receivers"]
    protocols = config["receivers"]["otlp"]["protocols"]
    for name in [*DEMO_SERVICES, "tracker"]:
        env = services[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf", name
        target = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert target.hostname == "otel-collector", name
        host, port = protocols["http"]["endpoint"].rsplit(":", 1)
        assert host == "0.0.0.0"  # beyond the container's loopback
        assert target.port == int(port), name
    # Out to Jaeger's OTLP/gRPC receiver, which its image turns on by this variable.
    (exporter,) = [config["exporters"][e] for e in pipeline["exporters"]]
    assert exporter["endpoint"] == "jaeger:4317"
    assert exporter["tls"]["insecure"] is True
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_the_image_has_the_sdk_the_environment_asks_for() -> None:
    # Without the otel extra, choreo run stops at start when OTEL_* asks for export.
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    stage = dockerfile.split("AS requirements", 1)[1].split("FROM", 1)[0]
    assert '["tracker"]' in stage
    assert '["otel"]' in stage
