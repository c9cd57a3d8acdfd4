"""A store that forgets is noticed (real Redis, each test with a server of its own): a
Redis emptied under a running service stops it with StoreLost before anything runs twice,
and an empty Redis under a consumer group that has consumed before refuses to start."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from choreo import Context, Event, Service
from choreo.errors import StoreLost
from choreo.local.redis_server import RedisServer
from choreo.store.redis import RedisStore
from choreo.transport.memory import MemoryBroker, MemoryTransport

pytestmark = pytest.mark.redis


@pytest.fixture
def own_redis(tmp_path: Path, redis_url: str) -> Iterator[str]:
    # ``redis_url`` first: the session fixture installs or skips redis-server for us.
    server = RedisServer(tmp_path / "redis", die_with_parent=True)
    url = server.start()
    yield url
    server.stop()


class Tick(Event, topic="epoch.ticks"):
    n: int


def ticking(group: str, seen: list[int]) -> Service:
    app = Service("ticker", group=group)

    @app.on_event(Tick, step="count")
    async def count(event: Tick, ctx: Context) -> None:
        seen.append(event.n)
        ctx.tx.incr("ticks", 1)

    return app


async def wait_until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_an_emptied_redis_stops_the_running_service(own_redis: str) -> None:
    transport = MemoryTransport(MemoryBroker())
    seen: list[int] = []
    app = ticking(f"g-{uuid.uuid4().hex[:6]}", seen)

    async def run_until_the_worker_fails(store: RedisStore) -> None:
        async with app.running(broker=transport, store=store):
            await app.publish(Tick(n=1))
            await wait_until(lambda: seen == [1])
            await store.client.flushall()  # what a restart without persistence does
            await app.publish(Tick(n=2))
            await app.until_stopped(asyncio.Event())  # returns when the worker fails

    async with RedisStore(own_redis) as store:
        with pytest.raises(StoreLost, match="emptied or replaced"):
            await run_until_the_worker_fails(store)
        assert await store.get("ticks") is None  # the second tick applied nothing


async def test_an_empty_redis_under_a_group_that_consumed_refuses_to_start(
    own_redis: str,
) -> None:
    transport = MemoryTransport(MemoryBroker())
    group = f"g-{uuid.uuid4().hex[:6]}"
    seen: list[int] = []
    async with RedisStore(own_redis) as store:
        async with ticking(group, seen).running(broker=transport, store=store) as app:
            await app.publish(Tick(n=1))
            await wait_until(lambda: seen == [1])
            await wait_until(lambda: sum(transport.broker.group(group).committed.values()) == 1)
        await store.client.flushall()
    async with RedisStore(own_redis) as emptied:
        assert emptied.fresh
        with pytest.raises(StoreLost, match="has committed offsets"):
            async with ticking(group, seen).running(broker=transport, store=emptied):
                pass
    async with (
        RedisStore(own_redis, accept_empty=True) as accepted,
        ticking(group, seen).running(broker=transport, store=accepted),
    ):
        pass  # starts: the operator said the store was emptied on purpose


async def test_a_persistent_redis_restarted_keeps_its_epoch(tmp_path: Path, redis_url: str) -> None:
    server = RedisServer(tmp_path / "redis", die_with_parent=True, persist=True)
    url = server.start()
    try:
        async with RedisStore(url) as store:
            epoch = store.epoch
            assert store.fresh
        server.stop()
        url = server.start()
        async with RedisStore(url) as again:
            assert (again.epoch, again.fresh) == (epoch, False)
    finally:
        server.stop()
