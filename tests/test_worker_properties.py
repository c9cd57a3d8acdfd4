"""Hypothesis drives a whole service (the real worker, dispatcher and barrier on the memory
transport and store) through one partition's records in batches of any size, with sends
that fail part-way at any point. The worker sends a batch's outputs while it prepares the
next batch, and handles every unacknowledged batch again after a failed send; whatever
the batch size and the failures, the outcome must be the one of records handled one at a
time without failures: the same effects, the same barrier records, the same published
events (re-publications repeat an event id, never add one), and each saga's events first
published in the same order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from choreo import Context, Event, Service, codec
from choreo.errors import TransportError
from choreo.events import Envelope, Message
from choreo.store.memory import MemoryStore
from choreo.transport.base import OutgoingRecord, TopicPartition
from choreo.transport.memory import MemoryBroker, MemoryTransport


class Take(Event, topic="wprop.in"):
    qty: int


class Give(Event, topic="wprop.in"):
    qty: int


class Taken(Event, topic="wprop.out"):
    qty: int


class Given(Event, topic="wprop.out"):
    qty: int


GIDS = ("g0", "g1", "g2")


def build(batch_size: int) -> Service:
    app = Service("wprop", group="wprop", batch_size=batch_size)

    @app.on_event(Take, step="stock")
    async def take(event: Take, ctx: Context) -> Taken:
        ctx.tx.incr(f"stock:{ctx.gid}", -event.qty)
        return Taken(qty=event.qty)

    @app.on_event(Give, step="stock", op="compensate")
    async def give(event: Give, ctx: Context) -> Given:
        ctx.tx.incr(f"stock:{ctx.gid}", event.qty)
        return Given(qty=event.qty)

    return app


def incoming(plan: Sequence[tuple[int, str]]) -> list[OutgoingRecord]:
    """A record per (gid index, kind): an action, its compensation, or a redelivery of
    the gid's action (the same event id)."""
    out = []
    for gid_index, kind in plan:
        gid = GIDS[gid_index]
        event: Event = Give(qty=1) if kind == "compensate" else Take(qty=1)
        event_id = f"{gid}-{'give' if kind == 'compensate' else 'take'}"
        envelope = Envelope(event_type=event.event_type, gid=gid, event_id=event_id)
        out.append(codec.encode(Message(envelope, event, event.topic)))
    return out


@dataclass
class Outcome:
    stock: dict[str, int]
    barrier: list[tuple[str, str, str, str]]
    ids: dict[str, list[str]]  # event ids published, per gid, in the order published


async def run(
    plan: Sequence[tuple[int, str]], batch_size: int, failures: dict[int, int]
) -> Outcome:
    """The plan through a service; ``failures`` maps the n-th send of outputs to how many
    of its records go out before it fails."""
    transport = MemoryTransport(MemoryBroker(1))
    store = MemoryStore()
    await transport.ensure_topics([Take.topic, Taken.topic], 1)
    await transport.send_many(incoming(plan))
    real_send = transport.send_many
    calls = 0

    async def send_many(records: Sequence[OutgoingRecord]) -> list[Any]:
        nonlocal calls
        if not any(r.topic == Taken.topic for r in records):
            return await real_send(records)
        calls += 1
        if calls in failures:
            await real_send(list(records)[: failures[calls]])
            raise TransportError("the broker went away (test)")
        return await real_send(records)

    transport.send_many = send_many  # type: ignore[method-assign]
    app = build(batch_size)
    tp = TopicPartition(Take.topic, 0)
    async with app.running(broker=transport, store=store):
        for _ in range(2000):
            if (await transport.group_offsets("wprop")).get(tp, 0) >= len(plan):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the plan was not committed")
    ids: dict[str, list[str]] = {}
    consumer = transport.consumer("reader", [Taken.topic])
    await consumer.start()
    for records in (await consumer.getmany(timeout=0.1, max_records=10_000)).values():
        for record in records:
            envelope = codec.decode_envelope(record)
            ids.setdefault(envelope.gid, []).append(envelope.event_id)
    await consumer.stop()
    barrier: list[tuple[str, str, str, str]] = []
    for gid in GIDS:
        barrier += [(gid, r.key.step, r.key.op, r.status) for r in await store.records(gid)]
    barrier.sort()
    stock = {gid: await store.get_int(f"stock:{gid}") for gid in GIDS}
    return Outcome(stock, barrier, ids)


def first_seen(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


plans = st.lists(
    st.tuples(st.integers(0, len(GIDS) - 1), st.sampled_from(["action", "compensate", "again"])),
    min_size=1,
    max_size=12,
)


@settings(max_examples=80, deadline=None)
@example(  # a saga in two batches, the first batch's send failing with nothing sent
    plan=[(0, "action"), (1, "action"), (0, "compensate"), (2, "action")],
    batch_size=2,
    failures={1: 0},
)
@given(
    plan=plans,
    batch_size=st.integers(1, 4),
    failures=st.dictionaries(st.integers(1, 6), st.integers(0, 3), max_size=3),
)
def test_pipelined_batches_with_failed_sends_equal_one_at_a_time(
    plan: list[tuple[int, str]], batch_size: int, failures: dict[int, int]
) -> None:
    expected = asyncio.run(run(plan, 1, {}))
    got = asyncio.run(run(plan, batch_size, failures))
    assert got.stock == expected.stock
    assert got.barrier == expected.barrier
    assert {gid: set(ids) for gid, ids in got.ids.items()} == {
        gid: set(ids) for gid, ids in expected.ids.items()
    }
    # Each saga's events first appear in the order one-at-a-time delivery publishes them.
    for gid, ids in expected.ids.items():
        assert first_seen(got.ids[gid]) == first_seen(ids), gid
