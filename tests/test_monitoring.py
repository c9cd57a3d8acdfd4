"""The monitoring layer of the demo deployment (docker/monitoring.compose.yml): valid
Compose, every demo service serving its metrics where Prometheus scrapes them, a
Prometheus configuration promtool accepts, and a Grafana dashboard whose queries name
only metrics choreo exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

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
    assert set(overlay["services"]) - {"prometheus"} <= set(base["services"])


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
