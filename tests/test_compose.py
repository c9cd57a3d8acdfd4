"""docker-compose.yml is valid Compose and wires the demo the way the docs describe.

No Docker engine is needed: the file is checked against the vendored Compose Specification
schema (tests/data/compose-spec.json) and its structure is asserted directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"
DEMO_SERVICES = ["orders", "inventory", "payment", "shipping"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _healthy_dependencies(service: dict[str, Any]) -> set[str]:
    depends_on = service.get("depends_on", {})
    assert isinstance(depends_on, dict), "depends_on must use the long form with conditions"
    return {name for name, dep in depends_on.items() if dep.get("condition") == "service_healthy"}


def test_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert errors == []


def test_kafka_is_a_single_kraft_node_with_a_healthcheck(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka"
    assert tag.startswith("3.9.")
    env = _environment(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    for factor in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[factor] == "1"
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def test_redis_has_a_healthcheck(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_every_demo_service_is_deployed(compose: dict[str, Any]) -> None:
    modules = {p.stem for p in (ROOT / "services_demo").glob("*.py")}
    assert set(DEMO_SERVICES) <= modules
    assert set(DEMO_SERVICES) <= set(compose["services"])


@pytest.mark.parametrize("name", DEMO_SERVICES)
def test_demo_service_runs_its_app_once_infra_is_healthy(
    compose: dict[str, Any], name: str
) -> None:
    service = compose["services"][name]
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert service["command"] == ["choreo", "run", f"services_demo.{name}:app"]
    env = _environment(service)
    assert env["CHOREO_BROKER"] == "kafka://kafka:9092"
    assert env["CHOREO_STORE"] == "redis://redis:6379/0"
    assert _healthy_dependencies(service) == {"kafka", "redis"}
    assert service["restart"] == "on-failure"


def test_demo_knobs_in_the_environment_are_valid(compose: dict[str, Any]) -> None:
    from services_demo.knobs import PREFIX, Knobs

    for name in DEMO_SERVICES:
        env = _environment(compose["services"][name])
        knobs = Knobs.from_env(env)
        assert knobs.decline_above is not None
        assert {k for k in env if k.startswith(PREFIX)} <= set(knobs.to_env())


def test_tracker_follows_the_saga_and_exposes_the_state_api(compose: dict[str, Any]) -> None:
    tracker = compose["services"]["tracker"]
    assert tracker["command"] == [
        "choreo",
        "tracker",
        "services_demo.contract:order_saga",
        "--broker",
        "kafka://kafka:9092",
        "--http",
        "0.0.0.0:8088",  # inside the container; published on the host's loopback only
    ]
    assert _healthy_dependencies(tracker) == {"kafka"}
    assert tracker["ports"] == ["127.0.0.1:8088:8088"]
    # Beyond loopback the API needs a token; the shop (attached) sends the same one.
    token = _environment(tracker)["CHOREO_TRACKER_TOKEN"]
    assert token.startswith("${CHOREO_TRACKER_TOKEN:-")
    assert _environment(compose["services"]["shop"])["CHOREO_TRACKER_TOKEN"] == token
    assert "/healthz" in " ".join(tracker["healthcheck"]["test"])


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} to every interface"


def test_shop_places_orders_on_the_running_deployment(compose: dict[str, Any]) -> None:
    shop = compose["services"]["shop"]
    assert shop["profiles"] == ["demo"]  # a one-off client: `docker compose run --rm shop`
    command = shop["command"]
    assert command[:3] == ["python", "-m", "services_demo.multiprocess"]
    assert command[command.index("--attach") + 1] == "http://tracker:8088"
    assert command[command.index("--kafka") + 1] == "kafka:9092"
    assert _healthy_dependencies(shop) == {"kafka", "redis", "tracker"}
    assert set(DEMO_SERVICES) <= set(shop["depends_on"])


def test_dockerfile_installs_the_package_with_the_demo(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "COPY services_demo ./services_demo" in dockerfile
    assert 'pip install ".[tracker]"' in dockerfile  # the tracker image needs faust
    assert "USER choreo" in dockerfile  # not root
