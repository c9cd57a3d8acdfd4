"""One contract for every store: the barrier's decisions and the effects it guards.

Each test runs on the in-memory store, on a real Redis (``redis`` marker) and on a real
PostgreSQL (``postgres`` marker) with the same assertions. Tests isolate themselves with a
fresh gid and fresh data keys, so they share the session's servers without flushing them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from choreo.errors import TransportError
from choreo.local._process import free_port
from choreo.store.base import (
    DEFAULT_RETENTION_SECONDS,
    SAFE_INTEGER,
    BarrierKey,
    BarrierRecord,
    BarrierResult,
    Commit,
    Decision,
    Delete,
    Effect,
    Incr,
    Put,
    Status,
    Store,
)
from choreo.store.memory import MemoryStore
from choreo.store.postgres import PostgresStore
from choreo.store.redis import LAYOUT_UPGRADE_SECONDS, RedisStore

NULL = b'{"null": true}'


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """Opens stores of one kind and lets time pass for them."""

    kind: str
    url: str = ""
    clock: FakeClock = field(default_factory=FakeClock)
    opened: list[Store] = field(default_factory=list)

    async def open(self, retention_seconds: int = DEFAULT_RETENTION_SECONDS) -> Store:
        store: Store
        if self.kind == "memory":
            store = MemoryStore(retention_seconds=retention_seconds, clock=self.clock)
        elif self.kind == "postgres":
            store = PostgresStore(self.url, retention_seconds=retention_seconds)
        else:
            store = RedisStore(self.url, retention_seconds=retention_seconds)
        await store.start()
        self.opened.append(store)
        return store

    async def elapse(self, seconds: float) -> None:
        if self.kind == "memory":
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)  # the server expires records on its own clock

    async def close(self) -> None:
        for store in self.opened:
            await store.stop()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    kind: str = request.param
    url = request.getfixturevalue(f"{kind}_url") if kind != "memory" else ""
    made = Backend(kind, url)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()


@pytest.fixture
def ns() -> str:
    """A fresh namespace for this test's gid and data keys."""
    return uuid.uuid4().hex


def action(ns: str, step: str = "reserve") -> BarrierKey:
    return BarrierKey(f"gid-{ns}", step, "action")


def compensate(ns: str, step: str = "reserve") -> BarrierKey:
    return BarrierKey(f"gid-{ns}", step, "compensate")


async def commit(
    store: Store,
    key: BarrierKey,
    effects: list[Effect] | None = None,
    *,
    outputs: bytes = b"out",
    status: Status = "done",
    null_outputs: bytes = NULL,
    handler_ran: bool = True,
) -> BarrierResult:
    return await store.commit(
        key,
        status=status,
        outputs=outputs,
        effects=effects or [],
        null_outputs=null_outputs,
        handler_ran=handler_ran,
    )


async def records(store: Store, gid: str) -> list[BarrierRecord]:
    return sorted(await store.records(gid), key=lambda r: (r.key.step, r.key.op))


# -- check ---------------------------------------------------------------------------


async def test_check_on_a_fresh_key(store: Store, ns: str) -> None:
    assert await store.check(action(ns)) == BarrierResult(Decision.RUN)
    assert await store.check(compensate(ns)) == BarrierResult(Decision.NULL_COMPENSATION)
    assert await store.records(f"gid-{ns}") == []


# -- action --------------------------------------------------------------------------


async def test_action_is_applied_once(store: Store, ns: str) -> None:
    stock, owner = f"{ns}:stock", f"{ns}:owner"
    await store.apply([Put(stock, "5")])

    result = await commit(store, action(ns), [Incr(stock, -2, minimum=0), Put(owner, "ané")])

    assert result == BarrierResult(Decision.APPLIED, b"out")
    assert await store.get_int(stock) == 3
    assert await store.get(owner) == "ané"
    assert await store.check(action(ns)) == BarrierResult(Decision.DUPLICATE, b"out")


