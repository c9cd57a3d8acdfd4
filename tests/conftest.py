"""Shared fixtures.

`kafka_bootstrap`, `redis_url` and `postgres_url` start a real Kafka broker / Redis server /
PostgreSQL server the first time a test asks for one and stop it when the session ends. Each
session runs its servers in its own directory under `<cache>/test-run/`, so concurrent
sessions do not collide, and a session that was killed is cleaned up by the next one. When a
prerequisite (java, mvn, redis-server, postgresql) is missing the tests are skipped, except on
CI (CI=true) where that is an error.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from choreo.local._process import LocalServer, LocalServerUnavailable, cache_dir, pid_alive
from choreo.local.kafka_broker import KafkaBroker
from choreo.local.postgres_server import PostgresServer
from choreo.local.redis_server import RedisServer


def _sweep_dead_sessions(root: Path) -> None:
    for session in root.glob("session-*"):
        owner = session.name.removeprefix("session-")
        if owner.isdigit() and pid_alive(int(owner)):
            continue
        # Servers die with their session (PDEATHSIG); stop() is for the rare one that did not.
        KafkaBroker(session / "kafka").stop()
        RedisServer(session / "redis").stop()
        PostgresServer(session / "postgres", persist=False).stop()
        shutil.rmtree(session, ignore_errors=True)


@pytest.fixture(scope="session")
def _local_servers_dir() -> Iterator[Path]:
    root = cache_dir() / "test-run"
    _sweep_dead_sessions(root)
    session = root / f"session-{os.getpid()}"
    session.mkdir(parents=True, exist_ok=True)
    yield session
    shutil.rmtree(session, ignore_errors=True)


def _start(server: LocalServer) -> str:
    try:
        return server.start()
    except LocalServerUnavailable as exc:
        message = f"{server.name} unavailable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


# Users of the broker's SASL_PLAINTEXT listener (PLAIN mechanism).
KAFKA_SASL_USERS = {"alice": "alice-secret"}


@pytest.fixture(scope="session")
def kafka_broker(_local_servers_dir: Path) -> Iterator[KafkaBroker]:
    """A real single-node Kafka broker shared by the whole session: a plaintext listener
    and a SASL_PLAINTEXT one (users in KAFKA_SASL_USERS)."""
    broker = KafkaBroker(
        _local_servers_dir / "kafka", die_with_parent=True, sasl_users=KAFKA_SASL_USERS
    )
    _start(broker)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """`host:port` of the session broker's plaintext listener."""
    return kafka_broker.address()


@pytest.fixture(scope="session")
def redis_url(_local_servers_dir: Path) -> Iterator[str]:
    """`redis://host:port/0` of a real, non-persistent Redis server shared by the session."""
    server = RedisServer(_local_servers_dir / "redis", die_with_parent=True, persist=False)
    url = _start(server)
    yield url
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(_local_servers_dir: Path) -> Iterator[str]:
    """`postgresql://choreo@host:port/postgres` of a real, non-durable PostgreSQL server
    shared by the session (a fresh cluster, removed when the session ends)."""
    server = PostgresServer(_local_servers_dir / "postgres", die_with_parent=True, persist=False)
    url = _start(server)
    yield url
    server.stop()


@pytest.fixture(params=["memory", "kafka"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(broker URL, store URL): the embedded default, or real Kafka + real Redis. Tests
    taking this fixture run once on each with the same assertions."""
    if request.param == "memory":
        return "memory://", "memory://"
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    return f"kafka://{bootstrap}", request.getfixturevalue("redis_url")
