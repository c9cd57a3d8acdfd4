"""``Harness(..., clock=VirtualClock())``: deadlines and retry backoffs far longer than
any test's patience are reached by ``h.advance``, with the code under test unchanged.
The waits below are a few seconds of real time; only the virtual jump can meet an
hour's deadline or a 10-minute backoff within them."""

from __future__ import annotations

import uuid

import pytest

from choreo import ConfigurationError, Context, Event, RetryPolicy, SagaStatus, Service
from choreo.testing import Harness, MemoryTracker, VirtualClock
from tests.scenarios.trip import Plan, TripBooked, build_travel

HOUR = 3600.0


async def test_a_deadline_of_an_hour_fires_when_the_clock_is_advanced() -> None:
    travel = build_travel(f"v{uuid.uuid4().hex[:8]}", deadline=HOUR)
    clock = VirtualClock()
    tracker = MemoryTracker([travel.contract])
    async with Harness(*travel.services, tracker, clock=clock) as h:
        gid = await h.publish(TripBooked(trip_id="t1", plan=Plan(silent="hotel")))
        await h.wait_for(gid, SagaStatus.RUNNING)
        await h.drain()
        with pytest.raises(TimeoutError):
            await h.wait(gid, timeout=1.0)  # the hotel never answers; an hour is far off
        await h.advance(HOUR + 1)
        state = await h.wait(gid, timeout=10.0)
    assert state.status is SagaStatus.COMPENSATED
    assert clock.offset == HOUR + 1


async def test_retry_backoff_of_ten_minutes_is_skipped() -> None:
    tag = uuid.uuid4().hex[:8]

    class Ping(Event, type=f"vclock.{tag}.Ping", topic=f"vclock.{tag}"):
        n: int

    calls: list[int] = []
    app = Service(f"flaky{tag}")

    @app.on_event(Ping, retry=RetryPolicy(max_attempts=3, backoff=600, backoff_max=600))
    async def flaky(event: Ping, ctx: Context) -> None:
        calls.append(event.n)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        ctx.tx.incr(f"vclock:{tag}", 1)

    async with Harness(app, clock=VirtualClock()) as h:
        await h.publish(Ping(n=1))
        for _ in range(50):
            if await h.store.get_int(f"vclock:{tag}") == 1:
                break
            await h.advance(601)
        assert await h.store.get_int(f"vclock:{tag}") == 1
        assert calls == [1, 1, 1]
        assert h.dead_letters() == []


async def test_advance_needs_a_virtual_clock() -> None:
    travel = build_travel(f"v{uuid.uuid4().hex[:8]}")
    async with Harness(*travel.services) as h:
        with pytest.raises(ConfigurationError, match="VirtualClock"):
            await h.advance(1)