async def test_duplicate_action_returns_stored_outputs_and_does_not_reapply(
    store: Store, ns: str
) -> None:
    stock = f"{ns}:stock"
    first = await commit(store, action(ns), [Incr(stock, 1)], outputs=b"first")
    again = await commit(store, action(ns), [Incr(stock, 1)], outputs=b"second")

    assert first == BarrierResult(Decision.APPLIED, b"first")
    assert again == BarrierResult(Decision.DUPLICATE, b"first")
    assert await store.get_int(stock) == 1


async def test_failed_action_is_recorded_and_its_compensation_is_null(
    store: Store, ns: str
) -> None:
    stock = f"{ns}:stock"
    failed = await commit(store, action(ns), [Incr(stock, 1)], status="failed", outputs=b"why")

    assert failed == BarrierResult(Decision.FAILED, b"why")
    assert await store.get(stock) is None
    assert await records(store, f"gid-{ns}") == [BarrierRecord(action(ns), "failed", b"why")]
    assert await store.check(action(ns)) == BarrierResult(Decision.DUPLICATE, b"why")
    assert await store.check(compensate(ns)) == BarrierResult(Decision.NULL_COMPENSATION)

    undo = await commit(store, compensate(ns), [Incr(stock, -1)], outputs=b"undone")

    assert undo == BarrierResult(Decision.NULL_COMPENSATION, NULL)
    assert await store.get(stock) is None
    assert await records(store, f"gid-{ns}") == [
        BarrierRecord(action(ns), "failed", b"why"),
        BarrierRecord(compensate(ns), "done", NULL),
    ]


# -- compensation --------------------------------------------------------------------


async def test_compensation_after_the_action_is_applied(store: Store, ns: str) -> None:
    stock = f"{ns}:stock"
    await store.apply([Put(stock, "5")])
    await commit(store, action(ns), [Incr(stock, -2, minimum=0)])
    assert await store.check(compensate(ns)) == BarrierResult(Decision.RUN)

    undo = await commit(store, compensate(ns), [Incr(stock, 2)], outputs=b"released")

    assert undo == BarrierResult(Decision.APPLIED, b"released")
    assert await store.get_int(stock) == 5
    assert await store.check(compensate(ns)) == BarrierResult(Decision.DUPLICATE, b"released")


async def test_compensation_before_the_action_is_null_and_the_action_hangs(
    store: Store, ns: str
) -> None:
    stock = f"{ns}:stock"
    undo = await commit(store, compensate(ns), [Incr(stock, 2)], outputs=b"released")

    assert undo == BarrierResult(Decision.NULL_COMPENSATION, NULL)
    assert await records(store, f"gid-{ns}") == [BarrierRecord(compensate(ns), "done", NULL)]
    assert await store.get(stock) is None

    assert await store.check(action(ns)) == BarrierResult(Decision.HANGING)
    late = await commit(store, action(ns), [Incr(stock, -2)])

    assert late == BarrierResult(Decision.HANGING)
    assert await store.get(stock) is None
    assert await records(store, f"gid-{ns}") == [BarrierRecord(compensate(ns), "done", NULL)]


async def test_duplicate_compensation(store: Store, ns: str) -> None:
    stock = f"{ns}:stock"
    await commit(store, action(ns), [Incr(stock, -1)])
    first = await commit(store, compensate(ns), [Incr(stock, 1)], outputs=b"released")
    again = await commit(store, compensate(ns), [Incr(stock, 1)], outputs=b"other")

    assert first == BarrierResult(Decision.APPLIED, b"released")
    assert again == BarrierResult(Decision.DUPLICATE, b"released")
    assert await store.get_int(stock) == 0


async def test_duplicate_null_compensation_returns_the_null_outputs(store: Store, ns: str) -> None:
    await commit(store, compensate(ns))
    again = await commit(store, compensate(ns), null_outputs=b"other")

    assert again == BarrierResult(Decision.DUPLICATE, NULL)


async def test_compensation_whose_handler_has_not_run_asks_to_run_it(store: Store, ns: str) -> None:
    stock = f"{ns}:stock"
    await commit(store, action(ns), [Incr(stock, -1)])

    result = await commit(store, compensate(ns), [Incr(stock, 1)], handler_ran=False)

    assert result == BarrierResult(Decision.RUN)
    assert await store.get_int(stock) == -1
    assert await records(store, f"gid-{ns}") == [BarrierRecord(action(ns), "done", b"out")]
    assert await store.check(compensate(ns)) == BarrierResult(Decision.RUN)


