"""A service's /healthz, /readyz and /metrics (``choreo run --http``).

In process on the memory transport: the metrics count what happened (records handled by
decision, attempts, dead letters by kind, batches, commits, lag) and parse with
prometheus_client's own parser; /metrics needs the token, the probes do not. On real
Kafka + Redis, through ``choreo run --http`` as a subprocess: ready, unready while Redis
is stopped (SIGSTOP: it does not answer), ready again when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from choreo import Context, Event, Service, codec
from choreo.errors import ConfigurationError
from choreo.events import Envelope, Message
from choreo.local.redis_server import RedisServer
from choreo.metrics import ServiceMetrics
from choreo.service_api import serve_service_api
from choreo.store.memory import MemoryStore
from choreo.transport.base import OutgoingRecord
from choreo.transport.memory import MemoryBroker, MemoryTransport

TOKEN = "s3cret-token"


class Ask(Event, type="svcapi.Ask", topic="svcapi.in"):
    n: int


class Answer(Event, type="svcapi.Answer", topic="svcapi.out"):
    n: int


def build() -> Service:
    app = Service("svcapi")

    @app.on_event(Ask, step="answer")
    async def answer(event: Ask, ctx: Context) -> Answer:
        return Answer(n=event.n)

    return app


def ask(n: int, gid: str) -> OutgoingRecord:
    event = Ask(n=n)
    return codec.encode(Message(Envelope.first(event, gid=gid), event, event.topic))


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels: value} of every sample."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def wait_until(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_memory_metrics_count_what_happened_and_need_the_token() -> None:
    app = build()
    metrics = ServiceMetrics(app.name)
    app.middleware.append(metrics)
    transport = MemoryTransport(MemoryBroker(3))
    async with (
        app.running(broker=transport, store=MemoryStore()),
        serve_service_api(app, metrics, "127.0.0.1", 0, TOKEN) as port,
        aiohttp.ClientSession() as http,
    ):
        gids = [f"g{i}" for i in range(5)]
        await transport.send_many([ask(i, gid) for i, gid in enumerate(gids)])
        await transport.send_many([ask(0, gids[0])])  # a duplicate delivery of g0's event
        poison = OutgoingRecord(Ask.topic, b"bad", b"{not json", ((codec.H_TYPE, b"svcapi.Ask"),))
        await transport.send_many([poison])
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}

        async def all_seen() -> bool:
            async with http.get(f"{base}/metrics", headers=auth) as response:
                seen = families(await response.text())
            handled = sum(seen.get("choreo_records_handled_total", {}).values())
            return handled == 6 and bool(seen.get("choreo_dead_letters_total"))

        await wait_until(all_seen)
        async with http.get(f"{base}/metrics") as response:
            assert response.status == 401
        async with http.get(f"{base}/metrics", headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["ok"] is True
        async with http.get(f"{base}/readyz") as response:
            body = await response.json()
            assert response.status == 200, body
            assert body == {"ready": True, "service": "svcapi", "problems": {}}

        # The offsets of everything handled get committed, and the lag drains to zero.
        async def lag_drained() -> bool:
            async with http.get(f"{base}/metrics", headers=auth) as response:
                lag = families(await response.text()).get("choreo_consumer_lag", {})
            return len(lag) == 4 and sum(lag.values()) == 0  # the service's 4 partitions

        await wait_until(lag_drained)
        async with http.get(f"{base}/metrics", headers=auth) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            seen = families(await response.text())

    handled = {
        dict(key)["decision"]: value for key, value in seen["choreo_records_handled_total"].items()
    }
    assert handled == {"applied": 5.0, "duplicate": 1.0}
    assert seen["choreo_handler_attempts_total"] == {
        (("handler", "answer"), ("service", "svcapi")): 5.0
    }  # the duplicate ran nothing
    assert seen["choreo_dead_letters_total"] == {(("kind", "poison"), ("service", "svcapi")): 1.0}
    assert seen["choreo_batch_records_sum"][(("service", "svcapi"),)] == 7.0
    assert seen["choreo_batch_seconds_count"][(("service", "svcapi"),)] >= 1
    assert seen["choreo_offset_commits_total"][(("service", "svcapi"),)] >= 1
    # The service stopped: it is not alive any more, and what arrives now is lag.
    assert not app.alive()
    await transport.send_many([ask(7, "late-1"), ask(8, "late-2")])
    await metrics.refresh_lag(transport, app.group, app.subscribed_topics())
    lag = families(metrics.exposition().decode())["choreo_consumer_lag"]
    assert sum(lag.values()) == 2


async def test_open_access_only_on_loopback() -> None:
    app = build()
    with pytest.raises(ConfigurationError, match="only a loopback"):
        async with serve_service_api(app, ServiceMetrics(app.name), "0.0.0.0", 0, None,
                                     open_access=True):  # fmt: skip
            pass
    with pytest.raises(ConfigurationError, match="needs a bearer token"):
        async with serve_service_api(app, ServiceMetrics(app.name), "127.0.0.1", 0, None):
            pass


# -- real Kafka + Redis, through the CLI ------------------------------------------------

APP_MODULE = "tests.procs.svcapi_app"


@pytest.fixture
def paused_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own: the test stops it (SIGSTOP) and lets it go again."""
    server = RedisServer(tmp_path / "redis", die_with_parent=True, persist=False)
    try:
        server.start()
    except Exception as exc:  # the same rule as conftest's servers
        if os.environ.get("CI") == "true":
            pytest.fail(f"redis unavailable: {exc}", pytrace=False)
        pytest.skip(f"redis unavailable: {exc}")
    yield server
    with contextlib.suppress(Exception):
        server.resume()
    server.stop()


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
async def test_choreo_run_http_turns_unready_while_redis_is_stopped(
    kafka_bootstrap: str, paused_redis: RedisServer, tmp_path: Path
) -> None:
    topic_prefix = f"svcapi{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "SVCAPI_PREFIX": topic_prefix,
        "CHOREO_SERVICE_TOKEN": TOKEN,
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    log = (tmp_path / "service.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "choreo.cli.main", "run", f"{APP_MODULE}:app",
         "--broker", f"kafka://{kafka_bootstrap}", "--store", paused_redis.address(),
         "--http", "127.0.0.1:0"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        port = await _bound_port(tmp_path / "service.log", process)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:

            async def ready(expected: bool) -> bool:
                async with http.get(f"{base}/readyz") as response:
                    body = await response.json()
                    return (response.status == 200) is expected and body["ready"] is expected

            await wait_until(lambda: ready(True), 60)
            paused_redis.pause()
            await wait_until(lambda: ready(False), 30)
            async with http.get(f"{base}/readyz") as response:
                problems = (await response.json())["problems"]
            assert set(problems) == {"store"}, problems
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200  # alive: the store's trouble is not a crash
            paused_redis.resume()
            await wait_until(lambda: ready(True), 30)
            async with http.get(
                f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                assert response.status == 200
                seen = families(await response.text())
            assert "choreo_consumer_lag" in seen
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.seek(0)
        output = log.read()
        log.close()
    assert process.returncode == 0, output
    assert TOKEN not in output  # given, not generated: never printed


async def _bound_port(path: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"endpoints on http://127\.0\.0\.1:(\d+)", path.read_text())
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            raise AssertionError(f"choreo run ended: {path.read_text()}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"no endpoint announced: {path.read_text()}")
