"""The faust tracker's local store read back (issue 11, restart at scale): the table of
states reads the store instead of keeping a copy (same states, counts and listings as
the in-memory table fed the same records), and a restart's rebuild gives the deadline
index exactly the wake-ups of the stored sagas (the deadlines of those in flight and, with
a retention, the expiry of the finished), without building the states or reading the
timeline records.

The store is a real RocksDB (``rocksdict``) per partition, written as the faust tracker
writes it (``TableStore.write`` with the pipeline's records); no broker is needed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest

from choreo import Event, codec
from choreo.events import Envelope, Message
from choreo.saga import SagaState, SagaStatus
from choreo.saga.packing import head, pack_state, unpack_state
from choreo.tracker.core import TrackerCore
from choreo.tracker.faust_app import FaustTracker
from choreo.tracker.faust_store import TableStore
from choreo.tracker.pipeline import TrackerPipeline
from choreo.tracker.states import TIMELINE_PREFIX, state_key
from choreo.transport.base import OutgoingRecord, Record, TopicPartition
from choreo.transport.partitioner import partition_for
from tests.scenarios.trip import (
    TOPIC,
    CarBooked,
    CarFailed,
    FlightBooked,
    FlightCancelled,
    HotelBooked,
    HotelCancelled,
    Plan,
    TripBooked,
    trip_contract,
)

PARTITIONS = 3
CHANGELOG = "tracker-sagas-changelog"


class Rocks:
    """What ``TableStore`` uses of faust's RocksDB store: a database per partition."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dbs: dict[int, Any] = {}

    def _db_for_partition(self, partition: int) -> Any:
        from rocksdict import Options, Rdict

        if partition not in self.dbs:
            self.dbs[partition] = Rdict(str(self.root / f"p{partition}"), Options(raw_mode=True))
        return self.dbs[partition]

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


class Fed:
    """Two pipelines fed the same records: ``memory`` keeps its table in memory (the
    memory tracker's), ``stored`` reads it from a RocksDB ``TableStore`` written as
    ``FaustTracker._save`` writes it."""

    def __init__(self, root: Path, retention: float | None) -> None:
        self.core = TrackerCore([trip_contract(30.0, compensation_retries=1, retry_backoff=1.0)])
        self.rocks = Rocks(root)
        self.store = TableStore(self.rocks, "rocksdb", PARTITIONS)
        self.memory = TrackerPipeline(self.core, send=self.send, clock=lambda: 0.0,
                                      retention=retention)  # fmt: skip
        self.stored = TrackerPipeline(
            self.core, send=self.send, clock=lambda: 0.0, retention=retention,
            load=self.load, save=self.save, read=self.store.get,
        )  # fmt: skip
        self.stored.states.use_store(self.store)
        self.offsets: Counter[int] = Counter()
        self.sequence = 0

    async def send(self, records: Sequence[OutgoingRecord]) -> None:
        pass

    def load(self, gid: str) -> SagaState | None:
        raw = self.store.get(state_key(gid))
        return None if raw is None else unpack_state(raw)

    async def save(
        self, changed: Sequence[tuple[SagaState, Record]], removed: Sequence[tuple[str, Record]]
    ) -> None:
        writes = self.stored.writes(changed, removed)
        for partition, _key, _value in writes:
            self.offsets[partition] += 1
        self.stored.states.replacing(writes)
        self.store.write(CHANGELOG, writes, {p: self.offsets[p] for p, _k, _v in writes})

    async def record(self, outgoing: OutgoingRecord, at: float) -> None:
        self.sequence += 1
        partition = partition_for(outgoing.key or b"", PARTITIONS)
        record = Record(outgoing.topic, partition, self.sequence, outgoing.key,
                        outgoing.value, outgoing.headers, round(at * 1000))  # fmt: skip
        await self.memory.handle(record, at)
        await self.stored.handle(record, at)

    async def event(self, gid: str, event: Event, at: float, step: str = "", op: str = "") -> None:
        self.sequence += 1
        envelope = Envelope.own(event, gid=gid, saga="trip", event_id=f"e{self.sequence}",
                                source="test", step=step, op=op)  # type: ignore[arg-type]  # fmt: skip
        await self.record(codec.encode(Message(envelope, event, TOPIC)), at)

    async def deadline(self, gid: str, at: float) -> None:
        """The timer's check of the saga's current version, read back at ``at``."""
        state = self.memory.states.hot(gid)
        assert state is not None
        await self.record(self.core.deadline_check(state), at)


