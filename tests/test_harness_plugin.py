"""The pytest plugin (``choreo.pytest_plugin``): registered through the ``pytest11``
entry point, its fixtures used here directly, and a user's test file run by a pytest of
its own, on memory and, by one option, on real Kafka + Redis."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from choreo import Context, Event, Service
from choreo.pytest_plugin import Backend, HarnessFactory
from choreo.testing import VirtualClock

USER_TEST = """
import uuid

from choreo import Context, Event, Service


async def test_a_handler_runs(choreo_harness, choreo_backend, expected_broker):
    tag = uuid.uuid4().hex[:8]

    class Ping(Event, type=f"plugin.{tag}.Ping", topic=f"plugin.{tag}"):
        n: int

    app = Service(f"p{tag}")

    @app.on_event(Ping)
    async def count(event: Ping, ctx: Context) -> None:
        ctx.tx.incr(f"plugin:{tag}", event.n)

    assert choreo_backend.broker.split(":")[0] == expected_broker
    async with choreo_harness(app) as h:
        assert h.broker_url == choreo_backend.broker
        await h.publish(Ping(n=2))
        await h.drain(timeout=60)
        assert await h.store.get_int(f"plugin:{tag}") == 2
"""


def test_the_entry_point_names_the_plugin() -> None:
    (entry,) = [e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "choreo"]
    assert entry.value == "choreo.pytest_plugin"


async def _one_handler(make: HarnessFactory, clock: VirtualClock | None = None) -> str:
    """A one-handler service in a harness from ``make``: its effect lands; the name of
    the transport class it ran on."""
    tag = uuid.uuid4().hex[:8]

    class Tick(Event, type=f"plugin.{tag}.Tick", topic=f"plugin.{tag}"):
        n: int

    app = Service(f"q{tag}")

    @app.on_event(Tick)
    async def tick(event: Tick, ctx: Context) -> None:
        ctx.tx.incr(f"tick:{tag}", event.n)

    async with make(app, clock=clock) as h:
        assert h.clock is clock
        await h.publish(Tick(n=3))
        await h.drain(timeout=60)
        assert await h.store.get_int(f"tick:{tag}") == 3
        return type(h.transport).__name__


async def test_the_fixtures_in_this_suite(
    choreo_harness: HarnessFactory, choreo_backend: Backend, choreo_clock: VirtualClock
) -> None:
    assert choreo_backend == Backend(
        os.environ.get("CHOREO_TEST_BROKER", "memory://"),
        os.environ.get("CHOREO_TEST_STORE", "memory://"),
    )
    await _one_handler(choreo_harness, choreo_clock)


def _run_user_tests(tmp_path: Path, *args: str, expected: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_user.py").write_text(USER_TEST)
    (tmp_path / "conftest.py").write_text(
        f"import pytest\n\n\n@pytest.fixture\ndef expected_broker():\n    return {expected!r}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_TEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-o", "asyncio_mode=auto", str(tmp_path), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_a_users_suite_runs_on_memory_by_default(tmp_path: Path) -> None:
    done = _run_user_tests(tmp_path, "--choreo-store=memory://", expected="memory")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


@pytest.mark.kafka
@pytest.mark.redis
async def test_one_setting_switches_the_harness_to_kafka_and_redis(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    kafka_bootstrap: str,
    redis_url: str,
) -> None:
    monkeypatch.setenv("CHOREO_TEST_BROKER", f"kafka://{kafka_bootstrap}")
    monkeypatch.setenv("CHOREO_TEST_STORE", redis_url)
    backend: Backend = request.getfixturevalue("choreo_backend")
    assert backend == Backend(f"kafka://{kafka_bootstrap}", redis_url)
    make: HarnessFactory = request.getfixturevalue("choreo_harness")
    assert await _one_handler(make) == "KafkaTransport"
