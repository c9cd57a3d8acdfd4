"""The faust tracker's local store read back (issue 11, restart at scale): the table of
states reads the store instead of keeping a copy (same states, counts and listings as
the in-memory table fed the same records), and a restart's rebuild gives the deadline
index exactly the wake-ups of the stored sagas (the deadlines of those in flight and, with
a retention, the expiry of the finished), without building the states or reading the
timeline records.

With RocksDB, each partition database also keeps indexes of its states
(``choreo.tracker.faust_index``: the sagas with a deadline, the settled ones by when they
settled, the counts) in the same WriteBatch as the states: checked here to equal what the
states give after the tracker's writes, after faust's recovery applying the changelog
(a partial batch applied twice included), for a database of an earlier version, and after
a process writing them is SIGKILLed.

The store is a real RocksDB (``rocksdict``) per partition, written as the faust tracker
writes it (``TableStore.write`` with the pipeline's records); no broker is needed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest

from choreo import Event, codec
from choreo.events import Envelope, Message
from choreo.saga import SagaState, SagaStatus
from choreo.saga.packing import head, pack_state, unpack_state
from choreo.tracker import faust_index
from choreo.tracker.core import TrackerCore
from choreo.tracker.faust_app import FaustTracker
from choreo.tracker.faust_store import TableStore
from choreo.tracker.faust_sweep import RetentionSweep
from choreo.tracker.pipeline import TrackerPipeline
from choreo.tracker.states import state_key
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
        # What the changelog got, in order: (partition, offset, key, value).
        self.changelog: list[tuple[int, int, bytes, bytes | None]] = []

    async def send(self, records: Sequence[OutgoingRecord]) -> None:
        pass

    def load(self, gid: str) -> SagaState | None:
        raw = self.store.get(state_key(gid))
        return None if raw is None else unpack_state(raw)

    async def save(
        self, changed: Sequence[tuple[SagaState, Record]], removed: Sequence[tuple[str, Record]]
    ) -> None:
        writes = self.stored.writes(changed, removed)
        for partition, key, value in writes:
            self.changelog.append((partition, self.offsets[partition], key, value))
            self.offsets[partition] += 1
        self.stored.states.replacing(writes)
        self.store.write(CHANGELOG, writes, {p: self.offsets[p] - 1 for p, _k, _v in writes})

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


def stored_index(db: Any) -> dict[bytes, bytes]:
    """The index entries and counts a partition database holds."""
    return {
        key: value
        for key, value in db.items(from_key=faust_index.INDEX_PREFIX)
        if key.startswith(faust_index.INDEX_PREFIX) and key != faust_index.VERSION_KEY
    }


def derived_index(db: Any) -> dict[bytes, bytes]:
    """What its states say the index entries and counts must be."""
    states = [(key, raw) for key, raw in db.items()
              if key < b"\xff" and faust_index.is_state_key(key)]  # fmt: skip
    return faust_index.entries(states)


def assert_indexed(db: Any) -> None:
    assert faust_index.indexed(db)
    assert stored_index(db) == derived_index(db)


@pytest.mark.parametrize("retention", [None, 600.0])
async def test_a_rebuild_tracks_exactly_the_sagas_due_and_reads_no_state(
    tmp_path: Path, retention: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = Fed(tmp_path / "store", retention)
    tracker: FaustTracker | None = None
    try:
        await sagas(fed)
        await fed.event("elsewhere", TripBooked(trip_id="e"), 100.0)
        for partition in range(PARTITIONS):
            assert_indexed(fed.rocks._db_for_partition(partition))
        tracker = FaustTracker([fed.core.contracts["trip"]], broker="kafka://127.0.0.1:9",
                               data_dir=tmp_path / "tracker", retention=retention,
                               store="rocksdb")  # fmt: skip
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
        monkeypatch.setattr(store, "states", lambda *a: pytest.fail("a state was read"))
        tracker.rebuild()
        monkeypatch.undo()
        monkeypatch.setattr(tracker, "owned", lambda: [TopicPartition("t", p) for p in owned])

        mine = {g for g in fed.memory.states if partition_for(g.encode(), PARTITIONS) in owned}
        wakes, dormant = {}, set()
        for gid in mine:
            state = fed.memory.states.hot(gid)
            assert state is not None
            due = tracker._timer_due(state)
            if due is not None:
                wakes[gid] = (due, state.version)
            elif state.settled_at() is not None:
                dormant.add(gid)
        index = tracker.pipeline.deadlines
        assert {gid: (due, version) for due, gid, version in index._heap} == wakes
        assert len(index) == len(wakes)
        # In flight or compensating: in the index; settled with nothing to wait for: not
        # (the retention sweep finds them in the store's index of settled sagas).
        assert {"running", "compensating"} & mine <= set(wakes)
        assert {"completed", "compensated"} & mine <= dormant
        assert "stuck" not in wakes  # unresolved: stays, with nothing to wait for
        assert "stuck" not in dormant
        swept = {gid for p in owned for _key, gid in store.settled_until(p, 1e12, None, 100)}
        assert swept == dormant
        assert tracker.states.counts() == Counter(
            (p.saga, p.status.value, p.stuck_unresolved)
            for g, p in fed.memory.states.peeks()
            if g in mine
        )
        assert len(tracker.states) == len(mine)
        assert sorted(tracker.states) == sorted(mine)
        assert read == []  # the rebuild reads indexes; it looks no state up
    finally:
        fed.rocks.close()


async def complete_trips(fed: Fed, count: int) -> None:
    """Trips ``done-0`` ... ``done-<count - 1>``, each completed at 100 + 10 n + 3."""
    for n in range(count):
        gid = f"done-{n}"
        t = 100.0 + 10 * n
        await fed.event(gid, TripBooked(trip_id=gid), t)
        await fed.event(gid, FlightBooked(trip_id=gid), t + 1)
        await fed.event(gid, HotelBooked(trip_id=gid), t + 2)
        await fed.event(gid, CarBooked(trip_id=gid), t + 3)


async def test_the_retention_index_gives_the_settled_sagas_in_order_from_a_place(
    tmp_path: Path,
) -> None:
    fed = Fed(tmp_path / "store", 600.0)
    try:
        await complete_trips(fed, 30)
        store = fed.store
        for partition in range(PARTITIONS):
            mine = [n for n in range(30) if partition_for(f"done-{n}".encode(), PARTITIONS)
                    == partition]  # fmt: skip
            until = 100.0 + 10 * 20 + 3  # settled at or before: done-0 ... done-20
            found = store.settled_until(partition, until, None, 1000)
            assert [gid for _k, gid in found] == [f"done-{n}" for n in mine if n <= 20]
            first = store.settled_until(partition, until, None, 2)
            rest = store.settled_until(partition, until, first[-1][0] if first else None, 1000)
            assert first + rest == found
        # A removed saga leaves the index with its state.
        await fed.deadline("done-0", 103.0 + 600.0)
        assert fed.stored.states.hot("done-0") is None
        partition = partition_for(b"done-0", PARTITIONS)
        assert "done-0" not in {g for _k, g in store.settled_until(partition, 1e12, None, 99)}
        assert_indexed(fed.rocks._db_for_partition(partition))
    finally:
        fed.rocks.close()


async def test_the_retention_sweep_sends_the_checks_that_remove_expired_sagas(
    tmp_path: Path,
) -> None:
    """``RetentionSweep`` over the store: a DeadlineCheck for each settled saga past its
    retention, at most ``limit`` a call, each once, from where the last call stopped;
    folded back, they remove those sagas and no other."""
    fed = Fed(tmp_path / "store", 600.0)
    try:
        await complete_trips(fed, 30)
        await fed.event("running", TripBooked(trip_id="r"), 100.0)
        sent: list[OutgoingRecord] = []

        async def send(records: Sequence[OutgoingRecord]) -> None:
            sent.extend(records)

        sweep = RetentionSweep(fed.store, fed.stored.states, fed.core, send,
                               lambda: set(range(PARTITIONS)), limit=7)  # fmt: skip
        now = 100.0 + 10 * 20 + 3 + 600.0  # done-0 ... done-20 are past their retention
        assert [await sweep(now, 600.0) for _ in range(5)] == [7, 7, 7, 0, 0]
        gids = [record.key for record in sent]
        assert sorted(gids) == sorted(f"done-{n}".encode() for n in range(21))
        for record in sent:
            await fed.record(record, now)
        assert sorted(fed.stored.states) == sorted(
            ["running", *(f"done-{n}" for n in range(21, 30))]
        )
        assert fed.stored.states.counts() == fed.memory.states.counts()
        assert fed.stored.metrics.expired == 21
        sweep.reset()
        assert await sweep(now + 10, 600.0) == 1  # done-21 settled 10 s later
    finally:
        fed.rocks.close()


def events(changelog: Sequence[tuple[int, int, bytes, bytes | None]]) -> list[Any]:
    """Changelog records as faust's recovery hands them to its store."""
    from faust.types.tuples import Message as FaustMessage

    return [
        SimpleNamespace(
            message=FaustMessage(CHANGELOG, partition, offset, 0.0, 0, None, key, value, None)
        )
        for partition, offset, key, value in changelog
    ]


