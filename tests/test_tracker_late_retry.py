"""A compensation a settled saga still owes is retried (invariant 4), retention or not.

Found while moving retention to the store (issue 11): with a retention, the pipeline's
``_retained`` takes every ``DeadlineCheck`` of a settled saga for retention's, so a
compensation issued after the saga settled (a late success of a COMPENSATED saga's step)
was never retried: the check at its retry time changed nothing. ``_retained`` now lets a
check through to the machine when the saga has a deadline due.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scenarios.trip import (
    CarBooked,
    FlightBooked,
    FlightCancelled,
    HotelCancelled,
    TripBooked,
)
from tests.test_tracker_rebuild import Fed


@pytest.mark.parametrize("retention", [None, 6 * 3600.0])
async def test_a_late_compensation_of_a_settled_saga_is_retried(
    tmp_path: Path, retention: float | None
) -> None:
    fed = Fed(tmp_path, retention)
    try:
        gid = "late"
        await fed.event(gid, TripBooked(trip_id=gid), 100.0)
        await fed.event(gid, FlightBooked(trip_id=gid), 101.0)
        await fed.deadline(gid, 131.0)  # the hotel step timed out: compensating
        await fed.event(gid, HotelCancelled(trip_id=gid), 140.0, "hotel", "compensate")
        await fed.event(gid, FlightCancelled(trip_id=gid), 141.0, "flight", "compensate")
        await fed.event(gid, CarBooked(trip_id=gid), 150.0, "car", "action")  # late success
        state = fed.memory.states.hot(gid)
        assert state is not None
        assert state.settled_at() is not None  # COMPENSATED
        retry_at = state.next_deadline()
        assert retry_at is not None  # the car's compensation, unconfirmed
        await fed.deadline(gid, retry_at + 0.01)
        after = fed.memory.states.hot(gid)
        assert after is not None
        assert after.version > state.version  # the deadline was handled (here: the budget
        assert after.steps["car"].next_retry_at != retry_at  # of 1 attempt is spent)
    finally:
        fed.rocks.close()
