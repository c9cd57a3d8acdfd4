"""The container deployment (docker-compose.yml) run for real: scripts/deploy-test.sh builds
the images, brings the deployment up with podman, places orders, kills a payment replica
mid-run, audits the books and removes everything (docs/deployment.md).

That takes many minutes, so it is marked ``deploy`` and skipped unless ``CHOREO_DEPLOY=1``:

    CHOREO_DEPLOY=1 .venv/bin/python -m pytest tests/test_deploy.py -s

(``-s`` shows the containers, the orders placed and the books as the script prints them.)
The default run keeps a smoke test: the Kafka image's entrypoint turning the compose
file's environment into the broker's server.properties.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "deploy-test.sh"
PROJECT_LABEL = "io.podman.compose.project=choreo-deploytest"


def _interpolated(value: Any) -> str:
    """A compose value with each ``${NAME:-default}`` replaced by its default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_kafka_entrypoint_turns_the_compose_environment_into_server_properties() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = {k: _interpolated(v) for k, v in compose["services"]["kafka"]["environment"].items()}
    done = subprocess.run(
        [str(ROOT / "docker" / "kafka" / "kafka.sh"), "config"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = done.stdout.splitlines()
    properties = dict(line.split("=", 1) for line in lines)
    assert len(properties) == len(lines)  # every key once
    assert properties["process.roles"] == "broker,controller"
    assert properties["node.id"] == "1"
    assert properties["controller.quorum.voters"] == "1@kafka:9093"
    assert properties["advertised.listeners"] == "PLAINTEXT://kafka:9092,HOST://localhost:29092"
    assert properties["listener.security.protocol.map"] == (
        "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,HOST:PLAINTEXT"
    )
    assert properties["offsets.topic.replication.factor"] == "1"
    assert properties["log.dirs"] == "/var/lib/kafka/data"  # the volume
    # The JVM's heap and the cluster id are not broker properties.
    assert not {"heap.opts", "cluster.id"} & set(properties)


def _podman_leftovers() -> list[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(ROOT / "docker" / "containers.conf")}
    found = []
    for kind in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
        done = subprocess.run(
            ["podman", *kind, "-q", "--filter", f"label={PROJECT_LABEL}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        found += done.stdout.split()
    return found


@pytest.mark.deploy
@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(
    os.environ.get("CHOREO_DEPLOY") != "1", reason="the deployment runs with CHOREO_DEPLOY=1"
)
def test_the_deployment_builds_runs_survives_a_killed_replica_and_leaves_nothing() -> None:
    orders = int(os.environ.get("CHOREO_DEPLOY_ORDERS", "300"))
    lines: list[str] = []
    with subprocess.Popen(
        [str(SCRIPT), "--orders", str(orders)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)  # shown with -s: containers, orders, books
            lines.append(line.rstrip("\n"))
        status = proc.wait()
    output = "\n".join(lines)
    assert status == 0, output[-6000:]
    assert f"placing {orders} orders" in output
    assert re.search(r"killing choreo-deploytest_payment_\d \(SIGKILL\)", output)
    # The shop's own audit: every saga terminal, stock and money conserved.
    assert "audit passed" in output
    assert re.search(rf"\b{orders} orders\b", output)
    assert "nothing left" in output
    assert _podman_leftovers() == []