# -- guards and effects --------------------------------------------------------------


async def test_guard_refusal_writes_nothing(store: Store, ns: str) -> None:
    stock, owner = f"{ns}:stock", f"{ns}:owner"
    await store.apply([Put(stock, "1")])

    result = await commit(
        store, action(ns), [Put(owner, "x"), Incr(stock, -2, minimum=0), Delete(stock)]
    )

    assert result == BarrierResult(
        Decision.REJECTED, detail=f"{stock} would become -1, below its minimum 0"
    )
    assert await store.get(stock) == "1"
    assert await store.get(owner) is None
    assert await store.records(f"gid-{ns}") == []
    assert await store.check(action(ns)) == BarrierResult(Decision.RUN)


async def test_guard_refusal_on_maximum_reports_the_first_refusing_effect(
    store: Store, ns: str
) -> None:
    seats, other = f"{ns}:seats", f"{ns}:other"
    await store.apply([Put(seats, "9")])

    result = await commit(
        store, action(ns), [Incr(seats, 2, maximum=10), Incr(other, -1, minimum=0)]
    )

    assert result.decision is Decision.REJECTED
    assert result.detail == f"{seats} would become 11, above its maximum 10"
    assert result.outputs == b""
    assert await store.get(seats) == "9"


async def test_guards_at_their_bounds_pass(store: Store, ns: str) -> None:
    stock = f"{ns}:stock"
    await store.apply([Put(stock, "2")])

    result = await commit(store, action(ns), [Incr(stock, -2, minimum=0, maximum=2)])

    assert result.decision is Decision.APPLIED
    assert await store.get_int(stock) == 0


async def test_effects_apply_in_order(store: Store, ns: str) -> None:
    a, b, c = f"{ns}:a", f"{ns}:b", f"{ns}:c"
    await store.apply([Put(c, "gone soon")])

    result = await commit(
        store,
        action(ns),
        [Put(a, "5"), Incr(a, 2), Incr(b, 3), Delete(b), Incr(b, -4), Delete(c)],
    )

    assert result.decision is Decision.APPLIED
    assert await store.get(a) == "7"
    assert await store.get(b) == "-4"
    assert await store.get(c) is None


async def test_apply_outside_a_barrier(store: Store, ns: str) -> None:
    stock = f"{ns}:stock"

    assert await store.apply([Incr(stock, 3), Put(f"{ns}:name", "x")]) == ""
    assert await store.apply([Incr(stock, -4, minimum=0)]) == (
        f"{stock} would become -1, below its minimum 0"
    )
    assert await store.get_int(stock) == 3
    assert await store.apply([Delete(stock), Delete(f"{ns}:never")]) == ""
    assert await store.get(stock) is None
    assert await store.get_int(stock, default=7) == 7
    assert await store.apply([]) == ""


async def test_incr_on_a_value_that_is_not_an_integer_raises(store: Store, ns: str) -> None:
    name = f"{ns}:name"
    await store.apply([Put(name, "abc")])

    with pytest.raises(ValueError, match="abc"):
        await commit(store, action(ns), [Incr(name, 1)])
    with pytest.raises(ValueError, match="abc"):
        await store.apply([Incr(name, 1)])

    assert await store.get(name) == "abc"
    assert await store.records(f"gid-{ns}") == []


async def test_outputs_are_binary_safe(store: Store, ns: str) -> None:
    blob = bytes(range(256))
    assert await commit(store, action(ns), outputs=blob) == BarrierResult(Decision.APPLIED, blob)
    assert await store.check(action(ns)) == BarrierResult(Decision.DUPLICATE, blob)
    assert await commit(store, action(ns), outputs=b"") == BarrierResult(Decision.DUPLICATE, blob)
    empty = await commit(store, action(ns, "empty"), outputs=b"")
    assert empty == BarrierResult(Decision.APPLIED, b"")
    assert await store.check(action(ns, "empty")) == BarrierResult(Decision.DUPLICATE, b"")


# -- records, retention, concurrency --------------------------------------------------


