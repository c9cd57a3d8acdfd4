"""Hypothesis drives the real dispatcher and barrier (memory transport; memory store, and
the PostgreSQL store with fewer examples, ``postgres`` marker) through
arbitrary orders, duplicates and concurrency of one step's action and compensation
deliveries, and checks DESIGN.md's invariant 3: a compensation for an action that never
ran is a no-op, an action arriving after its compensation does not run, and duplicates
never apply twice. Deliveries come one record per ``handle`` call, or as batches through
``handle_batch`` (several at once, as the worker hands a partition's records over); a
plan without concurrency must then give exactly what record-by-record delivery gives."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from choreo import CompensationSkipped, Context, Event, Service, codec
from choreo.dispatch import Dispatcher
from choreo.events import Envelope, Message
from choreo.store.base import Store
from choreo.store.memory import MemoryStore
from choreo.store.postgres import PostgresStore
from choreo.transport.base import Record
from choreo.transport.memory import MemoryBroker, MemoryTransport


class Reserve(Event, topic="prop.reserve"):
    qty: int


class Reserved(Event, topic="prop.out"):
    qty: int


class Release(Event, topic="prop.release"):
    qty: int


class Released(Event, topic="prop.out"):
    qty: int


@dataclass
class Counts:
    action_runs: int = 0
    compensation_runs: int = 0
    other_runs: int = 0


def build(counts: Counts) -> Service:
    app = Service("prop")

    @app.on_event(Reserve, step="stock")
    async def reserve(event: Reserve, ctx: Context) -> Reserved:
        if ctx.gid == "g":
            counts.action_runs += 1
        else:
            counts.other_runs += 1
        await asyncio.sleep(0)  # let a concurrent delivery interleave here
        ctx.tx.incr(f"stock:{ctx.gid}", -event.qty)
        return Reserved(qty=event.qty)

    @app.on_event(Release, step="stock", op="compensate")
    async def release(event: Release, ctx: Context) -> Released:
        counts.compensation_runs += 1
        await asyncio.sleep(0)
        ctx.tx.incr(f"stock:{ctx.gid}", event.qty)
        return Released(qty=event.qty)

    return app


def record(event: Event, event_id: str, offset: int, gid: str = "g") -> Record:
    envelope = Envelope(event_type=event.event_type, gid=gid, event_id=event_id)
    out = codec.encode(Message(envelope, event, event.topic))
    return Record(out.topic, 0, offset, out.key, out.value, out.headers)


RECORDS = {
    "action": record(Reserve(qty=1), "action-1", 0),
    "compensation": record(Release(qty=1), "release-1", 0),
    # Another saga's action on the same partition, between the first saga's records.
    "other": record(Reserve(qty=1), "other-1", 0, gid="h"),
}


@dataclass
class Outcome:
    """What a delivery plan left behind."""

    counts: Counts
    stock: int
    other_stock: int
    published: list[tuple[str, str, str]]  # (gid, type, id), partition by partition
    barrier: list[tuple[str, str, str]]
    flat: list[str] = field(default_factory=list)


# A round is a list of deliveries run concurrently (as records of different partitions
# are in the worker); rounds run one after another. A delivery is a list of records
# handed over in one call: through ``handle`` one by one, or ``handle_batch`` at once.
Round = list[list[str]]


async def open_store(postgres_url: str | None) -> Store:
    """A memory store, or the SQL barrier emptied for this example (its own tables)."""
    if postgres_url is None:
        return MemoryStore()
    store = PostgresStore(postgres_url, table_prefix="prop_")
    await store.start()
    await store.pool.execute("TRUNCATE prop_barrier, prop_kv")
    return store


async def deliver(
    rounds: list[Round], *, batched: bool, postgres_url: str | None = None
) -> Outcome:
    store = await open_store(postgres_url)
    try:
        return await _deliver(store, rounds, batched=batched)
    finally:
        await store.stop()


async def _deliver(store: Store, rounds: list[Round], *, batched: bool) -> Outcome:
    counts = Counts()
    app = build(counts)
    transport = MemoryTransport(MemoryBroker())
    dispatcher = Dispatcher(
        service=app.name, routes=app.routes(), registry=app.registry(), store=store,
        transport=transport, dlq_topic="prop.dlq", limits=codec.Limits(),
    )  # fmt: skip

    async def one(kinds: list[str]) -> None:
        batch = [replace(RECORDS[kind], offset=i) for i, kind in enumerate(kinds)]
        if batched:
            await dispatcher.handle_batch(batch)
        else:
            for item in batch:
                await dispatcher.handle(item)

    for round_ in rounds:
        await asyncio.gather(*(one(kinds) for kinds in round_))

    published = transport.broker.records("prop.out") + transport.broker.records("choreo.system")
    headers = [dict(r.headers) for r in published]
    barrier = [r for gid in ("g", "h") for r in await store.records(gid)]
    return Outcome(
        counts=counts,
        stock=await store.get_int("stock:g"),
        other_stock=await store.get_int("stock:h"),
        published=[
            (h[codec.H_GID].decode(), h[codec.H_TYPE].decode(), h[codec.H_ID].decode())
            for h in headers
        ],
        barrier=sorted((r.key.gid, r.key.op, r.status) for r in barrier),
        flat=[kind for round_ in rounds for kinds in round_ for kind in kinds],
    )


def check_invariants(outcome: Outcome, *, one_at_a_time: bool) -> None:
    flat, counts, stock = outcome.flat, outcome.counts, outcome.stock
    first_action = flat.index("action") if "action" in flat else None
    first_compensation = flat.index("compensation") if "compensation" in flat else None
    if one_at_a_time:
        # Delivered one at a time, a duplicate never even reaches the handler. (Two
        # concurrent copies may both run it; the atomic commit keeps one effect.)
        assert counts.action_runs <= 1
        assert counts.compensation_runs <= 1
        assert counts.other_runs <= 1
    if first_compensation is None:
        assert stock == (-1 if first_action is not None else 0)
    else:
        # Compensated in the end: the action's effect is undone or never happened.
        assert stock == 0
    mine = [(kind, event_id) for gid, kind, event_id in outcome.published if gid == "g"]
    types = [kind for kind, _ in mine]
    ids = {event_id for _, event_id in mine}
    applied = ("g", "action", "done") in outcome.barrier
    assert ("Reserved" in types) == applied  # published exactly when its effect applied
    if first_compensation is not None:
        # Confirmed exactly one way: undone for real, or null (the action never applied).
        assert ("Released" in types) == applied
        assert (CompensationSkipped.event_type in types) == (not applied)
    # Re-publications of one outcome reuse its id: distinct ids = distinct outcomes.
    assert len(ids) == len(set(types))
    # The other saga is untouched by the first one's records around it.
    others = [item for item in outcome.published if item[0] == "h"]
    assert outcome.other_stock == (-1 if "other" in flat else 0)
    assert len(others) == flat.count("other")
    assert len({event_id for _, _, event_id in others}) == min(1, len(others))


# A delivery plan: rounds run one after another; the deliveries inside a round run
# concurrently, each a single record.
deliveries = st.lists(
    st.lists(st.sampled_from(["action", "compensation"]), min_size=1, max_size=3),
    min_size=0,
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(plan=deliveries)
def test_barrier_invariants_under_any_delivery_order(plan: list[list[str]]) -> None:
    run_plan(plan, None)


@pytest.mark.postgres
@settings(max_examples=25, deadline=None)
@given(plan=deliveries)
def test_sql_barrier_invariants_under_any_delivery_order(
    postgres_url: str, plan: list[list[str]]
) -> None:
    run_plan(plan, postgres_url)


def run_plan(plan: list[list[str]], postgres_url: str | None) -> None:
    rounds = [[[kind] for kind in round_] for round_ in plan]
    outcome = asyncio.run(deliver(rounds, batched=False, postgres_url=postgres_url))
    check_invariants(outcome, one_at_a_time=all(len(round_) == 1 for round_ in plan))


# A batched plan: rounds of concurrent batches, each batch a sequence of records
# (duplicates, an action and its compensation in either order, another saga between).
batch = st.lists(st.sampled_from(["action", "compensation", "other"]), min_size=1, max_size=6)
batched_plans = st.lists(st.lists(batch, min_size=1, max_size=2), min_size=0, max_size=4)


@settings(max_examples=150, deadline=None)
@given(plan=batched_plans)
def test_barrier_invariants_under_batched_delivery(plan: list[Round]) -> None:
    asyncio.run(run_batched(plan))


@pytest.mark.postgres
@settings(max_examples=25, deadline=None)
@given(plan=batched_plans)
def test_sql_barrier_invariants_under_batched_delivery(
    postgres_url: str, plan: list[Round]
) -> None:
    asyncio.run(run_batched(plan, postgres_url))


async def run_batched(plan: list[Round], postgres_url: str | None = None) -> None:
    outcome = await deliver(plan, batched=True, postgres_url=postgres_url)
    sequential = all(len(round_) == 1 for round_ in plan)
    check_invariants(outcome, one_at_a_time=sequential)
    if sequential:
        # Without concurrency a batch is exactly its records handled one by one: same
        # handler runs, effects, barrier records, and published records in order.
        single = await deliver(
            [[[kind]] for kind in outcome.flat], batched=False, postgres_url=postgres_url
        )
        assert outcome.counts == single.counts
        assert (outcome.stock, outcome.other_stock) == (single.stock, single.other_stock)
        assert outcome.barrier == single.barrier
        assert outcome.published == single.published