async def test_recovery_from_the_changelog_keeps_the_indexes(tmp_path: Path) -> None:
    """faust's recovery (``apply_changelog_batch``, replaced by ``install_recovery``)
    applying the whole changelog in batches, with a tail applied twice (what a restart
    after a crash during a changelog write reads), gives the states, indexes and counts
    the tracker's own writes gave."""
    fed = Fed(tmp_path / "store", 600.0)
    recovered = Rocks(tmp_path / "recovered")
    try:
        await sagas(fed)
        store = TableStore(recovered, "rocksdb", PARTITIONS)
        store.install_recovery()
        changelog = events(fed.changelog)
        rng = random.Random(11)
        at = 0
        while at < len(changelog):
            size = rng.randint(1, 40)
            store.data.apply_changelog_batch(changelog[at : at + size], None, None)
            if rng.random() < 0.3:  # a tail read again
                store.data.apply_changelog_batch(changelog[max(0, at - 5) : at + size], None,
                                                 None)  # fmt: skip
            at += size
        for partition in range(PARTITIONS):
            original, copy = fed.rocks._db_for_partition(partition), store.data.dbs[partition]
            assert dict(copy.items()) == dict(original.items())
            assert_indexed(copy)
        assert store.counts() == fed.store.counts() == fed.memory.states.counts()
    finally:
        fed.rocks.close()
        recovered.close()