async def test_records_list_what_was_written(store: Store, ns: str) -> None:
    gid = f"gid-{ns}"
    await commit(store, action(ns, "reserve"), outputs=b"r")
    await commit(store, action(ns, "pay"), status="failed", outputs=b"p")
    await commit(store, compensate(ns, "reserve"), outputs=b"rc")
    await commit(store, compensate(ns, "ship"))
    await commit(store, action(ns, "ship"))  # hanging: not recorded
    await commit(store, action(ns, "step:with:colons"), outputs=b"c")
    await commit(store, action(ns, "refused"), [Incr(f"{ns}:x", -1, minimum=0)])  # rejected
    await commit(store, action(f"other-{ns}"))

    assert await records(store, gid) == [
        BarrierRecord(BarrierKey(gid, "pay", "action"), "failed", b"p"),
        BarrierRecord(BarrierKey(gid, "reserve", "action"), "done", b"r"),
        BarrierRecord(BarrierKey(gid, "reserve", "compensate"), "done", b"rc"),
        BarrierRecord(BarrierKey(gid, "ship", "compensate"), "done", NULL),
        BarrierRecord(BarrierKey(gid, "step:with:colons", "action"), "done", b"c"),
    ]
    assert await store.records(f"gid-unknown-{ns}") == []


async def test_records_expire_after_retention(backend: Backend, ns: str) -> None:
    store = await backend.open(retention_seconds=1)
    stock = f"{ns}:stock"
    await commit(store, action(ns), [Incr(stock, 1)])
    await commit(store, compensate(ns, "other"))
    assert len(await store.records(f"gid-{ns}")) == 2

    await backend.elapse(1.2)

    assert await store.records(f"gid-{ns}") == []
    assert await store.check(action(ns)) == BarrierResult(Decision.RUN)
    assert await store.check(action(ns, "other")) == BarrierResult(Decision.RUN)
    assert await store.get_int(stock) == 1  # data does not expire


async def test_concurrent_commits_of_one_action_apply_once(store: Store, ns: str) -> None:
    stock = f"{ns}:stock"

    def attempt(i: int) -> Awaitable[BarrierResult]:
        return commit(store, action(ns), [Incr(stock, 1)], outputs=f"run-{i}".encode())

    results = await asyncio.gather(*(attempt(i) for i in range(20)))

    applied = [r for r in results if r.decision is Decision.APPLIED]
    assert len(applied) == 1
    assert all(
        r == BarrierResult(Decision.DUPLICATE, applied[0].outputs)
        for r in results
        if r is not applied[0]
    )
    assert await store.get_int(stock) == 1


async def test_concurrent_action_and_compensation_never_both_apply(store: Store, ns: str) -> None:
    stock = f"{ns}:stock"
    runs: list[Callable[[], Awaitable[BarrierResult]]] = []
    for _ in range(10):
        runs.append(lambda: commit(store, action(ns), [Incr(stock, -1)]))
        runs.append(lambda: commit(store, compensate(ns), [Incr(stock, 1)]))

    results = await asyncio.gather(*(run() for run in runs))

    decisions = {r.decision for r in results}
    stock_now = await store.get_int(stock)
    if Decision.HANGING in decisions:  # the compensation won: null, the action hangs
        assert stock_now == 0
        assert Decision.APPLIED not in decisions
    else:  # the action won: the compensation undid it
        assert stock_now == 0
        assert sum(r.decision is Decision.APPLIED for r in results) == 2


# -- Redis only ----------------------------------------------------------------------


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url)
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


@pytest.mark.redis
async def test_redis_layout_and_expiry(redis_store: RedisStore, ns: str) -> None:
    gid = f"gid-{ns}"
    await commit(redis_store, action(ns), [Put(f"{ns}:data", "v")])
    await commit(redis_store, compensate(ns, "pay"), outputs=b"unused")
    client = redis_store.client
    saga_key = f"choreo:saga:{{{gid}}}"

    # One hash per saga: every record of the saga in it, nothing else written.
    assert redis_store.saga_key(gid) == saga_key
    assert await client.hgetall(saga_key) == {
        b"s:reserve:action": b"done",
        b"o:reserve:action": b"out",
        b"s:pay:compensate": b"done",
        b"o:pay:compensate": NULL,  # a null compensation stores its own outputs
    }
    assert await client.keys(f"*{gid}*") == [saga_key.encode()]
    ttl = await client.ttl(saga_key)
    assert DEFAULT_RETENTION_SECONDS - 5 < ttl <= DEFAULT_RETENTION_SECONDS
    assert await client.ttl(f"{ns}:data") == -1  # user data is never expired


