"""The tracker's scenario suite: three services and the memory tracker, on the in-memory
transport and store and on real Kafka + Redis, with the same assertions."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from choreo import AdminCommand, CompensationSkipped, SagaCompleted, SagaStuck, codec
from choreo.deadletter import H_SERVICE
from choreo.saga import SagaState, SagaStatus, StepStatus
from choreo.testing import Harness
from choreo.tracker.memory import MemoryTracker
from tests.scenarios.trip import STEPS, TOPIC, Plan, Travel, TripBooked, build_travel

pytestmark = pytest.mark.timeout(120)


@dataclass
class Trip:
    h: Harness
    tracker: MemoryTracker
    travel: Travel

    async def start(self, **plan: str | float) -> tuple[str, str]:
        trip_id = uuid.uuid4().hex
        gid = await self.h.publish(TripBooked(trip_id=trip_id, plan=Plan.model_validate(plan)))
        return gid, trip_id

    async def settled(self, gid: str, timeout: float = 30.0) -> SagaState:
        """Wait for a terminal state (deadlines fire on their own time, so drain alone
        may return too early), then for every group to go idle."""
        limit = time.monotonic() + timeout
        while (state := self.tracker.get(gid)) is None or not state.is_terminal:
            status = state.status if state else "unknown"
            assert time.monotonic() < limit, f"saga {gid} still {status} after {timeout}s"
            await asyncio.sleep(0.05)
        await self.h.drain(timeout=30)
        final = self.tracker.get(gid)
        assert final is not None
        return final

    async def counters(self, prefix: str, trip_id: str) -> dict[str, int]:
        store = self.h.store
        return {step: await store.get_int(prefix.format(trip=trip_id, step=step)) for step in STEPS}

    async def held(self, trip_id: str) -> dict[str, int]:
        return await self.counters("{step}:{trip}", trip_id)

    async def cancelled(self, trip_id: str) -> dict[str, int]:
        return await self.counters("cancelled:{trip}:{step}", trip_id)

    def issued(self, gid: str) -> list[str]:
        """Steps in the order the tracker issued their compensations; a re-issue after the
        retry backoff (a slow confirmation, legitimately) is folded into the first."""
        state = self.tracker.get(gid)
        assert state is not None
        entries = [e for e in state.timeline if e.note.startswith(f"compensation of {e.step} iss")]
        return [step for step, _ in itertools.groupby(e.step for e in entries)]


async def until(
    condition: Callable[[], bool], h: Harness | None = None, timeout: float = 30.0
) -> None:
    limit = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < limit, f"not true after {timeout}s"
        if h is not None:
            await h.drain(timeout=timeout)  # the harness only sees records it collected
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def trip_harness(backend: tuple[str, str], **options: float) -> AsyncIterator[Trip]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    travel = build_travel(prefix, **options)  # type: ignore[arg-type]
    tracker = MemoryTracker([travel.contract], group=f"{prefix}.tracker")
    broker, store = backend
    async with Harness(*travel.services, tracker, broker=broker, store=store) as h:
        # New groups on a shared Kafka replay earlier tests' records first; let them, so
        # this test's timing is its own.
        await h.drain(timeout=60)
        yield Trip(h, tracker, travel)


@pytest.fixture
async def trip(backend: tuple[str, str]) -> AsyncIterator[Trip]:
    async with trip_harness(backend, retry_backoff=0.2, retry_backoff_max=0.4) as env:
        yield env


async def test_happy_path_completes(trip: Trip) -> None:
    gid, trip_id = await trip.start()
    state = await trip.settled(gid)
    assert state.status == SagaStatus.COMPLETED
    assert {name: s.status for name, s in state.steps.items()} == dict.fromkeys(
        STEPS, StepStatus.DONE
    )
    assert [m.event for m in trip.h.history(gid) if isinstance(m.event, SagaCompleted)] == [
        SagaCompleted(saga="trip")
    ]
    assert await trip.held(trip_id) == dict.fromkeys(STEPS, -1)
    assert trip.tracker.metrics.compensations_issued == 0


async def test_business_failure_compensates_earlier_steps(trip: Trip) -> None:
    gid, trip_id = await trip.start(fail="hotel")
    state = await trip.settled(gid)
    assert state.status == SagaStatus.COMPENSATED
    assert state.reason == "step hotel failed: no rooms"
    assert state.steps["flight"].status == StepStatus.COMPENSATED
    assert state.steps["hotel"].status == StepStatus.FAILED
    assert "car" not in state.steps
    assert trip.issued(gid) == ["flight"]
    assert "choreo.SagaCompensated" in trip.h.types(gid)
    assert await trip.held(trip_id) == dict.fromkeys(STEPS, 0)
    assert await trip.cancelled(trip_id) == {"flight": 1, "hotel": 0, "car": 0}


@pytest.mark.parametrize("mode", ["lost", "silent"])
async def test_unanswered_step_times_out_and_compensates_in_reverse(
    backend: tuple[str, str], mode: str
) -> None:
    # Compensations are re-issued only after seconds here: on a loaded machine a
    # confirmation can take longer than the shared fixture's 0.2 s, and a legitimate
    # re-issue would then change the exact history this test checks.
    async with trip_harness(backend, retry_backoff=3.0, retry_backoff_max=6.0) as trip:
        await _times_out_and_compensates_in_reverse(trip, mode)


async def _times_out_and_compensates_in_reverse(trip: Trip, mode: str) -> None:
    gid, trip_id = await trip.start(**{mode: "car"})
    state = await trip.settled(gid)
    assert state.status == SagaStatus.COMPENSATED
    assert state.reason == "step car timed out"
    assert state.steps["car"].outcome_note == "timed out"
    assert trip.issued(gid) == ["car", "hotel", "flight"]
    travel = [t for t in trip.h.types(gid) if not t.startswith("choreo.")]
    assert travel == ["TripBooked", "FlightBooked", "HotelBooked", "CancelCar", *(
        ["CarCancelled"] if mode == "silent" else []
    ), "CancelHotel", "HotelCancelled", "CancelFlight", "FlightCancelled"]  # fmt: skip
    skipped = [m.event for m in trip.h.published(CompensationSkipped) if m.gid == gid]
    if mode == "lost":  # the trigger never ran: a null compensation
        assert skipped == [
            CompensationSkipped(step="car", reason="null compensation: the action never ran")
        ]
        assert await trip.cancelled(trip_id) == {"flight": 1, "hotel": 1, "car": 0}
    else:  # the action ran and said nothing: its compensation runs, with nothing to undo
        assert skipped == []
        assert await trip.cancelled(trip_id) == dict.fromkeys(STEPS, 1)
    assert await trip.held(trip_id) == dict.fromkeys(STEPS, 0)
    delay = trip.tracker.metrics.deadline_to_compensation
    assert delay.count >= 1  # how long it took is measured in benchmarks, never asserted
    assert delay.max >= 0
    # On a shared Kafka a new tracker group also replays earlier tests' sagas.
    if trip.h.broker_url.startswith("memory"):
        assert trip.tracker.metrics.stalls_detected == delay.count == 1


async def test_compensation_that_keeps_failing_ends_stuck(trip: Trip) -> None:
    gid, trip_id = await trip.start(lost="car", stuck="hotel")
    state = await trip.settled(gid)
    assert state.status == SagaStatus.STUCK
    assert state.reason == "compensation of hotel unconfirmed after 3 attempts"
    assert state.steps["hotel"].status == StepStatus.COMPENSATING
    assert state.steps["flight"].status == StepStatus.DONE  # waits for hotel
    await asyncio.sleep(1.0)  # nothing more fires for a terminal saga
    await trip.h.drain()
    assert [m.event for m in trip.h.history(gid) if isinstance(m.event, SagaStuck)] == [
        SagaStuck(saga="trip", step="hotel", attempts=3, reason=state.reason)
    ]
    assert trip.h.types(gid).count("CancelHotel") == 3
    services = [dict(d.headers)[H_SERVICE] for d in trip.h.dead_letters(gid)]
    assert sorted(services) == [b"hotel"] * 3 + [b"rental"]
    assert await trip.held(trip_id) == {"flight": -1, "hotel": -1, "car": 0}


async def test_late_success_after_timeout_is_compensated_not_applied(
    backend: tuple[str, str],
) -> None:
    # A backoff longer than the lateness, so the first CancelCar is still in its budget.
    async with trip_harness(backend, retry_backoff=1.0, retry_backoff_max=2.0) as trip:
        gid, trip_id = await trip.start(late="car", late_by=1.5)
        state = await trip.settled(gid)
        assert state.status == SagaStatus.COMPENSATED
        assert state.steps["car"].status == StepStatus.COMPENSATED
        [seen] = [e for e in state.timeline if e.event_type == "CarBooked"]
        assert seen.note.startswith("late success of car after its compensation was issued")
        assert not any(e.note == "car done" for e in state.timeline)
        assert trip.issued(gid) == ["car", "hotel", "flight"]
        assert await trip.held(trip_id) == dict.fromkeys(STEPS, 0)
        assert await trip.cancelled(trip_id) == dict.fromkeys(STEPS, 1)


async def test_duplicate_events_are_harmless(trip: Trip) -> None:
    gid, trip_id = await trip.start(lost="car")
    await trip.settled(gid)
    before = trip.tracker.get(gid)
    for message in list(trip.h.history(gid)):
        await trip.h.transport.send(codec.encode(message))
    await trip.h.drain(timeout=30)
    after = trip.tracker.get(gid)
    assert after == before
    assert await trip.held(trip_id) == dict.fromkeys(STEPS, 0)
    assert await trip.cancelled(trip_id) == {"flight": 1, "hotel": 1, "car": 0}
    assert trip.h.types(gid).count("choreo.SagaCompensated") == 2  # the copy we sent


async def test_admin_compensate_a_running_saga(backend: tuple[str, str]) -> None:
    async with trip_harness(backend, deadline=60.0) as trip:
        gid, trip_id = await trip.start(silent="car")
        await until(lambda: "car" in getattr(trip.tracker.get(gid), "steps", {}))
        command = AdminCommand(action="compensate", actor="alice", note="customer called")
        await trip.h.publish(command, gid=gid)
        state = await trip.settled(gid)
        assert state.status == SagaStatus.COMPENSATED
        assert state.reason == "operator: customer called"
        assert any(e.note.startswith("admin compensate by alice") for e in state.timeline)
        assert trip.issued(gid) == ["car", "hotel", "flight"]
        assert await trip.held(trip_id) == dict.fromkeys(STEPS, 0)


async def test_admin_retry_and_resolve_a_stuck_saga(trip: Trip) -> None:
    gid, _ = await trip.start(lost="car", stuck="hotel")
    assert (await trip.settled(gid)).status == SagaStatus.STUCK
    await trip.h.publish(AdminCommand(action="retry", actor="bob"), gid=gid)
    # A fresh budget, spent again: a second alert, with the new round's event id.
    await until(lambda: trip.h.types(gid).count("choreo.SagaStuck") == 2, trip.h)
    await trip.h.drain()
    assert trip.h.types(gid).count("CancelHotel") == 6
    await trip.h.publish(AdminCommand(action="resolve", actor="bob", note="refunded"), gid=gid)
    await trip.h.drain()
    state = trip.tracker.get(gid)
    assert state is not None
    assert (state.status, state.resolved, state.resolved_by) == (SagaStatus.STUCK, True, "bob")


async def test_poison_record_is_dead_lettered_and_tracking_goes_on(trip: Trip) -> None:
    gid = str(uuid.uuid4())
    headers = [("choreo-type", b"TripBooked"), ("choreo-gid", gid.encode())]
    await trip.h.send_raw(TOPIC, b"{nope", headers, gid.encode())
    ok, _ = await trip.start()
    assert (await trip.settled(ok)).status == SagaStatus.COMPLETED
    await trip.h.drain()
    services = {dict(d.headers)[H_SERVICE] for d in trip.h.dead_letters(gid)}
    assert b"tracker" in services
    assert trip.tracker.get(gid) is None