async def sagas(fed: Fed, t: float = 100.0) -> dict[str, SagaStatus]:
    """One saga of each kind the tracker holds; returns what each must be."""
    await fed.event("running", TripBooked(trip_id="r"), t)
    for gid, plan in (("completed", Plan()), ("completed-odd", Plan(stuck="COMPENSATING"))):
        await fed.event(gid, TripBooked(trip_id=gid, plan=plan), t)
        await fed.event(gid, FlightBooked(trip_id=gid), t + 1)
        await fed.event(gid, HotelBooked(trip_id=gid), t + 2)
        await fed.event(gid, CarBooked(trip_id=gid), t + 3)
    for gid in ("compensating", "compensated", "stuck"):
        await fed.event(gid, TripBooked(trip_id=gid), t)
        await fed.event(gid, FlightBooked(trip_id=gid), t + 1)
        await fed.event(gid, HotelBooked(trip_id=gid), t + 2)
        await fed.event(gid, CarFailed(trip_id=gid, reason="no cars"), t + 3)
    await fed.event("compensated", HotelCancelled(trip_id="x"), t + 4, "hotel", "compensate")
    await fed.event("compensated", FlightCancelled(trip_id="x"), t + 5, "flight", "compensate")
    for n in range(1, 6):  # the compensations' retries run out: STUCK
        await fed.deadline("stuck", t + 3 + 60 * n)
    # One removed at its retention (when there is one), and started again.
    await fed.event("again", TripBooked(trip_id="a"), t)
    await fed.event("again", FlightBooked(trip_id="a"), t + 1)
    await fed.event("again", HotelBooked(trip_id="a"), t + 2)
    await fed.event("again", CarBooked(trip_id="a"), t + 3)
    await fed.deadline("again", t + 10_000)
    await fed.event("again", TripBooked(trip_id="a2"), t + 10_001)
    return {
        "running": SagaStatus.RUNNING,
        "completed": SagaStatus.COMPLETED,
        "completed-odd": SagaStatus.COMPLETED,
        "compensating": SagaStatus.COMPENSATING,
        "compensated": SagaStatus.COMPENSATED,
        "stuck": SagaStatus.STUCK,
    }


@pytest.mark.parametrize("retention", [None, 600.0])
async def test_the_stored_table_reads_what_the_memory_table_holds(
    tmp_path: Path, retention: float | None
) -> None:
    fed = Fed(tmp_path, retention)
    try:
        expected = await sagas(fed)
        memory, stored = fed.memory.states, fed.stored.states
        for gid, status in expected.items():
            assert stored[gid].status == status, gid
        assert len(stored) == len(memory)
        assert sorted(stored) == sorted(memory)
        assert stored.counts() == memory.counts()
        assert dict(stored.peeks()) == dict(memory.peeks())
        for gid in memory:
            assert stored[gid] == memory[gid]  # whole: the timeline read from the store
            assert gid in stored
        assert "nobody" not in stored
        assert stored.hot("nobody") is None
    finally:
        fed.rocks.close()


def test_head_gives_the_deadline_and_retention_of_every_kind_of_state(tmp_path: Path) -> None:
    import asyncio

    fed = Fed(tmp_path, None)
    try:
        asyncio.run(sagas(fed))
        for gid in fed.memory.states:
            raw = fed.memory.states.raw(gid)
            assert raw is not None
            state = unpack_state(raw)
            found = head(raw)
            assert (found.saga, found.status, found.version, found.resolved) == (
                state.saga, state.status, state.version, state.resolved,
            )  # fmt: skip
            assert found.next_deadline == state.next_deadline(), gid
            assert found.settled_at == state.settled_at(), gid
            # A state of an earlier version, stored as JSON, gives the same; so does a
            # packed record with fewer fields (read field by field).
            assert head(state.model_dump_json().encode()) == found
            assert head(msgpack.packb(msgpack.unpackb(raw)[:-1])) == found
        with pytest.raises(ValueError, match="not a packed saga state"):
            head(b"\x93garbage")
        assert head(pack_state(state)) == head(raw)
    finally:
        fed.rocks.close()