@pytest.mark.redis
async def test_redis_records_read_the_saga_hash_only(redis_store: RedisStore, ns: str) -> None:
    gid = f"gid-{ns}"
    await commit(redis_store, action(ns, "b"))
    await commit(redis_store, action(ns, "a:x"), status="failed")  # a step with a colon
    # A field the store did not write is not taken for a record.
    await redis_store.client.hset(redis_store.saga_key(gid), "s:stray", "done")

    assert await redis_store.records(gid) == [
        BarrierRecord(BarrierKey(gid, "a:x", "action"), "failed", b"out"),
        BarrierRecord(BarrierKey(gid, "b", "action"), "done", b"out"),
    ]


@pytest.mark.redis
async def test_redis_key_prefix(redis_url: str, ns: str) -> None:
    async with RedisStore(redis_url, key_prefix=f"p-{ns}") as store:
        assert isinstance(store, RedisStore)
        await commit(store, action(ns))
        assert await store.client.exists(f"p-{ns}:saga:{{gid-{ns}}}") == 1
        assert len(await store.records(f"gid-{ns}")) == 1
    async with RedisStore(redis_url) as default:
        assert await default.records(f"gid-{ns}") == []


# -- the layout before (a hash per record and an index set per saga) -----------------


async def _legacy_record(store: RedisStore, key: BarrierKey, status: str, outputs: bytes) -> None:
    """A record as choreo before the saga hash wrote it (the old script's commands)."""
    prefix = store.key_prefix
    record = f"{prefix}:barrier:{{{key.gid}}}:{key.step}:{key.op}"
    index = f"{prefix}:barrier-index:{{{key.gid}}}"
    await store.client.hset(record, mapping={"status": status, "outputs": outputs})
    await store.client.sadd(index, f"{key.step}:{key.op}")
    for name in (record, index):
        await store.client.expire(name, DEFAULT_RETENTION_SECONDS)


@pytest.fixture
async def upgraded_store(redis_url: str, ns: str) -> AsyncIterator[RedisStore]:
    """A store in use before this layout (its epoch written by the version before), now
    started by this version for the first time."""
    prefix = f"up-{ns}"
    async with RedisStore(redis_url, key_prefix=prefix) as first:  # writes the epoch
        assert isinstance(first, RedisStore)
        await first.client.delete(f"{prefix}:layout")  # as the version before left it
    async with RedisStore(redis_url, key_prefix=prefix) as store:
        assert isinstance(store, RedisStore)
        yield store


@pytest.mark.redis
async def test_a_new_store_never_reads_the_layout_before(redis_url: str, ns: str) -> None:
    async with RedisStore(redis_url, key_prefix=f"new-{ns}") as store:
        assert isinstance(store, RedisStore)
        assert store.fresh
        assert store.legacy_until == 0
        assert await store.client.get(f"new-{ns}:layout") == b"0"
        await _legacy_record(store, action(ns), "done", b"old")
        assert await store.check(action(ns)) == BarrierResult(Decision.RUN)


