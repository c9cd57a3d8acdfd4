"""Handlers with ``ctx.db`` on the PostgreSQL store, through the real dispatcher (memory
transport, real PostgreSQL): the handler's SQL commits with its barrier record and its
outgoing events, a business failure or a refused guard rolls it back, a retried attempt's
SQL is undone before the next, and concurrent deliveries of one record run the handler
once (the second waits on the barrier row's unique key)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from choreo import BusinessFailure, Context, Event, Service, codec
from choreo.dispatch import Dispatcher
from choreo.errors import ConfigurationError
from choreo.events import Envelope, Message
from choreo.store.postgres import PostgresStore
from choreo.transport.base import Record
from choreo.transport.memory import MemoryBroker, MemoryTransport

pytestmark = pytest.mark.postgres


class Pay(Event, topic="pgd.pay"):
    order_id: str
    amount: int
    mode: str = "ok"  # ok | decline | flaky | guard | slow


class Paid(Event, topic="pgd.out"):
    order_id: str


class Refund(Event, topic="pgd.refund"):
    order_id: str


class Refunded(Event, topic="pgd.out"):
    order_id: str


@dataclass
class Env:
    store: PostgresStore
    transport: MemoryTransport
    table: str
    runs: dict[str, int] = field(default_factory=dict)
    dispatchers: list[Dispatcher] = field(default_factory=list)

    def dispatcher(self) -> Dispatcher:
        table, runs = self.table, self.runs
        app = Service("pgd")

        @app.on_event(Pay, step="pay")
        async def pay(event: Pay, ctx: Context) -> Paid:
            runs[event.order_id] = runs.get(event.order_id, 0) + 1
            await ctx.db.execute(f"INSERT INTO {table} VALUES ($1, $2)", event.order_id,
                                 event.amount)  # fmt: skip
            if event.mode == "decline":
                raise BusinessFailure("declined after writing")
            if event.mode == "flaky" and runs[event.order_id] == 1:
                raise ConnectionError("flaky downstream")
            if event.mode == "guard":
                ctx.tx.incr(f"limit:{event.order_id}", -1, minimum=0)
            if event.mode == "slow":
                await asyncio.sleep(0.3)
            return Paid(order_id=event.order_id)

        @app.on_event(Refund, step="pay", op="compensate")
        async def refund(event: Refund, ctx: Context) -> Refunded:
            await ctx.db.execute(f"DELETE FROM {table} WHERE order_id = $1", event.order_id)
            return Refunded(order_id=event.order_id)

        made = Dispatcher(
            service=app.name, routes=app.routes(), registry=app.registry(), store=self.store,
            transport=self.transport, dlq_topic="pgd.dlq", limits=codec.Limits(),
        )  # fmt: skip
        self.dispatchers.append(made)
        return made

    async def rows(self) -> list[tuple[str, int]]:
        found = await self.store.pool.fetch(f"SELECT order_id, amount FROM {self.table}")
        return sorted((row["order_id"], row["amount"]) for row in found)

    def published(self) -> list[tuple[str, str, str]]:
        records = self.transport.broker.records("pgd.out")
        records += self.transport.broker.records("choreo.system")
        out = []
        for r in records:
            envelope = codec.decode_envelope(r)
            out.append((envelope.gid, envelope.event_type, envelope.event_id))
        return out


@pytest.fixture
async def env(postgres_url: str) -> AsyncIterator[Env]:
    ns = uuid.uuid4().hex[:8]
    async with PostgresStore(postgres_url, table_prefix=f"d{ns}_") as store:
        assert isinstance(store, PostgresStore)
        table = f"payments_{ns}"
        await store.pool.execute(f"CREATE TABLE {table} (order_id text PRIMARY KEY, amount int)")
        yield Env(store, MemoryTransport(MemoryBroker(1)), table)


def record(event: Event, gid: str, offset: int = 0) -> Record:
    envelope = Envelope(event_type=event.event_type, gid=gid, event_id=f"in-{gid}-{offset}")
    out = codec.encode(Message(envelope, event, event.topic))
    return Record(out.topic, 0, offset, out.key, out.value, out.headers)


async def test_the_handlers_sql_commits_once_and_duplicates_republish(env: Env) -> None:
    dispatcher = env.dispatcher()
    pay = record(Pay(order_id="o1", amount=30), "g1")
    await dispatcher.handle(pay)
    await dispatcher.handle_batch([pay, pay])

    assert env.runs == {"o1": 1}
    assert await env.rows() == [("o1", 30)]
    published = env.published()
    assert [kind for _, kind, _ in published] == ["Paid"] * 3
    assert len({event_id for _, _, event_id in published}) == 1  # the same event each time


async def test_a_business_failure_rolls_the_sql_back_and_records_the_failure(env: Env) -> None:
    dispatcher = env.dispatcher()
    await dispatcher.handle(record(Pay(order_id="o2", amount=5, mode="decline"), "g2"))

    assert await env.rows() == []
    assert [kind for _, kind, _ in env.published()] == ["choreo.StepFailed"]
    (recorded,) = await env.store.records("g2")
    assert recorded.status == "failed"
    # Its compensation is then null: the refund does not run.
    await dispatcher.handle(record(Refund(order_id="o2"), "g2", 1))
    kinds = [kind for _, kind, _ in env.published()]
    assert kinds == ["choreo.StepFailed", "choreo.CompensationSkipped"]


async def test_a_failed_attempts_sql_is_undone_before_the_retry(env: Env) -> None:
    dispatcher = env.dispatcher()
    dispatcher.invoke.sleep = lambda _: asyncio.sleep(0)
    await dispatcher.handle(record(Pay(order_id="o3", amount=7, mode="flaky"), "g3"))

    assert env.runs == {"o3": 2}
    assert await env.rows() == [("o3", 7)]  # the first attempt's insert did not stay
    assert [kind for _, kind, _ in env.published()] == ["Paid"]


async def test_a_refused_guard_rolls_the_sql_back_and_fails_the_step(env: Env) -> None:
    dispatcher = env.dispatcher()
    batch = [
        record(Pay(order_id="o4", amount=1, mode="guard"), "g4"),
        record(Pay(order_id="o5", amount=2), "g5", 1),
    ]
    await dispatcher.handle_batch(batch)

    assert await env.rows() == [("o5", 2)]
    assert sorted(kind for _, kind, _ in env.published()) == ["Paid", "choreo.StepFailed"]
    assert [r.status for r in await env.store.records("g4")] == ["failed"]


async def test_compensation_undoes_the_action_and_a_late_action_hangs(env: Env) -> None:
    dispatcher = env.dispatcher()
    await dispatcher.handle_batch(
        [
            record(Pay(order_id="o6", amount=3), "g6"),
            record(Refund(order_id="o6"), "g6", 1),
            record(Refund(order_id="o7"), "g7", 2),  # before its action: null
            record(Pay(order_id="o7", amount=4), "g7", 3),  # hanging: never runs
        ]
    )
    assert await env.rows() == []
    assert env.runs == {"o6": 1}
    kinds = [kind for _, kind, _ in env.published()]
    assert sorted(kinds) == ["Paid", "Refunded", "choreo.CompensationSkipped"]


async def test_concurrent_deliveries_run_the_handler_once(env: Env) -> None:
    first, second = env.dispatcher(), env.dispatcher()
    pay = record(Pay(order_id="o8", amount=9, mode="slow"), "g8")

    await asyncio.gather(first.handle(pay), second.handle(pay))

    assert env.runs == {"o8": 1}  # the second waited on the unique key, then found it
    assert await env.rows() == [("o8", 9)]
    published = env.published()
    assert len(published) == 2
    assert len({event_id for _, _, event_id in published}) == 1


async def test_ctx_db_without_a_sql_store_is_a_configuration_error() -> None:
    ctx = Context(Envelope(event_type="x", gid="g"), "s", None, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="postgresql://"):
        _ = ctx.db
