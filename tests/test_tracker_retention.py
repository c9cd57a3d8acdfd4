"""Retention: settled sagas leave the tracker's table after a while, through the log.

The pipeline (the part every shell shares) is driven here with records as the shells
read them, the time being the records' own; the faust tracker's tombstones on real Kafka
are in ``test_faust_tracker.py`` (``test_retention_removes_settled_sagas_for_good``).
"""

from __future__ import annotations

from collections.abc import Sequence

from choreo import Event, codec
from choreo.events import Envelope, Message
from choreo.saga import SagaState, SagaStatus, StepStatus
from choreo.tracker.core import TrackerCore
from choreo.tracker.pipeline import TrackerPipeline
from choreo.transport.base import OutgoingRecord, Record
from tests.scenarios.trip import (
    TOPIC,
    CarBooked,
    CarFailed,
    FlightBooked,
    FlightCancelled,
    HotelBooked,
    HotelCancelled,
    TripBooked,
    trip_contract,
)

GID = "3b0f6c1e-0000-4000-8000-000000000001"
RETENTION = 60.0


class Shell:
    """The pipeline with what a shell gives it: sends kept, saves kept."""

    def __init__(self, retries: int = 3) -> None:
        contract = trip_contract(30.0, compensation_retries=retries, retry_backoff=1.0)
        self.core = TrackerCore([contract])
        self.sent: list[OutgoingRecord] = []
        self.saved: list[tuple[list[str], list[str]]] = []
        self.offset = 0
        self.pipeline = TrackerPipeline(
            self.core, send=self.send, clock=lambda: 0.0, save=self.save, retention=RETENTION
        )

    async def send(self, records: Sequence[OutgoingRecord]) -> None:
        self.sent.extend(records)

    async def save(
        self, changed: Sequence[tuple[SagaState, Record]], removed: Sequence[tuple[str, Record]]
    ) -> None:
        self.saved.append(([s.gid for s, _ in changed], [gid for gid, _ in removed]))

    async def feed(self, outgoing: OutgoingRecord, at: float) -> None:
        self.offset += 1
        record = Record(outgoing.topic, 0, self.offset, outgoing.key, outgoing.value,
                        outgoing.headers, round(at * 1000))  # fmt: skip
        await self.pipeline.handle(record, at)

    async def event(self, event: Event, at: float, step: str = "", op: str = "") -> None:
        self.offset += 1
        envelope = Envelope.own(event, gid=GID, saga="trip", event_id=f"e{self.offset}",
                                source="test", step=step, op=op)  # type: ignore[arg-type]  # fmt: skip
        await self.feed(codec.encode(Message(envelope, event, TOPIC)), at)

    async def check(self, at: float) -> None:
        """The timer's DeadlineCheck for the saga's current version, read back at ``at``."""
        await self.feed(self.core.deadline_check(self.state), at)

    @property
    def state(self) -> SagaState:
        return self.pipeline.states[GID]


async def test_a_completed_saga_leaves_after_its_retention() -> None:
    shell = Shell()
    await shell.event(TripBooked(trip_id="t"), 0.0)
    await shell.event(FlightBooked(trip_id="t"), 1.0)
    await shell.event(HotelBooked(trip_id="t"), 2.0)
    await shell.event(CarBooked(trip_id="t"), 3.0)
    assert shell.state.status == SagaStatus.COMPLETED
    # The timer will wake for it when its retention ends, from its last change.
    assert shell.pipeline.wake_at(shell.state) == 3.0 + RETENTION
    assert shell.pipeline.deadlines.pop_due(3.0 + RETENTION - 1) == []
    version = shell.state.version
    await shell.check(30.0)  # early (a clock's slack): nothing happens, not even a stamp
    assert shell.state.version == version
    assert shell.pipeline.deadlines.pop_due(3.0 + RETENTION) == [(GID, version)]
    await shell.check(3.0 + RETENTION)
    assert GID not in shell.pipeline.states
    assert shell.saved[-1] == ([], [GID])  # a tombstone, through the shell's save
    assert shell.pipeline.metrics.expired == 1
    assert shell.pipeline.deadlines.next_at() is None


async def test_a_stuck_saga_stays_until_clear_and_shows_it() -> None:
    shell = Shell(retries=1)
    await shell.event(TripBooked(trip_id="t"), 0.0)
    await shell.event(FlightBooked(trip_id="t"), 1.0)
    await shell.event(HotelBooked(trip_id="t"), 2.0)
    await shell.event(CarFailed(trip_id="t", reason="no cars"), 3.0)
    assert shell.state.steps["hotel"].status == StepStatus.COMPENSATING
    await shell.check(5.0)  # the hotel's one attempt is unconfirmed: STUCK
    assert shell.state.status == SagaStatus.STUCK
    assert shell.state.settled_at() is None
    assert shell.pipeline.wake_at(shell.state) is None  # no retention while stuck
    await shell.check(5.0 + 10 * RETENTION)
    assert shell.state.status == SagaStatus.STUCK  # still there, long past retention

    # The hotel confirms after all, then the flight's compensation (unblocked) too.
    await shell.event(HotelCancelled(trip_id="t"), 1000.0, step="hotel", op="compensate")
    assert shell.state.steps["hotel"].status == StepStatus.COMPENSATED
    assert shell.state.cleared_at is None  # the flight is still owed
    await shell.event(FlightCancelled(trip_id="t"), 1001.0, step="flight", op="compensate")
    state = shell.state
    assert state.status == SagaStatus.STUCK  # terminal states never reopen
    assert state.cleared_at == 1001.0
    assert "clear: every compensation confirmed" in state.timeline[-1].note
    assert shell.pipeline.wake_at(state) == 1001.0 + RETENTION
    await shell.check(1001.0 + RETENTION)
    assert GID not in shell.pipeline.states


async def test_without_retention_settled_sagas_stay() -> None:
    shell = Shell()
    shell.pipeline.retention = None
    await shell.event(TripBooked(trip_id="t"), 0.0)
    await shell.event(FlightBooked(trip_id="t"), 1.0)
    await shell.event(HotelBooked(trip_id="t"), 2.0)
    await shell.event(CarBooked(trip_id="t"), 3.0)
    assert shell.pipeline.wake_at(shell.state) is None
    await shell.check(3.0 + 100 * RETENTION)
    assert shell.state.status == SagaStatus.COMPLETED
