"""``Harness.wait`` / ``wait_for``: a test waits for a saga's end, or a state, instead of
polling the tracker itself; a timeout says where the saga is."""

from __future__ import annotations

import uuid

import pytest

from choreo import ConfigurationError, SagaStatus
from choreo.testing import Harness, MemoryTracker
from tests.scenarios.trip import Plan, TripBooked, build_travel


async def test_wait_returns_the_final_state_and_wait_for_a_chosen_one() -> None:
    travel = build_travel(f"w{uuid.uuid4().hex[:8]}")
    tracker = MemoryTracker([travel.contract])
    async with Harness(*travel.services, tracker) as h:
        assert h.tracker is tracker
        ok = await h.publish(TripBooked(trip_id="t1", plan=Plan()))
        failed = await h.publish(TripBooked(trip_id="t2", plan=Plan(fail="hotel")))
        assert (await h.wait(ok)).status is SagaStatus.COMPLETED
        state = await h.wait_for(failed, SagaStatus.COMPENSATED)
        assert state.status is SagaStatus.COMPENSATED
        assert h.types(ok)[0] == TripBooked.event_type  # history collected meanwhile
        with pytest.raises(TimeoutError, match="unknown to the tracker"):
            await h.wait("no-such-gid", timeout=0.2)
        with pytest.raises(TimeoutError, match="is COMPLETED after"):
            await h.wait_for(ok, SagaStatus.STUCK, timeout=0.2)


async def test_wait_needs_a_tracker() -> None:
    travel = build_travel(f"w{uuid.uuid4().hex[:8]}")
    async with Harness(*travel.services) as h:
        with pytest.raises(ConfigurationError, match="no tracker"):
            await h.wait("g")