@pytest.mark.redis
async def test_an_upgraded_store_honours_records_of_the_layout_before(
    upgraded_store: RedisStore, ns: str
) -> None:
    store, gid = upgraded_store, f"gid-{ns}"
    now = time.time()
    window = DEFAULT_RETENTION_SECONDS + LAYOUT_UPGRADE_SECONDS
    assert not store.fresh
    assert now + window - 5 < store.legacy_until <= now + window
    await _legacy_record(store, action(ns), "done", b"old-out")
    await _legacy_record(store, compensate(ns, "ship"), "done", NULL)
    await _legacy_record(store, action(ns, "charge"), "failed", b"old-failed")

    # A redelivered action: a duplicate, its stored outputs re-published, nothing applied.
    assert await store.check(action(ns)) == BarrierResult(Decision.DUPLICATE, b"old-out")
    assert await commit(store, action(ns), [Incr(f"{ns}:n", 1)]) == BarrierResult(
        Decision.DUPLICATE, b"old-out"
    )
    assert await store.get(f"{ns}:n") is None
    # An action after its (null) compensation: hanging.
    assert await store.check(action(ns, "ship")) == BarrierResult(Decision.HANGING)
    assert (await commit(store, action(ns, "ship"))).decision is Decision.HANGING
    # The compensation of a failed action: null; of a done one: run and applied.
    assert (await store.check(compensate(ns, "charge"))).decision is Decision.NULL_COMPENSATION
    assert await store.check(compensate(ns)) == BarrierResult(Decision.RUN)
    assert (await commit(store, compensate(ns), [Incr(f"{ns}:n", 1)])).decision is (
        Decision.APPLIED
    )
    assert await store.get(f"{ns}:n") == "1"
    # Both layouts' records, one list.
    assert [(r.key.step, r.key.op, r.status, r.outputs) for r in await store.records(gid)] == [
        ("charge", "action", "failed", b"old-failed"),
        ("reserve", "action", "done", b"old-out"),
        ("reserve", "compensate", "done", b"out"),
        ("ship", "compensate", "done", NULL),
    ]

    # Another client of the same store keeps the window the first one set.
    async with RedisStore(store.url, key_prefix=store.key_prefix) as other:
        assert isinstance(other, RedisStore)
        assert other.legacy_until == store.legacy_until


@pytest.mark.redis
async def test_the_layout_before_is_not_read_once_its_records_expired(
    upgraded_store: RedisStore, ns: str
) -> None:
    store = upgraded_store
    await _legacy_record(store, action(ns), "done", b"old-out")
    store.legacy_until = time.time() - 1  # the window has passed

    assert await store.check(action(ns)) == BarrierResult(Decision.RUN)
    assert await store.records(f"gid-{ns}") == []


async def test_redis_unreachable_raises_transport_error() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(TransportError, match="cannot reach the redis store"):
        await store.start()
    await store.stop()  # harmless after a failed start


@pytest.mark.redis
async def test_redis_store_restarts(redis_url: str, ns: str) -> None:
    store = RedisStore(redis_url)
    await store.start()
    await store.start()  # idempotent
    await commit(store, action(ns))
    await store.stop()
    await store.stop()
    await store.start()
    assert await store.check(action(ns)) == BarrierResult(Decision.DUPLICATE, b"out")
    await store.stop()


async def test_guards_see_the_running_value(store: Store) -> None:
    key = f"k:{uuid.uuid4().hex}"
    assert await store.apply([Put(key, "5")]) == ""
    refusal = await store.apply([Incr(key, -5, minimum=0), Incr(key, -5, minimum=0)])
    assert refusal == f"{key} would become -5, below its minimum 0"
    assert await store.get_int(key) == 5


# -- batches (commit_many) -------------------------------------------------------------


def batch_commit(
    key: BarrierKey, effects: list[Effect], outputs: bytes = b"out", **options: Any
) -> Commit:
    return Commit(key, options.pop("status", "done"), outputs, effects, NULL, **options)


async def test_commit_many_applies_each_commit_as_if_alone(store: Store, ns: str) -> None:
    stock = f"{ns}:stock"
    other = BarrierKey(f"gid-{ns}-2", "reserve", "action")
    await store.apply([Put(stock, "2")])

    results = await store.commit_many(
        [
            batch_commit(action(ns), [Incr(stock, -2, minimum=0)], b"first"),
            batch_commit(action(ns), [Incr(stock, -2, minimum=0)], b"again"),  # duplicate
            batch_commit(other, [Incr(stock, -1, minimum=0)]),  # sees the running value: 0
            batch_commit(compensate(ns), [Incr(stock, 2)], b"undone", handler_ran=False),
            batch_commit(compensate(ns), [Incr(stock, 2)], b"undone"),
            batch_commit(other, [Incr(stock, -1, minimum=0)]),  # now there is stock
        ]
    )

    assert results == [
        BarrierResult(Decision.APPLIED, b"first"),
        BarrierResult(Decision.DUPLICATE, b"first"),
        BarrierResult(Decision.REJECTED, detail=f"{stock} would become -1, below its minimum 0"),
        BarrierResult(Decision.RUN),
        BarrierResult(Decision.APPLIED, b"undone"),
        BarrierResult(Decision.APPLIED, b"out"),
    ]
    assert await store.get_int(stock) == 1


