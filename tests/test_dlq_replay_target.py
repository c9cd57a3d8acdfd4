"""A replayed dead letter reaches only the service that gave up on it: the other groups
on the topic handled the original and skip the replay (before, each of them ran it
again: a duplicate to its barrier, its outputs re-published)."""

from __future__ import annotations

import uuid

from choreo import Context, Event, Service
from choreo.deadletter import H_REPLAY_FOR, H_SERVICE, original_record
from choreo.testing import Harness


async def test_a_replay_reaches_only_the_service_that_failed(backend: tuple[str, str]) -> None:
    tag = uuid.uuid4().hex[:8]

    class Shipped(Event, type=f"replay.{tag}.Shipped", topic=f"replay.{tag}"):
        n: int

    class Billed(Event, type=f"replay.{tag}.Billed", topic=f"replay.{tag}.out"):
        n: int

    class Noted(Event, type=f"replay.{tag}.Noted", topic=f"replay.{tag}.out"):
        n: int

    broken = {"billing": True}
    runs = {"billing": 0, "audit": 0}
    billing, audit = Service(f"billing{tag}"), Service(f"audit{tag}")
    billing.register_events(Noted)
    audit.register_events(Billed)

    @billing.on_event(Shipped)
    async def bill(event: Shipped, ctx: Context) -> Billed:
        runs["billing"] += 1
        if broken["billing"]:
            raise ValueError("no price list")  # not retriable: dead-lettered at once
        return Billed(n=event.n)

    @audit.on_event(Shipped)
    async def note(event: Shipped, ctx: Context) -> Noted:
        runs["audit"] += 1
        return Noted(n=event.n)

    broker, store = backend
    async with Harness(billing, audit, broker=broker, store=store) as h:
        gid = await h.publish(Shipped(n=1))
        await h.drain(timeout=60)
        [dead] = h.dead_letters(gid)
        assert dead.header(H_SERVICE) == billing.name.encode()
        assert runs == {"billing": 1, "audit": 1}
        broken["billing"] = False
        replay = original_record(dead)
        assert dict(replay.headers)[H_REPLAY_FOR] == billing.name.encode()
        await h.transport.send(replay)
        await h.drain(timeout=60)
        assert runs == {"billing": 2, "audit": 1}  # audit skipped the replay
        assert [m.envelope.event_type for m in h.published(Billed)] == [Billed.event_type]
        assert len(h.published(Noted)) == 1  # audit's output was not re-published
