"""docker-compose.yml is valid Compose and wires the demo the way the docs describe.

No container engine is needed: the file is checked against the vendored Compose
Specification schema (tests/data/compose-spec.json) and its structure is asserted directly.
tests/test_deploy.py runs it for real (podman, behind CHOREO_DEPLOY=1).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"
DEMO_SERVICES = ["orders", "inventory", "payment", "shipping"]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _healthcheck(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


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


def _stages() -> set[str]:
    return set(re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE.read_text(), re.MULTILINE))


def test_every_image_is_built_here_from_a_stage_of_the_dockerfile(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service["build"]
        assert build["dockerfile"] == "docker/Dockerfile", name
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()
        assert build["target"] in _stages(), name
        assert "/" not in service["image"], f"{name} names a registry: {service['image']}"
    assert re.search(r"^ARG BASE_IMAGE=debian:bookworm-slim$", DOCKERFILE.read_text(), re.MULTILINE)


def test_kafka_is_a_single_kraft_node_with_a_healthcheck(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["build"]["target"] == "kafka"
    assert kafka["image"].startswith("choreo-kafka:3.9.")
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
    assert kafka["healthcheck"]["test"] == ["CMD", "/opt/kafka/kafka.sh", "health"]
    assert env["CLUSTER_ID"]
    assert kafka["volumes"] == ["kafka-data:/var/lib/kafka"]


def test_redis_keeps_the_barrier_on_a_volume_with_a_healthcheck(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["build"]["target"] == "redis"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert redis["volumes"] == ["redis-data:/data"]
    stage = DOCKERFILE.read_text().split("AS redis\n", 1)[1].split("\nFROM ", 1)[0]
    for setting in ('"--appendonly", "yes"', '"--appendfsync", "everysec"', '"noeviction"'):
        assert setting in stage  # docs/delivery.md: a Redis that does not forget


def test_payment_keeps_its_ledger_in_postgres(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["build"]["target"] == "postgres"
    assert "pg_isready" in _healthcheck(postgres)
    payment = compose["services"]["payment"]
    store = _environment(payment)["CHOREO_STORE"]
    assert store.startswith("postgresql://choreo:${CHOREO_POSTGRES_PASSWORD:-")
    assert store.endswith("@postgres:5432/shop")
    assert _healthy_dependencies(payment) == {"kafka", "postgres"}
    shop = compose["services"]["shop"]["command"]
    assert shop[shop.index("--payment-store") + 1] == store


def test_every_demo_service_is_deployed(compose: dict[str, Any]) -> None:
    modules = {p.stem for p in (ROOT / "services_demo").glob("*.py")}
    assert set(DEMO_SERVICES) <= modules
    assert set(DEMO_SERVICES) <= set(compose["services"])


@pytest.mark.parametrize("name", DEMO_SERVICES)
def test_demo_service_runs_its_app_once_infra_is_healthy(
    compose: dict[str, Any], name: str
) -> None:
    service = compose["services"][name]
    assert service["build"]["target"] == "choreo"
    assert service["image"] == "choreo-demo:latest"
    assert service["command"] == ["choreo", "run", f"services_demo.{name}:app"]
    env = _environment(service)
    assert env["CHOREO_BROKER"] == "kafka://kafka:9092"
    if name != "payment":  # test_payment_keeps_its_ledger_in_postgres
        assert env["CHOREO_STORE"] == "redis://redis:6379/0"
        assert _healthy_dependencies(service) == {"kafka", "redis"}
    assert service["restart"] == "on-failure"
    # Its probe, on the address the service serves it (inside the container only).
    assert env["CHOREO_SERVICE_HTTP"].startswith("127.0.0.1:")
    port = env["CHOREO_SERVICE_HTTP"].rsplit(":", 1)[1]
    assert f"http://127.0.0.1:{port}/healthz" in _healthcheck(service)


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
    assert tracker["ports"] == ["127.0.0.1:${CHOREO_TRACKER_PORT:-8088}:8088"]
    # Beyond loopback the API needs a token; the shop (attached) sends the same one.
    token = _environment(tracker)["CHOREO_TRACKER_TOKEN"]
    assert token.startswith("${CHOREO_TRACKER_TOKEN:-")
    assert _environment(compose["services"]["shop"])["CHOREO_TRACKER_TOKEN"] == token
    assert "/healthz" in _healthcheck(tracker)
    # Its RocksDB state on a volume, so a new container need not replay the changelog.
    data_dir = _environment(tracker)["CHOREO_TRACKER_DATA_DIR"]
    assert tracker["volumes"] == [f"tracker-data:{data_dir}"]


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} to every interface"


def test_every_long_running_container_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "profiles" not in service:
            test = service["healthcheck"]["test"]
            assert isinstance(test, str) or test[0] in ("CMD", "CMD-SHELL"), name


def test_shop_places_orders_on_the_running_deployment(compose: dict[str, Any]) -> None:
    shop = compose["services"]["shop"]
    assert shop["profiles"] == ["demo"]  # a one-off client: `docker compose run --rm shop`
    command = shop["command"]
    assert command[:3] == ["python3", "-m", "services_demo.multiprocess"]
    assert command[command.index("--attach") + 1] == "http://tracker:8088"
    assert command[command.index("--kafka") + 1] == "kafka:9092"
    assert _healthy_dependencies(shop) == {"kafka", "redis", "postgres", "tracker", *DEMO_SERVICES}


def test_dockerfile_installs_the_package_with_the_demo() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert "COPY services_demo ./services_demo" in dockerfile
    assert '= p["optional-dependencies"]' in dockerfile
    assert 'x["tracker"]' in dockerfile  # the tracker needs faust
    assert 'x["otel"]' in dockerfile  # OTEL_* in the monitoring overlay needs the SDK
    assert "USER choreo" in dockerfile  # not root


def test_kafka_jars_come_from_the_local_runners_resolution() -> None:
    # One way to fetch Kafka from Maven Central: choreo.local.kafka_broker's, run in the build.
    assert "from choreo.local.kafka_broker import kafka_libs" in DOCKERFILE.read_text()


def test_no_file_of_the_deployment_names_a_registry() -> None:
    files = [ROOT / "docker-compose.yml", DOCKERFILE, *(ROOT / "docker").rglob("*.sh")]
    files += [ROOT / "scripts" / "deploy-test.sh", *(ROOT / "scripts" / "deploy").glob("*")]
    # Any host name at all (registries, mirrors): the mirror is read from apt at run time.
    hosts = re.compile(r"\b[\w-]+(\.[\w-]+)*\.(io|com|org|net|dev)\b")
    for path in files:
        text = path.read_text()
        assert not hosts.search(text), f"{path} names a registry or mirror host"
        for image in re.findall(r"^FROM (\S+)", text, re.MULTILINE):
            assert "/" not in image, f"{path}: FROM {image}"
