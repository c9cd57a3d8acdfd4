"""Batched dispatch behaves exactly as if the batch's records were handled one by one.

The first part drives ``Dispatcher.handle_batch`` directly, on the memory store and on a
real Redis (``redis`` marker), with a memory transport for the outputs so every published
record can be read back. Each case runs the same records twice on fresh stores, once as
one batch and once through ``handle`` record by record, and requires the same effects,
the same handler runs, the same barrier records and the same published records (type,
event id, gid, step, op, outcome, causation, payload, partition and order), dead letters
included; then it checks what the case is about.

The second part runs whole services (memory, and real Kafka + Redis through the
``backend`` fixture): middleware whose hooks raise does not stop the worker, and a handler
that blocks on one partition does not hold back the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from choreo import CompensationSkipped, Context, Event, Middleware, Service, StepFailed, codec
from choreo.deadletter import DLQ_TOPIC, H_AT, H_KIND, H_REASON, DeadLetter
from choreo.dispatch import Dispatcher
from choreo.errors import TransportError
from choreo.events import Envelope, Message
from choreo.handlers import Handler
from choreo.middleware import Hooks
from choreo.store.base import Decision, Put, Store
from choreo.store.memory import MemoryStore
from choreo.store.redis import RedisStore
from choreo.system_events import SYSTEM_TOPIC
from choreo.transport.base import OutgoingRecord, Record, TopicPartition, Transport
from choreo.transport.memory import MemoryBroker, MemoryTransport
from choreo.urls import open_store, open_transport
from tests.topics import event_ids

# -- the service under test ------------------------------------------------------------


class Reserve(Event, topic="batches.in"):
    sku: str
    qty: int


class Release(Event, topic="batches.in"):
    sku: str
    qty: int


class Reserved(Event, topic="batches.out"):
    sku: str
    qty: int


class Released(Event, topic="batches.out"):
    sku: str
    qty: int


def build(ns: str, runs: Counter[tuple[str, str]]) -> Service:
    """Reserve/release stock; data keys live under ``ns`` so each run has its own."""
    app = Service("batches")

    @app.on_event(Reserve, step="stock")
    async def reserve(event: Reserve, ctx: Context) -> Reserved:
        runs["reserve", ctx.gid] += 1
        ctx.tx.incr(f"{ns}:{event.sku}", -event.qty, minimum=0)
        return Reserved(sku=event.sku, qty=event.qty)

    @app.on_event(Release, step="stock", op="compensate")
    async def release(event: Release, ctx: Context) -> Released:
        runs["release", ctx.gid] += 1
        ctx.tx.incr(f"{ns}:{event.sku}", event.qty)
        return Released(sku=event.sku, qty=event.qty)

    return app


def records(*deliveries: tuple[Event, str, str]) -> list[Record]:
    """Records of one partition, in offset order, from (event, gid, event id)."""
    out: list[Record] = []
    for offset, (event, gid, event_id) in enumerate(deliveries):
        envelope = Envelope(event_type=event.event_type, gid=gid, event_id=event_id)
        sent = codec.encode(Message(envelope, event, event.topic))
        out.append(Record(sent.topic, 0, offset, sent.key, sent.value, sent.headers))
    return out


def poison(offset: int) -> Record:
    return Record("batches.in", 0, offset, b"g-poison", b"{}", (("choreo-type", b""),))


# -- one run: a fresh store, a fresh broker ----------------------------------------------


Published = tuple[object, ...]


@dataclass
class Run:
    ns: str
    store: Store
    transport: MemoryTransport
    dispatcher: Dispatcher
    runs: Counter[tuple[str, str]] = field(default_factory=Counter)

    def key(self, sku: str) -> str:
        return f"{self.ns}:{sku}"

    async def value(self, sku: str) -> str | None:
        return await self.store.get(self.key(sku))

    def published(self, topic: str) -> list[Published]:
        """What a topic holds, partition by partition in offset order, without the
        fields that differ between runs (occurred-at, trace)."""
        found: list[Published] = []
        for record in self.transport.broker.records(topic):
            h = dict(record.headers)
            found.append(
                (record.partition, h[codec.H_TYPE].decode(), h[codec.H_ID].decode(),
                 h[codec.H_GID].decode(), h[codec.H_STEP].decode(), h[codec.H_OP].decode(),
                 h[codec.H_OUTCOME].decode(), h[codec.H_CAUSATION].decode(),
                 self.anonymous(record.value))
            )  # fmt: skip
        return found

    def anonymous(self, text: bytes) -> bytes:
        """Texts that name a data key (a guard's refusal), with this run's namespace out."""
        return text.replace(self.ns.encode(), b"<ns>")

    def dead(self) -> list[Published]:
        return [
            (r.partition, r.key, r.value,
             tuple((k, self.anonymous(v)) for k, v in r.headers if k != H_AT))
            for r in self.transport.broker.records(DLQ_TOPIC)
        ]  # fmt: skip

    def types(self, gid: str) -> list[tuple[str, str]]:
        """(type, event id) of what was published for ``gid``, outputs then system events."""
        return [
            (p[1], p[2])  # type: ignore[misc]
            for topic in (Reserved.topic, SYSTEM_TOPIC)
            for p in self.published(topic)
            if p[3] == gid
        ]

    async def barrier(self, gid: str) -> list[tuple[str, str, str]]:
        found = await self.store.records(gid)
        return sorted((r.key.step, r.key.op, r.status) for r in found)


@dataclass
class Runs:
    """Opens runs on one kind of store."""

    kind: str
    redis_url: str = ""
    opened: list[Store] = field(default_factory=list)

    async def open(self, seed: dict[str, str]) -> Run:
        ns = uuid.uuid4().hex
        store: Store
        if self.kind == "memory":
            store = MemoryStore()
        else:  # a key prefix of its own: the barrier starts empty although gids repeat
            store = RedisStore(self.redis_url, key_prefix=f"batches-{ns}")
        await store.start()
        self.opened.append(store)
        assert await store.apply([Put(f"{ns}:{sku}", value) for sku, value in seed.items()]) == ""
        runs: Counter[tuple[str, str]] = Counter()
        app = build(ns, runs)
        transport = MemoryTransport(MemoryBroker())
        dispatcher = Dispatcher(
            service=app.name, routes=app.routes(), registry=app.registry(), store=store,
            transport=transport, dlq_topic=DLQ_TOPIC, limits=codec.Limits(),
        )  # fmt: skip
        return Run(ns, store, transport, dispatcher, runs)

    async def compare(
        self, batch: Sequence[Record], seed: dict[str, str], gids: Sequence[str]
    ) -> Run:
        """Handle ``batch`` in one call and record by record; both must agree. Returns
        the batched run."""
        batched = await self.open(seed)
        await batched.dispatcher.handle_batch(batch)
        single = await self.open(seed)
        for record in batch:
            await single.dispatcher.handle(record)

        for sku in seed:
            assert await batched.value(sku) == await single.value(sku), sku
        assert batched.runs == single.runs
        for topic in (Reserved.topic, SYSTEM_TOPIC):
            assert batched.published(topic) == single.published(topic), topic
        assert batched.dead() == single.dead()
        for gid in gids:
            assert await batched.barrier(gid) == await single.barrier(gid), gid
        return batched

    async def close(self) -> None:
        for store in self.opened:
            await store.stop()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def runs(request: pytest.FixtureRequest) -> AsyncIterator[Runs]:
    kind: str = request.param
    made = Runs(kind, request.getfixturevalue("redis_url") if kind == "redis" else "")
    try:
        yield made
    finally:
        await made.close()


def gids(n: int) -> list[str]:
    return [f"g{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]


# -- handle_batch == handle, record by record --------------------------------------------


async def test_the_same_action_twice_in_a_batch_runs_once_and_republishes(runs: Runs) -> None:
    g1, g2 = gids(2)
    batch = records(
        (Reserve(sku="a", qty=1), g1, "e1"),
        (Reserve(sku="a", qty=1), g2, "e2"),
        (Reserve(sku="a", qty=1), g1, "e1"),  # a redelivery of the first record
    )
    run = await runs.compare(batch, {"a": "5"}, [g1, g2])

    assert await run.value("a") == "3"  # two gids, each applied once
    assert run.runs == {("reserve", g1): 1, ("reserve", g2): 1}
    first, second = run.types(g1)
    assert first == second  # the duplicate re-published the stored output, same id
    assert first[0] == "Reserved"
    assert [p[3] for p in run.published(Reserved.topic)].count(g1) == 2
    assert await run.barrier(g1) == [("batches/stock", "action", "done")]


async def test_action_then_its_compensation_in_a_batch(runs: Runs) -> None:
    (g1,) = gids(1)
    batch = records((Reserve(sku="a", qty=2), g1, "e1"), (Release(sku="a", qty=2), g1, "c1"))
    run = await runs.compare(batch, {"a": "5"}, [g1])

    assert await run.value("a") == "5"  # applied, then undone
    assert run.runs == {("reserve", g1): 1, ("release", g1): 1}
    assert [t for t, _ in run.types(g1)] == ["Reserved", "Released"]
    assert await run.barrier(g1) == [
        ("batches/stock", "action", "done"),
        ("batches/stock", "compensate", "done"),
    ]


async def test_compensation_then_its_action_in_a_batch(runs: Runs) -> None:
    (g1,) = gids(1)
    batch = records((Release(sku="a", qty=2), g1, "c1"), (Reserve(sku="a", qty=2), g1, "e1"))
    run = await runs.compare(batch, {"a": "5"}, [g1])

    assert await run.value("a") == "5"  # null compensation; the late action hangs
    assert run.runs == {}  # neither handler ran
    assert [t for t, _ in run.types(g1)] == [CompensationSkipped.event_type]
    assert await run.barrier(g1) == [("batches/stock", "compensate", "done")]


async def test_action_compensation_and_the_action_again_in_a_batch(runs: Runs) -> None:
    (g1,) = gids(1)
    batch = records(
        (Reserve(sku="a", qty=2), g1, "e1"),
        (Release(sku="a", qty=2), g1, "c1"),
        (Reserve(sku="a", qty=2), g1, "e1"),
    )
    run = await runs.compare(batch, {"a": "5"}, [g1])

    assert await run.value("a") == "5"
    assert run.runs == {("reserve", g1): 1, ("release", g1): 1}
    published = run.types(g1)
    assert [t for t, _ in published] == ["Reserved", "Released", "Reserved"]
    assert published[0] == published[2]  # the duplicate action re-published, same id


async def test_guard_refusal_inside_a_batch(runs: Runs) -> None:
    g1, g2, g3, g4 = gids(4)
    batch = records(
        (Reserve(sku="a", qty=1), g1, "e1"),  # a: 3 -> 2
        (Reserve(sku="a", qty=5), g2, "e2"),  # refused: 2 - 5 < 0
        (Reserve(sku="b", qty=1), g3, "e3"),  # b: 1 -> 0
        (Reserve(sku="a", qty=2), g4, "e4"),  # a: 2 -> 0
        (Release(sku="a", qty=1), g1, "c1"),  # a: 0 -> 1
        (Reserve(sku="b", qty=1), g3, "e3"),  # duplicate, although b is 0 now
    )
    run = await runs.compare(batch, {"a": "3", "b": "1"}, [g1, g2, g3, g4])

    assert (await run.value("a"), await run.value("b")) == ("1", "0")
    assert [t for t, _ in run.types(g1)] == ["Reserved", "Released"]  # per-gid order
    assert [t for t, _ in run.types(g2)] == [StepFailed.event_type]
    assert [t for t, _ in run.types(g3)] == ["Reserved", "Reserved"]
    assert [t for t, _ in run.types(g4)] == ["Reserved"]
    failed = [p for p in run.published(SYSTEM_TOPIC) if p[3] == g2]
    assert b"below its minimum 0" in failed[0][8]  # type: ignore[operator]
    assert await run.barrier(g2) == [("batches/stock", "action", "failed")]
    assert run.dead() == []


async def test_a_stored_value_that_is_no_integer_dead_letters_only_its_record(
    runs: Runs,
) -> None:
    g1, g2, g3 = gids(3)
    batch = [
        *records(
            (Reserve(sku="a", qty=1), g1, "e1"),
            (Reserve(sku="x", qty=1), g2, "e2"),  # x holds "abc"
            (Reserve(sku="a", qty=1), g3, "e3"),
            (Release(sku="a", qty=1), g1, "c1"),
        ),
        poison(4),
    ]
    run = await runs.compare(batch, {"a": "5", "x": "abc"}, [g1, g2, g3])

    # The others of the batch are applied and published...
    assert await run.value("a") == "4"
    assert [t for t, _ in run.types(g1)] == ["Reserved", "Released"]
    assert [t for t, _ in run.types(g3)] == ["Reserved"]
    # ...and the record whose effect cannot apply is dead-lettered with the reason,
    # nothing of it written (a redelivery after a fix runs it afresh).
    assert run.types(g2) == []
    assert await run.value("x") == "abc"
    assert await run.barrier(g2) == []
    letters = run.transport.broker.records(DLQ_TOPIC)
    assert len(letters) == 2  # the invalid record and the poison one
    invalid = next(r for r in letters if r.key == g2.encode())
    reason = dict(invalid.headers)[H_REASON].decode()
    assert "abc" in reason, reason
    assert reason.startswith("the store refused the effects"), reason
    assert dict(invalid.headers)[H_KIND] == b"failed"
    assert invalid.value == batch[1].value  # the original bytes, untouched


@pytest.mark.redis
async def test_a_stored_value_of_another_redis_type_dead_letters_only_its_record(
    redis_url: str,
) -> None:
    runs = Runs("redis", redis_url)
    try:
        run = await runs.open({"a": "5"})
        await run.store.client.rpush(run.key("x"), "abc")  # type: ignore[attr-defined]
        g1, g2, g3 = gids(3)
        batch = records(
            (Reserve(sku="a", qty=1), g1, "e1"),
            (Reserve(sku="x", qty=1), g2, "e2"),
            (Reserve(sku="a", qty=1), g3, "e3"),
        )
        await run.dispatcher.handle_batch(batch)

        assert await run.value("a") == "3"
        assert [t for t, _ in run.types(g1)] == ["Reserved"]
        assert [t for t, _ in run.types(g3)] == ["Reserved"]
        assert await run.barrier(g2) == []
        (letter,) = run.transport.broker.records(DLQ_TOPIC)
        assert letter.key == g2.encode()
    finally:
        await runs.close()


# -- whole services: hooks that raise, a blocked partition --------------------------------


class Ping(Event, topic="batches.hooks"):
    n: int


class Pong(Event, topic="batches.hooks.out"):
    n: int


class Job(Event, topic="batches.slow"):
    n: int


class JobDone(Event, topic="batches.slow.out"):
    n: int


@dataclass
class Env:
    transport: Transport
    store: Store
    broker: str


@pytest.fixture
async def env(backend: tuple[str, str]) -> AsyncIterator[Env]:
    """A transport and a store of the ``backend`` fixture's kind, opened by the test, so
    it can publish and read committed offsets while the service runs on the same ones."""
    broker, store_url = backend
    transport = open_transport(broker, partitions=4)
    store = open_store(store_url)
    async with transport, store:
        yield Env(transport, store, broker)


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def committed_up_to_end(
    transport: Transport, group: str, tps: Sequence[TopicPartition]
) -> bool:
    try:
        ends = await transport.end_offsets(tps)
        done = await transport.group_offsets(group)
    except TransportError:  # a fresh broker's group coordinator is not there yet
        return False
    return all(done.get(tp, 0) >= end for tp, end in ends.items())


async def send(transport: Transport, event: Event, gid: str) -> TopicPartition:
    return (await send_at(transport, event, gid))[0]


async def send_at(transport: Transport, event: Event, gid: str) -> tuple[TopicPartition, int]:
    envelope = Envelope.first(event, gid=gid, source="test")
    delivered = await transport.send(codec.encode(Message(envelope, event, event.topic)))
    return TopicPartition(delivered.topic, delivered.partition), delivered.offset


class Broken(Middleware):
    """Every hook raises (after counting the call)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def before_handle(self, message: Message, handler: Handler) -> None:
        self.calls["before_handle"] += 1
        raise RuntimeError("before_handle is broken")

    async def after_handle(self, message: Message, handler: Handler, decision: Decision) -> None:
        self.calls["after_handle"] += 1
        raise RuntimeError("after_handle is broken")

    async def on_dead_letter(self, record: Record, letter: DeadLetter) -> None:
        self.calls["on_dead_letter"] += 1
        raise RuntimeError("on_dead_letter is broken")

    async def after_commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.calls["after_commit"] += 1
        raise RuntimeError("after_commit is broken")


class Recorder(Middleware):
    """A working middleware beside the broken one: its hooks still run."""

    def __init__(self) -> None:
        self.handled: list[int] = []
        self.dead = 0
        self.commits = 0

    async def after_handle(self, message: Message, handler: Handler, decision: Decision) -> None:
        assert isinstance(message.event, Ping)
        self.handled.append(message.event.n)

    async def on_dead_letter(self, record: Record, letter: DeadLetter) -> None:
        self.dead += 1

    async def after_commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits += 1


async def test_middleware_hooks_that_raise_do_not_stop_the_worker(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="choreo.middleware")
    broken, recorder = Broken(), Recorder()
    group = f"hooks-{uuid.uuid4().hex[:8]}"
    counter = f"hooks:{group}"
    ran: list[int] = []
    # The working middleware first: "after" hooks run in reverse, so the broken one's
    # after-hooks run (and raise) before the recorder's.
    app = Service("hooks", group=group, middleware=[recorder, broken])

    @app.on_event(Ping, step="pong")
    async def pong(event: Ping, ctx: Context) -> Pong:
        ran.append(event.n)
        ctx.tx.incr(counter, 1)
        return Pong(n=event.n)

    await env.transport.ensure_topics([Ping.topic, Pong.topic, DLQ_TOPIC], 4)
    tps = await env.transport.topic_partitions([Ping.topic])
    first = list(range(8))
    for n in first:
        await send(env.transport, Ping(n=n), f"hooks-{group}-{n}")
    # A poison record, so on_dead_letter runs (and raises) too.
    await env.transport.send(OutgoingRecord(Ping.topic, b"hooks-poison", b"not json", ()))

    async with app.running(broker=env.transport, store=env.store):
        await wait_for(lambda: committed_up_to_end(env.transport, group, tps), "the first round")
        assert sorted(ran) == first
        # The worker is still consuming: a second round is handled as well.
        second = list(range(8, 12))
        for n in second:
            await send(env.transport, Ping(n=n), f"hooks-{group}-{n}")

        async def second_round_done() -> bool:
            return len(ran) == 12 and await committed_up_to_end(env.transport, group, tps)

        await wait_for(second_round_done, "the second round")

    assert sorted(ran) == first + second  # every event handled, each once
    assert await env.store.get_int(counter) == 12
    assert sorted(recorder.handled) == first + second
    assert recorder.dead == 1
    assert recorder.commits >= 1
    # Every hook of the broken middleware was called, and raised each time.
    assert broken.calls["before_handle"] == 12
    assert broken.calls["after_handle"] == 12
    assert broken.calls["on_dead_letter"] == 1
    assert broken.calls["after_commit"] >= 1
    failed_hooks = {
        r.getMessage().split()[1] for r in caplog.records if r.name == "choreo.middleware"
    }
    assert failed_hooks == {
        "Broken.before_handle",
        "Broken.after_handle",
        "Broken.on_dead_letter",
        "Broken.after_commit",
    }


async def test_hooks_call_only_the_middleware_that_override_them() -> None:
    """A hook skips the middleware that keep the base's no-op (a subclass's override
    counts), and the per-record flags say whether any middleware wants those hooks."""

    class Inherits(Recorder):
        pass  # Recorder's after_handle, on_dead_letter and after_commit

    class BatchesOnly(Middleware):
        def __init__(self) -> None:
            self.batches = 0

        async def after_batch(self, tp: TopicPartition, records: int, seconds: float) -> None:
            self.batches += 1

    batches_only = BatchesOnly()
    assert not Hooks([batches_only]).before_each
    assert not Hooks([batches_only]).after_each
    hooks = Hooks([batches_only, Inherits()])
    assert not hooks.before_each
    assert hooks.after_each
    assert Hooks([Broken()]).before_each
    await hooks.after_batch(TopicPartition("t", 0), 3, 0.1)
    assert batches_only.batches == 1
    assert not Hooks([])
    assert hooks


async def test_a_blocked_handler_holds_back_only_its_own_partition(env: Env) -> None:
    group = f"slow-{uuid.uuid4().hex[:8]}"
    asleep, wake = asyncio.Event(), asyncio.Event()
    done: list[str] = []
    app = Service("slow", group=group)
    sleeper = f"sleeper-{group}"

    @app.on_event(Job, step="job")
    async def job(event: Job, ctx: Context) -> JobDone:
        if ctx.gid == sleeper:
            asleep.set()
            await wake.wait()  # "sleeps" until the test has seen the others pass it
        done.append(ctx.gid)
        return JobDone(n=event.n)

    await env.transport.ensure_topics([Job.topic, JobDone.topic, DLQ_TOPIC], 4)
    tps = await env.transport.topic_partitions([Job.topic])
    assert len(tps) == 4
    slow_tp, slow_offset = await send_at(env.transport, Job(n=0), sleeper)
    where: dict[str, TopicPartition] = {}
    count = 0
    # Records on every partition: behind the sleeper on its own, and on the three others.
    while len(where) < 12 or len(set(where.values())) < 4:
        count += 1
        gid = f"job-{group}-{count}"
        where[gid] = await send(env.transport, Job(n=count), gid)
    behind = {gid for gid, tp in where.items() if tp == slow_tp}
    others = set(where) - behind
    other_tps = [tp for tp in tps if tp != slow_tp]

    async with app.running(broker=env.transport, store=env.store):
        try:
            await wait_for(lambda: _is_set(asleep), "the sleeping handler to start")

            async def others_done() -> bool:
                return others <= set(done) and await committed_up_to_end(
                    env.transport, group, other_tps
                )

            await wait_for(others_done, "the other partitions while one handler sleeps")
            # Records published while the sleeper still sleeps are handled too.
            later: dict[str, TopicPartition] = {}
            while len(later) < 6 or not any(tp != slow_tp for tp in later.values()):
                count += 1
                gid = f"job-{group}-{count}"
                later[gid] = await send(env.transport, Job(n=count), gid)
            behind |= {gid for gid, tp in later.items() if tp == slow_tp}
            others |= {gid for gid, tp in later.items() if tp != slow_tp}
            await wait_for(others_done, "records published while the handler sleeps")

            # The sleeper is still asleep: nothing behind it ran, its offset is not committed.
            assert not wake.is_set()
            assert sleeper not in done
            assert not behind & set(done)
            committed = await env.transport.group_offsets(group)
            assert committed.get(slow_tp, 0) <= slow_offset
        finally:
            wake.set()

        async def all_done() -> bool:
            return len(done) == 1 + len(where) + len(later) and await committed_up_to_end(
                env.transport, group, tps
            )

        await wait_for(all_done, "the blocked partition after the handler woke up")

    assert sorted(done) == sorted({sleeper} | behind | others)
    assert len(done) == len(set(done))  # each once
    # Its partition kept its order: the sleeper first, then what was behind it.
    on_slow = [gid for gid in done if gid == sleeper or gid in behind]
    assert on_slow[0] == sleeper


async def _is_set(event: asyncio.Event) -> bool:
    return event.is_set()


def hop_events(tag: str) -> tuple[Any, Any]:
    """An event and its outcome on topics of their own (a group new to a topic on a
    shared broker would also read what earlier tests left there)."""

    class Hop(Event, type="batches.Hop", topic=f"batches.hop.{tag}"):
        n: int

    class HopDone(Event, type="batches.HopDone", topic=f"batches.hop.{tag}.out"):
        n: int

    return Hop, HopDone  # Any: mypy cannot name classes made per call


async def test_a_failed_send_while_the_next_batch_is_sent_loses_nothing(env: Env) -> None:
    """The worker sends a batch's outputs and prepares the next batch while they are
    acknowledged. The first batch's send fails after the second batch's went out: both
    are handled again (re-published from their outboxes), each effect applied once, and
    the offsets committed only after that."""
    group = f"hop-{uuid.uuid4().hex[:8]}"
    counter = f"hops:{group}"
    Hop, HopDone = hop_events(group)
    app = Service("hop", group=group, batch_size=2)

    @app.on_event(Hop, step="hop")
    async def hop(event: Event, ctx: Context) -> Any:
        if cast(Any, event).n == 0:
            await asyncio.sleep(0.2)  # the next records are fetched meanwhile
        ctx.tx.incr(counter, 1)
        return HopDone(n=cast(Any, event).n)

    # One partition, so every batch is the same lane's.
    await env.transport.ensure_topics([Hop.topic, HopDone.topic, DLQ_TOPIC], 1)
    tps = await env.transport.topic_partitions([Hop.topic])
    gids = [f"hop-{group}-{n}" for n in range(10)]
    for n, gid in enumerate(gids):
        await send(env.transport, Hop(n=n), gid)

    real_send = env.transport.send_many
    calls: list[list[str]] = []  # the gids of every send of outputs, in call order
    later_sent = asyncio.Event()
    overlapped: list[bool] = []

    async def send_many(records: Sequence[OutgoingRecord]) -> list[Any]:
        outputs = [r for r in records if r.topic == HopDone.topic]
        if not outputs:
            return await real_send(records)
        calls.append([r.key.decode() for r in outputs if r.key is not None])
        if len(calls) == 1:
            # The first batch's send: wait for the next batch's to go out, then fail.
            try:
                await asyncio.wait_for(later_sent.wait(), 5)
                overlapped.append(True)
            except TimeoutError:
                overlapped.append(False)
            raise TransportError("the broker went away (test)")
        delivered = await real_send(records)
        later_sent.set()
        return delivered

    env.transport.send_many = send_many  # type: ignore[method-assign]
    try:
        async with app.running(broker=env.transport, store=env.store):

            async def all_committed() -> bool:
                return await committed_up_to_end(env.transport, group, tps)

            await wait_for(all_committed, "every hop committed after the failed send")
    finally:
        env.transport.send_many = real_send  # type: ignore[method-assign]

    assert overlapped == [True], "the next batch was not sent while the first was pending"
    first, second = calls[0], calls[1]
    assert first == gids[:2]
    assert second == gids[2:4]
    assert await env.store.get_int(counter) == len(gids)  # each effect once
    found = await event_ids(env.transport, HopDone.topic)
    assert sorted(found) == sorted(gids)  # nothing lost
    assert all(len(set(ids)) == 1 for ids in found.values())  # re-sent with the same id
    assert all(len(found[gid]) >= 2 for gid in second)  # sent, then again in the redo


async def test_a_batch_with_a_saga_in_flight_is_sent_after_it(env: Env) -> None:
    """Batches are sent while earlier ones are acknowledged only when no saga has records
    in both: a record of a saga never goes out before that saga's earlier ones landed."""
    group = f"hop-{uuid.uuid4().hex[:8]}"
    Hop, HopDone = hop_events(group)
    app = Service("hop", group=group, batch_size=2)

    @app.on_event(Hop, step="hop")
    async def hop(event: Event) -> Any:
        if cast(Any, event).n == 0:
            await asyncio.sleep(0.2)  # the next records are fetched meanwhile
        return HopDone(n=cast(Any, event).n)

    await env.transport.ensure_topics([Hop.topic, HopDone.topic, DLQ_TOPIC], 1)
    tps = await env.transport.topic_partitions([Hop.topic])
    # Batches of two: (a, b) then (a again, c): the second shares saga a with the first.
    order = [f"hop-{group}-{name}" for name in ("a", "b", "a", "c", "d", "e")]
    for n, gid in enumerate(order):
        await send(env.transport, Hop(n=n), gid)

    real_send = env.transport.send_many
    sending: list[str] = []  # "start:<gids>" and "end:<gids>" in the order they happened

    async def send_many(records: Sequence[OutgoingRecord]) -> list[Any]:
        outputs = ",".join(r.key.decode() for r in records if r.key and r.topic == HopDone.topic)
        if not outputs:
            return await real_send(records)
        sending.append(f"start:{outputs}")
        await asyncio.sleep(0.3)  # slow acknowledgements: a later batch would overtake
        delivered = await real_send(records)
        sending.append(f"end:{outputs}")
        return delivered

    env.transport.send_many = send_many  # type: ignore[method-assign]
    try:
        async with app.running(broker=env.transport, store=env.store):
            await wait_for(
                lambda: committed_up_to_end(env.transport, group, tps), "every hop committed"
            )
    finally:
        env.transport.send_many = real_send  # type: ignore[method-assign]

    a, b, c, d, e = (f"hop-{group}-{name}" for name in "abcde")
    # (a, c) shares a with (a, b): it starts only after (a, b) ended. (d, e) shares
    # nothing with (a, c): it is sent while (a, c) is still acknowledged.
    assert sending == [
        f"start:{a},{b}",
        f"end:{a},{b}",
        f"start:{a},{c}",
        f"start:{d},{e}",
        f"end:{a},{c}",
        f"end:{d},{e}",
    ]