@pytest.mark.parametrize("retention", [None, 600.0])
async def test_a_rebuild_tracks_exactly_the_sagas_due_and_reads_no_timeline(
    tmp_path: Path, retention: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = Fed(tmp_path / "store", retention)
    tracker: FaustTracker | None = None
    try:
        await sagas(fed)
        await fed.event("elsewhere", TripBooked(trip_id="e"), 100.0)
        tracker = FaustTracker([fed.core.contracts["trip"]], broker="kafka://127.0.0.1:9",
                               data_dir=tmp_path / "tracker", retention=retention)  # fmt: skip
        # This worker owns two of the three partitions.
        owned = sorted({partition_for(g.encode(), PARTITIONS) for g in ("running", "stuck")})
        if len(owned) == 1:
            owned.append((owned[0] + 1) % PARTITIONS)
        store = TableStore(fed.rocks, "rocksdb", PARTITIONS, lambda: set(owned))
        tracker._store = store
        tracker.states.use_store(store)
        monkeypatch.setattr(tracker, "owned", lambda: [TopicPartition("t", p) for p in owned])
        read: list[bytes] = []
        real_get = store.get
        monkeypatch.setattr(store, "get", lambda key: read.append(key) or real_get(key))
        tracker.rebuild()

        mine = {g for g in fed.memory.states if partition_for(g.encode(), PARTITIONS) in owned}
        wakes = {}
        for gid in mine:
            state = fed.memory.states.hot(gid)
            assert state is not None
            due = fed.memory.wake_at(state)
            if due is not None:
                wakes[gid] = (due, state.version)
        index = tracker.pipeline.deadlines
        assert {gid: (due, version) for due, gid, version in index._heap} == wakes
        assert len(index) == len(wakes)
        finished = {g for g in mine if fed.memory.states.raw(g) and head(
            fed.memory.states.raw(g) or b"").settled_at is not None}  # fmt: skip
        assert {"running", "compensating"} & mine <= set(wakes)
        if retention is None:  # finished sagas have nothing to wait for
            assert not finished & set(wakes)
        else:  # their retention's end
            assert finished <= set(wakes)
        assert tracker.states.counts() == Counter(
            (p.saga, p.status.value, p.stuck_unresolved)
            for g, p in fed.memory.states.peeks()
            if g in mine
        )
        assert len(tracker.states) == len(mine)
        assert sorted(tracker.states) == sorted(mine)
        assert read == []  # the rebuild iterates; it looks nothing up
        # The store holds timeline records (several per saga): never read by the rebuild.
        db = fed.rocks._db_for_partition(owned[0])
        assert any(key.startswith(TIMELINE_PREFIX) for key, _value in db.items())
    finally:
        fed.rocks.close()


async def test_a_rebalance_keeping_the_same_partitions_and_store_needs_no_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = Fed(tmp_path / "store", 600.0)
    try:
        await sagas(fed)
        tracker = FaustTracker([fed.core.contracts["trip"]], broker="kafka://127.0.0.1:9",
                               data_dir=tmp_path / "tracker", retention=600.0)  # fmt: skip
        owned = [0, 1, 2]
        store = TableStore(fed.rocks, "rocksdb", PARTITIONS, lambda: set(owned))
        tracker._store = store
        tracker.states.use_store(store)
        monkeypatch.setattr(tracker, "owned", lambda: [TopicPartition("t", p) for p in owned])
        assert tracker._rebuild_needed()  # never built
        tracker.rebuild()
        assert not tracker._rebuild_needed()  # faust's second assignment at start
        owned.remove(2)
        assert tracker._rebuild_needed()  # a partition went to another worker
        owned.append(2)
        assert not tracker._rebuild_needed()
        # Recovery applied changelog records another worker wrote: the store moved on.
        partition = partition_for(b"running", PARTITIONS)
        applied = store.applied(partition)
        assert applied is not None
        store.write(CHANGELOG, [(partition, state_key("other"), None)], {partition: applied + 3})
        assert tracker._rebuild_needed()
        tracker.rebuild()
        assert not tracker._rebuild_needed()
    finally:
        fed.rocks.close()
