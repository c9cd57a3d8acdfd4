"""The tracker's compact state: what it stores per saga (a packed hot state, the timeline
apart in records of its own), read back whole, bounded, removed at retention; and an
event whose state would be too large to store is dead-lettered, not retried for ever.

The pipeline is driven with records as the shells read them; the memory tracker runs in
a ``Harness`` on the memory transport. The faust tracker's side (real Kafka) is
``tests/test_faust_tracker.py::TestLiveTracker::test_a_state_too_large_is_dead_lettered``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from choreo import Event, codec
from choreo.deadletter import H_REASON, H_SERVICE
from choreo.events import Envelope, Message
from choreo.saga import SagaState, SagaStatus
from choreo.saga.packing import pack_entries, pack_state, peek, unpack_entries, unpack_state
from choreo.saga.state import TIMELINE_LIMIT
from choreo.testing import Harness
from choreo.tracker.core import TrackerCore
from choreo.tracker.memory import MemoryTracker
from choreo.tracker.pipeline import MAX_STATE_BYTES, TrackerPipeline
from choreo.tracker.states import saga_writes, state_key, timeline_key
from choreo.transport.base import OutgoingRecord, Record
from tests.scenarios.trip import (
    TOPIC,
    CarFailed,
    FlightBooked,
    FlightCancelled,
    HotelBooked,
    HotelCancelled,
    TripBooked,
    trip_contract,
)

GID = "5e1f0c2a-0000-4000-8000-00000000c0de"


class Feed:
    """A pipeline with its own table (no shell store), fed one record per batch, and the
    same events folded by the core alone: the state a whole-state tracker would hold."""

    def __init__(self, retention: float | None = None) -> None:
        self.core = TrackerCore([trip_contract(30.0, retry_backoff=1.0)])
        self.sent: list[OutgoingRecord] = []
        self.pipeline = TrackerPipeline(
            self.core, send=self.send, clock=lambda: 0.0, retention=retention
        )
        self.whole: SagaState | None = None
        self.offset = 0

    async def send(self, records: Sequence[OutgoingRecord]) -> None:
        self.sent.extend(records)

    async def event(self, event: Event, at: float, step: str = "", op: str = "") -> None:
        self.offset += 1
        envelope = Envelope.own(event, gid=GID, saga="trip", event_id=f"e{self.offset}",
                                source="test", step=step, op=op)  # type: ignore[arg-type]  # fmt: skip
        await self.feed(codec.encode(Message(envelope, event, TOPIC)), at)

    async def feed(self, outgoing: OutgoingRecord, at: float) -> None:
        self.offset += 1
        record = Record(outgoing.topic, 0, self.offset, outgoing.key, outgoing.value,
                        outgoing.headers, round(at * 1000))  # fmt: skip
        message = codec.decode(record, self.core.registry)
        self.whole, _ = self.core.fold(self.whole, message, at)
        await self.pipeline.handle(record, at)


async def failed_trip(feed: Feed) -> None:
    await feed.event(TripBooked(trip_id="t"), 0.0)
    await feed.event(FlightBooked(trip_id="t"), 1.0)
    await feed.event(HotelBooked(trip_id="t"), 2.0)
    await feed.event(CarFailed(trip_id="t", reason="no cars"), 3.0)
    await feed.event(HotelCancelled(trip_id="t"), 4.0, step="hotel", op="compensate")
    await feed.event(FlightCancelled(trip_id="t"), 5.0, step="flight", op="compensate")


async def test_the_stored_state_is_the_whole_state_without_its_timeline() -> None:
    feed = Feed()
    await feed.event(TripBooked(trip_id="t"), 0.0)
    await feed.event(FlightBooked(trip_id="t"), 1.0)
    await feed.event(CarFailed(trip_id="t", reason="no cars"), 2.0)  # flight compensating
    assert feed.whole is not None
    assert feed.whole.compensations
    assert feed.whole.payloads
    raw = feed.pipeline.states.raw(GID)
    assert raw is not None
    assert unpack_state(raw) == feed.whole.model_copy(update={"timeline": []})
    assert unpack_state(pack_state(feed.whole)) == unpack_state(raw)
    assert peek(raw) == (
        "trip", SagaStatus.COMPENSATING, feed.whole.version, 0.0, 2.0, False
    )  # fmt: skip
    # A saga in flight packs to a few hundred bytes, its JSON with the timeline is far more.
    assert len(raw) < 700 < len(feed.whole.model_dump_json())
    entries = feed.whole.timeline
    assert unpack_entries(pack_entries(entries)) == entries


async def test_a_saga_reads_back_whole_timeline_included() -> None:
    feed = Feed()
    await failed_trip(feed)
    assert feed.whole is not None
    assert feed.whole.status == SagaStatus.COMPENSATED
    assert feed.pipeline.states[GID] == feed.whole
    # Each write added only its own lines: the start's, then the flight's.
    table = feed.pipeline.states
    assert [len(table.timeline(GID, v)) for v in (1, 2)] == [1, 2]


def test_a_state_of_an_earlier_version_loads_with_its_timeline() -> None:
    state = SagaState.new(GID, "trip", 1.0)
    state.seen_ids = ["e1"]
    state.add_timeline([])
    legacy = state.model_dump_json().encode()  # how states were stored before
    assert unpack_state(legacy) == state
    assert peek(legacy).status == SagaStatus.RUNNING


@pytest.mark.parametrize("raw", [b"", b"\x93\x02\x01\x02", b"\xc1", b"\x92\x01\x05"])
def test_bytes_that_are_no_packed_state_are_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not a packed saga state"):
        unpack_state(raw)


async def test_the_timeline_keeps_its_last_entries_and_drops_older_records() -> None:
    feed = Feed()
    await feed.event(TripBooked(trip_id="t"), 0.0)
    for n in range(TIMELINE_LIMIT + 50):
        await feed.event(FlightBooked(trip_id="t"), 1.0 + n)  # each one "ignored": a line
    assert feed.whole is not None
    state = feed.pipeline.states[GID]
    assert state.timeline == feed.whole.timeline[-TIMELINE_LIMIT:]
    assert len(state.timeline) == TIMELINE_LIMIT
    # Records older than the last TIMELINE_LIMIT versions were removed (tombstones).
    writes = saga_writes([(0, state, b"x", state.version - 1)], [])
    assert (0, timeline_key(GID, state.version - TIMELINE_LIMIT), None) in writes
    assert feed.pipeline.states.timeline(GID, state.version - TIMELINE_LIMIT) == []


async def test_retention_removes_the_state_and_every_timeline_record() -> None:
    feed = Feed(retention=60.0)
    await failed_trip(feed)
    state = feed.pipeline.states[GID]
    assert state.settled_at() == 5.0
    await feed.feed(feed.core.deadline_check(state), 5.0 + 60.0)
    assert GID not in feed.pipeline.states
    assert feed.pipeline.states.timeline(GID, state.version) == []
    writes = saga_writes([], [(0, GID, state.version)])
    assert writes[0] == (0, state_key(GID), None)
    assert {key for _p, key, _v in writes[1:]} == {
        timeline_key(GID, v) for v in range(1, state.version + 1)
    }


async def test_an_event_whose_state_is_too_large_is_dead_lettered_and_the_rest_flows() -> None:
    tracker = MemoryTracker([trip_contract(60.0)], broker="memory://")
    async with Harness(tracker, broker="memory://", store="memory://") as h:
        big = "b" * (MAX_STATE_BYTES + 1000)  # kept as the flight step's trigger payload
        await send(h, "big", TripBooked(trip_id=big))
        await send(h, "small", TripBooked(trip_id="small"))
        limit = time.monotonic() + 30
        while tracker.get("small") is None:
            assert time.monotonic() < limit, "the tracker did not go on past the big event"
            await asyncio.sleep(0.05)
        await h.drain(timeout=30)
        [dead] = h.dead_letters("big")
        assert dead.header(H_SERVICE) == b"tracker"
        assert b"too large to store" in (dead.header(H_REASON) or b"")
        assert tracker.get("big") is None
        small = tracker.get("small")
        assert small is not None
        assert small.status == SagaStatus.RUNNING


async def send(h: Harness, gid: str, event: Event) -> None:
    envelope = Envelope.first(event, gid=gid, saga="trip", source="test")
    await h.transport.send(codec.encode(Message(envelope, event, TOPIC)))