async def test_commit_many_invalid_effects_write_nothing_and_the_batch_goes_on(
    store: Store, ns: str
) -> None:
    stock, text, owner = f"{ns}:stock", f"{ns}:text", f"{ns}:owner"
    other = BarrierKey(f"gid-{ns}-2", "reserve", "action")
    await store.apply([Put(stock, "5"), Put(text, "abc")])

    results = await store.commit_many(
        [
            batch_commit(action(ns), [Put(owner, "x"), Incr(text, 1)]),
            batch_commit(other, [Incr(stock, -1, minimum=0)]),
        ]
    )

    assert results[0].decision is Decision.INVALID
    assert "abc" in results[0].detail
    assert results[1] == BarrierResult(Decision.APPLIED, b"out")
    assert (await store.get(text), await store.get(owner)) == ("abc", None)
    assert await store.records(f"gid-{ns}") == []
    assert await store.check(action(ns)) == BarrierResult(Decision.RUN)
    assert await store.get_int(stock) == 4
    with pytest.raises(ValueError, match="abc"):  # the one-commit form raises instead
        await commit(store, action(ns), [Incr(text, 1)])


async def test_redis_refuses_unsafe_numbers_before_the_round_trip_in_their_place(
    redis_store: RedisStore, ns: str
) -> None:
    """A number Redis's Lua cannot hold exactly is refused before the round trip; the
    other commits still go, and each result stays at its commit's index."""
    store = redis_store
    stock = f"{ns}:stock"
    unsafe = [Incr(stock, SAFE_INTEGER + 1)]
    first, second = BarrierKey(f"gid-{ns}-1", "reserve", "action"), action(ns)

    results = await store.commit_many(
        [batch_commit(first, []), batch_commit(second, unsafe), batch_commit(compensate(ns), [])]
    )

    assert [r.decision for r in results] == [
        Decision.APPLIED,
        Decision.INVALID,
        Decision.NULL_COMPENSATION,
    ]
    assert "safe integer range" in results[1].detail
    refused = await store.commit_many([batch_commit(second, unsafe)] * 2)
    assert [r.decision for r in refused] == [Decision.INVALID] * 2
    assert await store.get(stock) is None


@pytest.mark.parametrize("raw", ["", "1_0", "\u0663"], ids=["empty", "underscore", "arabic"])
async def test_an_incr_of_text_that_redis_refuses_is_invalid_on_every_store(
    store: Store, ns: str, raw: str
) -> None:
    key = f"{ns}:text"
    await store.apply([Put(key, raw)])

    results = await store.commit_many([batch_commit(action(ns), [Incr(key, 1)])])

    assert results[0].decision is Decision.INVALID
    assert await store.get(key) == raw
    assert await store.records(f"gid-{ns}") == []


@pytest.mark.redis
async def test_redis_effects_on_a_key_of_another_type_are_invalid(
    redis_store: RedisStore, ns: str
) -> None:
    stock, listed = f"{ns}:stock", f"{ns}:listed"
    await redis_store.client.rpush(listed, "a")
    other = BarrierKey(f"gid-{ns}-2", "reserve", "action")

    results = await redis_store.commit_many(
        [
            batch_commit(other, [Incr(stock, 1)]),
            batch_commit(action(ns), [Incr(listed, 1)]),
            batch_commit(compensate(ns), [Incr(stock, 1)]),
        ]
    )

    assert [r.decision for r in results] == [
        Decision.APPLIED,
        Decision.INVALID,
        Decision.NULL_COMPENSATION,
    ]
    assert await redis_store.get_int(stock) == 1
    assert await redis_store.records(f"gid-{ns}") == [BarrierRecord(compensate(ns), "done", NULL)]