async def test_a_database_of_an_earlier_version_is_indexed_once(tmp_path: Path) -> None:
    from rocksdict import WriteBatch

    fed = Fed(tmp_path / "store", 600.0)
    old = Rocks(tmp_path / "old")
    try:
        await sagas(fed)
        for partition, offset, key, value in fed.changelog:  # written without indexes
            batch = WriteBatch(raw_mode=True)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
            batch.put(faust_index.OFFSET_KEY, str(offset).encode())
            old._db_for_partition(partition).write(batch)
        store = TableStore(old, "rocksdb", PARTITIONS)
        assert not any(faust_index.indexed(db) for db in old.dbs.values())
        assert store.counts() == fed.memory.states.counts()  # indexed when first read
        for db in old.dbs.values():
            assert_indexed(db)
    finally:
        fed.rocks.close()
        old.close()


WRITER = """
import sys
from pathlib import Path
from choreo.saga import SagaState, SagaStatus, StepState, StepStatus
from choreo.saga.packing import pack_state
from choreo.tracker.faust_store import TableStore
from choreo.tracker.faust_sweep import RetentionSweep
from choreo.tracker.states import state_key
from tests.test_tracker_rebuild import Rocks

rocks = Rocks(Path(sys.argv[1]))
store = TableStore(rocks, "rocksdb", 1)
offset, n = 0, 0
while True:  # sagas started, stepping, finishing and removed, until killed
    writes = []
    for _ in range(50):
        n += 1
        gid = f"g{n % 700}"
        kind = n % 4
        if kind == 3:
            writes.append((0, state_key(gid), None))
            continue
        status = (SagaStatus.RUNNING, SagaStatus.COMPLETED, SagaStatus.STUCK)[kind]
        step = StepState(status=StepStatus.PENDING, deadline_at=float(n))
        state = SagaState(gid=gid, saga="s", status=status, version=n, started_at=0.0,
                          updated_at=float(n), steps={"a": step})
        writes.append((0, state_key(gid), pack_state(state)))
    offset += len(writes)
    store.write("changelog", writes, {0: offset})
    if offset == len(writes):
        print("writing", flush=True)
"""


def test_indexes_agree_with_the_states_after_a_sigkill(tmp_path: Path) -> None:
    """A process writing states through ``TableStore.write`` is SIGKILLed at random
    moments, each time reopening the database another left: the indexes and counts
    always agree with the states (one WriteBatch holds both)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    rng = random.Random(5)
    for _round in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "db")],
                                cwd=root, env=env, stdout=subprocess.PIPE)  # fmt: skip
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"writing\n"
            time.sleep(rng.uniform(0.2, 0.8))
            assert proc.poll() is None  # still writing
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        rocks = Rocks(tmp_path / "db")
        try:
            db = rocks._db_for_partition(0)
            assert_indexed(db)
            assert sum(faust_index.read_counts(db).values()) > 0
        finally:
            rocks.close()


async def test_a_rebalance_keeping_the_same_partitions_and_store_needs_no_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = Fed(tmp_path / "store", 600.0)
    try:
        await sagas(fed)
        tracker = FaustTracker([fed.core.contracts["trip"]], broker="kafka://127.0.0.1:9",
                               data_dir=tmp_path / "tracker", retention=600.0,
                               store="rocksdb")  # fmt: skip
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
