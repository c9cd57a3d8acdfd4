"""The PostgreSQL outbox: ``Service.transaction()`` commits a local write with the events
it starts (idempotently by key), and relays publish committed rows in id order per gid,
woken by NOTIFY, sharing the work without interleaving a gid (memory transport here; the
SIGKILL tests on real Kafka are in tests/test_postgres_relay_crash.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest

from choreo import Event, Service, codec
from choreo.errors import ConfigurationError
from choreo.outbox import OutboxRelay, enqueue
from choreo.store.postgres import PostgresStore
from choreo.transport.base import OutgoingRecord
from choreo.transport.memory import MemoryBroker, MemoryTransport

pytestmark = pytest.mark.postgres


class OutboxOrderPlaced(Event, topic="outbox.orders"):
    order_id: str
    amount: int


async def eventually(predicate, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(postgres_url, table_prefix=f"o{uuid.uuid4().hex[:8]}_") as opened:
        assert isinstance(opened, PostgresStore)
        yield opened


async def unsent(store: PostgresStore) -> int:
    count: int = await store.pool.fetchval(
        f"SELECT count(*) FROM {store.tables.outbox} WHERE sent_at IS NULL"
    )
    return count


async def test_a_start_commits_with_its_local_write_once(store: PostgresStore) -> None:
    orders = f"orders_{uuid.uuid4().hex[:8]}"
    await store.pool.execute(f"CREATE TABLE {orders} (id text PRIMARY KEY, amount int)")
    app = Service(f"shop{uuid.uuid4().hex[:6]}", broker="memory://", store=store)
    app.register_events(OutboxOrderPlaced)

    async def rolled_back() -> None:
        async with app.transaction() as tx:
            await tx.db.execute(f"INSERT INTO {orders} VALUES ('o-2', 5)")
            await tx.start(OutboxOrderPlaced(order_id="o-2", amount=5), key="o-2")
            raise RuntimeError("the request failed before the commit")

    async with app.running():
        async with app.transaction() as tx:
            await tx.db.execute(f"INSERT INTO {orders} VALUES ('o-1', 30)")
            started = await tx.start(OutboxOrderPlaced(order_id="o-1", amount=30), key="o-1")
        with pytest.raises(RuntimeError):
            await rolled_back()
        async with app.transaction() as tx:  # a retried start after an ambiguous failure
            again = await tx.start(OutboxOrderPlaced(order_id="o-1", amount=30), key="o-1")
            assert tx.repeated == [again]
        assert (again.gid, again.event_id) == (started.gid, started.event_id)
        transport = app.transport
        assert isinstance(transport, MemoryTransport)

        async def published() -> bool:
            return await unsent(store) == 0 and bool(transport.broker.records("outbox.orders"))

        await eventually(published, "the relay to publish the start")
        records = transport.broker.records("outbox.orders")
    assert [codec.decode_envelope(r).event_id for r in records] == [started.event_id]
    assert codec.decode_envelope(records[0]).gid == started.gid
    assert await store.pool.fetch(f"SELECT id FROM {orders}") == [("o-1",)]


def numbered(gid: str, n: int) -> OutgoingRecord:
    return OutgoingRecord("outbox.numbers", gid.encode(), str(n).encode(), ())


async def test_relays_share_the_work_in_order_per_gid(store: PostgresStore) -> None:
    broker = MemoryBroker(4)
    transport = MemoryTransport(broker)
    await transport.ensure_topics(["outbox.numbers"], 4)
    relays = [OutboxRelay(store, transport, batch_size=7) for _ in range(3)]
    gids = [f"g{i}-{uuid.uuid4().hex[:6]}" for i in range(12)]
    per_gid = 25

    async def writer(gid: str) -> None:
        for n in range(per_gid):
            async with store.pool.acquire() as conn, conn.transaction():
                await enqueue(conn, store.tables, gid, [numbered(gid, n)])
            await asyncio.sleep(0)

    stopping = asyncio.Event()
    running = [asyncio.create_task(relay.run(stopping)) for relay in relays]
    await asyncio.gather(*(writer(gid) for gid in gids))

    async def all_sent() -> bool:
        return await unsent(store) == 0

    await eventually(all_sent, "every row to be published")
    stopping.set()
    await asyncio.gather(*running)

    seen: dict[str, list[int]] = defaultdict(list)
    for record in broker.records("outbox.numbers"):
        seen[(record.key or b"").decode()].append(int(record.value))
    assert seen == {gid: list(range(per_gid)) for gid in gids}  # in order, exactly once
    assert sum(relay.published for relay in relays) == len(gids) * per_gid
    assert sum(1 for relay in relays if relay.published) >= 2  # the work was shared


async def test_a_notification_wakes_a_relay_that_would_not_poll(store: PostgresStore) -> None:
    transport = MemoryTransport(MemoryBroker(1))
    await transport.ensure_topics(["outbox.numbers"], 1)
    relay = OutboxRelay(store, transport, poll_interval=3600)
    stopping = asyncio.Event()
    task = asyncio.create_task(relay.run(stopping))
    try:
        await asyncio.wait_for(relay.listening.wait(), 30)
        await asyncio.sleep(0.2)  # the first drain after LISTEN has found nothing
        async with store.pool.acquire() as conn, conn.transaction():
            await enqueue(conn, store.tables, "gid-n", [numbered("gid-n", 1)])

        async def published() -> bool:
            return relay.published == 1

        await eventually(published, "the NOTIFY to wake the relay")
    finally:
        stopping.set()
        await task


async def test_uncommitted_rows_are_not_published(store: PostgresStore) -> None:
    transport = MemoryTransport(MemoryBroker(1))
    await transport.ensure_topics(["outbox.numbers"], 1)
    relay = OutboxRelay(store, transport)
    async with store.pool.acquire() as conn, conn.transaction():
        await enqueue(conn, store.tables, "gid-u", [numbered("gid-u", 1)])
        assert await relay.drain() == 0  # not committed yet
    assert await relay.drain() == 1
    assert await relay.drain() == 0


async def test_transaction_needs_a_postgres_store() -> None:
    app = Service(f"shop{uuid.uuid4().hex[:6]}")
    async with app.running():
        with pytest.raises(ConfigurationError, match="postgresql://"):
            async with app.transaction():
                pass


async def test_a_keyed_publish_repeats_the_same_start() -> None:
    app = Service(f"shop{uuid.uuid4().hex[:6]}")
    app.register_events(OutboxOrderPlaced)
    async with app.running():
        first = await app.publish(OutboxOrderPlaced(order_id="o-9", amount=1), key="o-9")
        again = await app.publish(OutboxOrderPlaced(order_id="o-9", amount=1), key="o-9")
        other = await app.publish(OutboxOrderPlaced(order_id="o-10", amount=1), key="o-10")
        plain = await app.publish(OutboxOrderPlaced(order_id="o-9", amount=1), gid=first.gid)
    assert (again.gid, again.event_id) == (first.gid, first.event_id)
    assert other.gid != first.gid
    assert other.event_id != first.event_id
    assert plain.gid == first.gid
    assert plain.event_id != first.event_id  # without a key, every publish is a new event
