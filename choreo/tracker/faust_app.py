"""The durable saga tracker: ``TrackerCore`` in a faust-streaming app.

One agent reads every saga topic and the system topic. They are co-partitioned by gid
(every record's key is its gid, every topic has the same partition count, the default
partitioner places a gid in the same partition number on each), so one worker owns all of
a saga's records and its entries in the table ``sagas`` (its packed state and its
timeline records, ``choreo.tracker.states``), whose compacted changelog topic is the
durable copy of the states.

Records are folded in batches (what faust delivered within ``batch_within``), each
record in partition order, by ``TrackerPipeline`` (steps 1 to 4) over this shell's I/O:

1. decode it; a poison record goes to ``choreo.dlq`` with its reason, an event type no
   contract knows is another app's business and is skipped;
2. fold it into the saga's state, with the record's timestamp as ``now``, so the states
   are a function of the log (replaying the topics rebuilds them, invariant 10);
3. publish the batch's records (compensations, alerts) with choreo's Kafka producer
   (acks=all, idempotent) and wait for the acknowledgements, all at once;
4. write each changed saga's last state to the table's changelog (its own acks=all,
   idempotent producer, the source record's partition), wait for all acknowledgements,
   then put the states in the table's local store;
5. ack the events. The stream is ``noack()``: faust commits an offset only past records
   acked here, on its commit timer, never past a record whose outputs or state are not
   durable.

A crash before 5 re-delivers the record: outputs are re-sent with the same event ids
(compensation ids are derived from gid, step and attempt), and a fold of an event id the
state has already seen changes nothing. faust's ``exactly_once`` and windowed tables are
not used.

Deadlines: an in-memory ``DeadlineIndex`` (rebuilt from the table once a rebalance and
its table recovery are over) says which sagas are due; a timer sends a ``DeadlineCheck``
record per due saga to its start event's topic, and the agent fires the deadline when that
record comes back. Firing twice is harmless, so the timer needs no durable bookkeeping.

Retention, with RocksDB: a settled saga with no deadline left is not in that index; the
timer sweeps each owned partition's index of settled sagas (``faust_sweep``, in the order
they settled) for those past their retention and sends each a ``DeadlineCheck`` the same
way, which the agent folds into its removal (tombstones). So a worker's memory and its
restart grow with the sagas in flight, not with the finished ones it keeps. (With the
memory store, the index holds each settled saga's end of retention, as before.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from opentelemetry.trace import TracerProvider

from choreo import codec
from choreo.deadletter import DLQ_TOPIC
from choreo.errors import ConfigurationError, TransportError
from choreo.runtime import tune_gc
from choreo.saga.contract import SagaContract
from choreo.saga.packing import head_reader, unpack_state
from choreo.saga.state import SagaState, SagaStatus
from choreo.tracker import faust_fetch
from choreo.tracker.core import DeadlineIndex, TrackerCore
from choreo.tracker.faust_io import faust_credentials, faust_errors, to_record
from choreo.tracker.faust_position import ReadPosition
from choreo.tracker.faust_store import RocksDBSizing, TableStore, remove_stale, store_url
from choreo.tracker.faust_sweep import RetentionSweep
from choreo.tracker.faust_workers import FaustWorkers
from choreo.tracker.offsets import (
    encode_marker,
    marker_key,
)
from choreo.tracker.pipeline import Stopping, TrackerPipeline
from choreo.tracker.states import state_key
from choreo.tracker.view import StatesView
from choreo.transport.base import Record, TopicPartition
from choreo.transport.kafka import KafkaTransport
from choreo.transport.kafka_common import quietly

log = logging.getLogger("choreo.tracker")

TABLE_NAME = "sagas"
# How long a settled saga stays in the table (and the state API) before it is removed.
DEFAULT_RETENTION = 6 * 3600.0
DEFAULT_APP_ID = "choreo-tracker"
# The timer pops a deadline this much after it is due: the DeadlineCheck's timestamp (the
# fold's ``now``) is its send time truncated to the millisecond, and must not be earlier.
_TIMESTAMP_SLACK = 0.002
# The longest deadlines wait, after a rebalance, for the agent to read the backlog.
_BACKLOG_WAIT = 30.0


def default_data_dir() -> Path:
    """Where trackers keep their local state unless told (``CHOREO_TRACKER_DATA_DIR``):
    per user; each tracker uses the subdirectory named by its app id, so trackers of
    different ids never share one (two workers of one id on one machine need a base
    directory each)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"choreo-tracker-{uid}"


class FaustTracker:
    """The tracker's shell: owns the faust app, the producer and the table; the pipeline
    (``TrackerPipeline``) holds the deadline index and a parsed copy of the local table
    (what the state API and the index read)."""

    def __init__(
        self,
        contracts: Sequence[SagaContract],
        *,
        broker: str,
        app_id: str = DEFAULT_APP_ID,
        data_dir: Path | str | None = None,
        tick: float = 0.1,
        commit_interval: float = 1.0,
        batch_size: int = 5000,
        batch_within: float = 0.05,
        replication_factor: int = 1,
        limits: codec.Limits | None = None,
        security: Mapping[str, Any] | None = None,
        store: str = "memory",
        rocksdb: RocksDBSizing | None = None,
        retention: float | None = DEFAULT_RETENTION,
        url: str | None = None,
        standby_replicas: int = 0,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """``security`` takes the same SASL/TLS options as ``KafkaTransport``; they reach
        both choreo's producer and faust's clients. ``store``: the table's local store,
        ``memory`` (a start replays the changelog) or ``rocksdb`` (in ``data_dir``, sized
        by ``rocksdb``); see ``choreo.tracker.faust_store``. ``retention``: seconds a
        settled saga stays in the table (None: for ever); see ``TrackerPipeline``.
        ``url``: this worker's state API as the other workers of its app id reach it
        (faust's ``canonical_url``; see ``workers()``). ``tracer_provider``: where the
        decisions' spans go (``choreo.tracker.tracing``; None: the global provider)."""
        self.url = url
        # Other workers keeping a warm copy of each partition's states (faust's standbys),
        # so one taking it over reads only the changelog's newest records.
        self.standby_replicas = standby_replicas
        self.core = TrackerCore(contracts)
        self.security = dict(security or {})
        self.broker = broker
        self.app_id = app_id
        # One directory per app id, inside the one given or the default base.
        self.data_dir = Path(data_dir or default_data_dir()) / app_id
        store_url(store)  # refuse an unknown store now
        self.store_kind = store
        self.rocksdb = rocksdb or RocksDBSizing()
        self.tick = tick
        self.commit_interval = commit_interval
        # At most this many events per fold batch; a batch is taken when it is full or
        # ``batch_within`` seconds after the previous one (a latency bound at low load).
        # Under load a batch is what faust delivered in that window: a saga's events
        # within it cost one state write, and the batch's outputs and states one wait
        # each: 50 ms folded 1.25x the events per CPU-second of 5 ms (tracker_fold.py).
        self.batch_size = batch_size
        self.batch_within = batch_within
        self.replication_factor = replication_factor
        self.transport = KafkaTransport(
            broker,
            client_id=app_id,
            replication_factor=replication_factor,
            linger_ms=0,
            security=self.security,
        )
        self.pipeline = TrackerPipeline(
            self.core,
            send=self.transport.send_many,
            clock=time.time,
            load=self._load,
            save=self._save,
            limits=limits,
            retention=retention,
            read=lambda key: self.store.get(key),  # timelines: read from the table's store
            tracer_provider=tracer_provider,
        )
        self.states = self.pipeline.states
        if store == "rocksdb":  # settled sagas without a deadline: the retention sweep
            self.pipeline.deadlines = DeadlineIndex(self._timer_due)
        self._sweep: RetentionSweep | None = None  # RocksDB's retention (build_app)
        # Where to read: the folded markers, not faust's offsets (faust_position).
        self.position = ReadPosition(lambda key: self.store.get(key), lambda: self._app.consumer)
        self.folded = self.position.folded
        self.partitions = 0
        self._stale = True  # the index and ``states`` must be rebuilt from the table
        # After a rebuild (RocksDB): the changelog offset each owned partition's store had
        # applied, moved on by this worker's own writes; a rebalance that leaves the same
        # partitions at the same offsets needs no rebuild (see ``_rebuild_needed``).
        self._built: dict[int, int] | None = None
        # After a rebalance: offsets the agent must read up to before deadlines fire, so
        # an answer already in the log is not beaten by a deadline check sent now.
        self._backlog: dict[TopicPartition, int] = {}
        self._read: dict[TopicPartition, int] = {}
        self._backlog_until = 0.0
        self._app: Any = None
        self._table: Any = None
        self._store: TableStore | None = None
        # Writes the table's changelog (see ``_save``): faust's own path (its producer
        # buffer, a future and sensor calls per record) took more CPU per record and put
        # the state in the local store before its changelog record was acknowledged.
        self._changelog: Any = None

    # -- set-up ------------------------------------------------------------------------
    async def prepare(self) -> int:
        """Start the producers and make sure every topic exists; returns the partition
        count the topics share (the table's changelog gets the same)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self.transport.start()
        topics = self.core.topics()
        await self.transport.ensure_topics([*topics, DLQ_TOPIC])
        counts = {topic: await self.transport.partitions_for(topic) for topic in topics}
        if len(set(counts.values())) != 1:
            raise ConfigurationError(
                "the tracker's topics must be co-partitioned (same partition count), got "
                + ", ".join(f"{t}={n}" for t, n in sorted(counts.items()))
            )
        self.partitions = next(iter(counts.values()))
        if self._changelog is None:  # last: nothing after it can fail and leave it running
            producer = AIOKafkaProducer(**self.transport.producer_kwargs())
            try:
                with faust_errors("starting the changelog producer"):
                    await producer.start()
            except BaseException:
                await quietly(producer.stop())
                raise
            self._changelog = producer
        return self.partitions

    def build_app(self, loop: asyncio.AbstractEventLoop | None = None) -> Any:
        """The faust app of this tracker; the process running it is the tracker's, so this
        also tunes its garbage collector (``choreo.runtime.tune_gc``: a tracker holds many
        long-lived states and allocates about fifty objects per event; with CPython's
        default threshold the collector took 12% of its CPU, 0.3 s full scans at 20k
        sagas, measured with ``benchmarks/tracker_fold.py``)."""
        if not self.partitions:
            raise ConfigurationError("call prepare() before build_app()")
        tune_gc()
        app = faust.App(
            self.app_id,
            broker=[f"kafka://{server}" for server in self.transport.bootstrap_servers],
            loop=loop,
            datadir=str(self.data_dir),
            store=store_url(self.store_kind),  # the changelog topic is the durable copy
            processing_guarantee="at_least_once",
            producer_acks=-1,
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=self.commit_interval,
            broker_session_timeout=6.0,  # a SIGKILLed worker leaves the group quickly
            broker_heartbeat_interval=1.0,
            topic_partitions=self.partitions,
            topic_replication_factor=self.replication_factor,
            table_standby_replicas=self.standby_replicas,
            web_enabled=False,  # the state API is ours (choreo.tracker.api)
            autodiscover=False,
            worker_redirect_stdouts=False,
            broker_credentials=faust_credentials(self.security),
            # What faust's assignor tells the other workers about this one (workers()).
            canonical_url=self.url,  # None: faust's default (its web host and port)
        )
        faust_fetch.install(app)  # a record the Kafka client cannot read is dead-lettered
        self._table = app.Table(
            TABLE_NAME,
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=self.partitions,
            help="saga states by gid (packed) and their timelines",
            options=self.rocksdb.options() if self.store_kind == "rocksdb" else None,
        )
        self._store = TableStore(self._table.data, self.store_kind, self.partitions,
                                 lambda: {tp.partition for tp in self.owned()})  # fmt: skip
        self.states.use_store(self._store)  # the states are read from it, not copied
        self._store.install_recovery()  # RocksDB: recovery keeps the indexes too
        if self.store_kind == "rocksdb":
            self._sweep = RetentionSweep(self._store, self.states, self.core,
                                         self.transport.send_many,
                                         lambda: {tp.partition for tp in self.owned()})  # fmt: skip
        topic = app.topic(*self.core.topics(), key_serializer="raw", value_serializer="raw")

        async def fold(stream: Any) -> None:
            # Batches of what arrived together; manual acks: an event is acked only once
            # its outputs and its new state are durable, and never when the agent is
            # cancelled half-way through its batch. (Table writes go through
            # ``send_changelog`` with the source partition, so they need no current event,
            # which faust does not have inside ``noack_take``.)
            async for events in stream.noack_take(self.batch_size, within=self.batch_within):
                for event in await self.handle_delivered(events):
                    await stream.ack(event)

        app.agent(topic, name=f"{self.app_id}.fold")(fold)
        app.timer(self.tick, name=f"{self.app_id}.deadlines")(self._on_tick)
        app.task(self._watch_stop)
        app.on_partitions_assigned.connect(self._on_assignment)
        app.on_partitions_revoked.connect(self._on_assignment)
        app.on_before_shutdown.connect(self._on_shutdown)
        self._app = app
        return app

    # -- stream processing -------------------------------------------------------------
    async def handle(self, event: Any) -> None:
        await self.handle_batch([event])

    async def handle_delivered(self, events: Sequence[Any]) -> list[Any]:
        """Fold what ``ReadPosition.judge`` says is next; returns the events to ack: those
        folded, now durable, and those folded before. If this raises, nothing is acked
        and the batch's progress is forgotten: its records are read again."""
        folding, done = await self.position.judge(events)
        try:
            await self.handle_batch(folding)
        except BaseException:
            self.folded.abandon()
            raise
        self.folded.commit()
        self.pipeline.metrics.read_gaps = self.folded.gaps
        self.pipeline.metrics.log_gaps = self.folded.accepted_gaps
        return done

    async def handle_batch(self, events: Sequence[Any]) -> None:
        """Fold records (``TrackerPipeline.handle_batch``), each with its timestamp as
        ``now``; returns once their outputs and states are durable. When the worker stops
        first, the agent is cancelled without acking them, so they are read again."""
        items = []
        for event in events:
            record = to_record(event.message)
            now = record.timestamp_ms / 1000 if record.timestamp_ms > 0 else time.time()
            items.append((record, now))
        letters, folding = faust_fetch.set_aside(items, self.pipeline.dlq_topic)
        try:
            await self.pipeline.publish(letters)  # placeholders of unreadable records
            await self.pipeline.handle_batch(folding)
        except Stopping as exc:
            raise asyncio.CancelledError(str(exc)) from None
        for record, _now in items:
            self._read[record.tp] = record.offset + 1

    @property
    def store(self) -> TableStore:
        if self._store is None:
            raise ConfigurationError("call build_app() first")
        return self._store

    async def check_local_state(self) -> list[int]:
        """Before the worker starts: remove RocksDB partition databases that are not behind
        their changelog (``faust_store.remove_stale``); returns their partitions."""
        if self.store_kind != "rocksdb":
            return []
        store = self._table.data
        topic = self._table.changelog_topic.get_topic_name()
        tps = [TopicPartition(topic, p) for p in range(self.partitions)]
        exists = await self.transport.partitions_for(topic) > 0
        ends = await self.transport.end_offsets(tps) if exists else {}
        return remove_stale(
            {p: Path(store.partition_path(p)) for p in range(self.partitions)},
            {tp.partition: end for tp, end in ends.items()},
        )

    def _load(self, gid: str) -> SagaState | None:
        raw = self.store.get(state_key(gid))
        return None if raw is None else unpack_state(raw)

    async def _save(
        self, changed: Sequence[tuple[SagaState, Record]], removed: Sequence[tuple[str, Record]]
    ) -> None:
        """The table's ``__setitem__`` and ``__delitem__``, done as faust does them but in
        bulk: each changelog record (key and value raw, as faust writes them; a removed
        saga's value None, a tombstone that compaction and recovery apply) goes to its
        source record's partition with choreo's idempotent acks=all producer, all of them
        are awaited together, and only then do they reach the local store, with the
        offsets the store persists (so a store on disk is never ahead of the changelog)."""
        topic = self._table.changelog_topic.get_topic_name()
        writes = list(self.pipeline.writes(changed, removed))
        # After the states, in their partitions: a marker implies the states before it.
        writes += [
            (partition, marker_key(partition), encode_marker(self.folded.marker(partition)))
            for partition in sorted(self.folded.changed_partitions())
        ]
        if not writes:
            return
        offsets: dict[int, int] = {}

        async def send() -> None:
            futures = []
            with faust_errors(f"changelog write of {len(writes)} states"):
                try:
                    for partition, key, value in writes:
                        futures.append(
                            await self._changelog.send(topic, value, key=key, partition=partition)
                        )
                except Exception:  # let what was enqueued finish before retrying
                    await asyncio.gather(*futures, return_exceptions=True)
                    raise
                results = await asyncio.gather(*futures, return_exceptions=True)
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
                    offsets[result.partition] = max(
                        result.offset, offsets.get(result.partition, -1)
                    )

        await self.pipeline.retry(send, f"the changelog write of {len(writes)} states")
        self.states.replacing(writes)  # the states these replace leave the counts
        self.store.write(topic, writes, offsets)
        if self._built is not None:
            if set(offsets) <= set(self._built):
                self._built.update(offsets)
            else:  # a partition not owned at the last rebuild: rebuild at the next one
                self._built = None

    async def _watch_stop(self, *_: Any) -> None:
        """Tell the pipeline's retries when the worker stops (they give the record up)."""
        stopping = self.pipeline.stopping = asyncio.Event()
        await self._app.wait_until_stopped()
        stopping.set()

    # -- deadlines -----------------------------------------------------------------------
    async def _on_assignment(self, *_: Any, **__: Any) -> None:
        """A rebalance: rebuild the counts and the deadline index once the table's
        recovery is over (the states are read from the store meanwhile). The counts are
        not zeroed until then: faust's start makes two assignments, and the state API
        answered zero sagas for a second time at each start (1.7 s at 100k sagas)."""
        self._stale = True
        self._read.clear()
        self.folded.clear()
        if self._sweep is not None:
            self._sweep.reset()

    def owned(self) -> list[TopicPartition]:
        """The saga and system topic partitions assigned to this worker."""
        topics = self.core.topics()
        return sorted(
            TopicPartition(str(tp.topic), int(tp.partition))
            for tp in self._app.consumer.assignment()
            if tp.topic in topics
        )

    def rebuild(self) -> None:
        """Rebuild the deadline index (and, with the memory store, the counts) from the
        local table of the partitions this worker owns. With RocksDB it reads each
        partition's index of the sagas with a deadline (``faust_index``; a database an
        earlier version wrote is indexed first, once), never the states: a restart's cost
        grows with the sagas in flight, not with the settled ones kept for their
        retention, and the counts are read from the databases when asked."""
        owned = {tp.partition for tp in self.owned()}
        began = time.process_time()
        retention = self.pipeline.retention
        entries = []
        if self.store_kind == "rocksdb":
            for gid, version, deadline, settled in self.store.due(owned):
                due = deadline
                if retention is not None and settled is not None:
                    due = min(due, settled + retention)
                entries.append((due, gid, version))
        else:
            entries = self._scan(owned, retention)
        self.pipeline.deadlines.load(entries)
        self._built = self._applied(owned)
        if self._sweep is not None:
            self._sweep.reset()
        log.info("tracker owns partitions %s: %d sagas, %d with a deadline (read in %.2f "
                 "CPU-s)", sorted(owned), len(self.states), len(self.pipeline.deadlines),
                 time.process_time() - began)  # fmt: skip

    def _scan(self, owned: set[int], retention: float | None) -> list[tuple[float, str, int]]:
        """The memory store's rebuild: every state's head read (not built), the counts
        and each saga's wake-up (``TrackerPipeline.wake_at``) taken from it. The memory
        store keeps keys it wrote even after their partition moved to another worker:
        those are dropped."""
        self.store.drop_unowned(owned)
        self.states.clear()  # in place: the state API's view holds this table
        entries = []
        counts: Counter[tuple[str, SagaStatus, bool]] = Counter()
        head = head_reader()
        for key, raw in self.store.states(owned):
            try:
                found = head(raw)
            except ValueError as exc:
                log.error("saga state of %r is unreadable, skipped: %s", key, exc)
                continue
            counts[found.saga, found.status, found.stuck_unresolved] += 1
            due = found.next_deadline
            if retention is not None and found.settled_at is not None:
                expiry = found.settled_at + retention
                due = expiry if due is None else min(due, expiry)
            if due is not None:
                entries.append((due, key.decode(), found.version))
        self.states.counted({(saga, st.value, stuck): n for (saga, st, stuck), n
                             in counts.items()})  # fmt: skip
        return entries

    def _timer_due(self, state: SagaState) -> float | None:
        """With RocksDB, when the deadline index must wake ``state``: its next deadline,
        or the end of its retention if that comes first; a settled saga with no deadline
        is left to the retention sweep (``faust_sweep``)."""
        due = state.next_deadline()
        if due is None:
            return None
        settled = state.settled_at()
        if self.pipeline.retention is None or settled is None:
            return due
        return min(due, settled + self.pipeline.retention)

    def _applied(self, owned: set[int]) -> dict[int, int] | None:
        found = {partition: self.store.applied(partition) for partition in owned}
        if any(offset is None for offset in found.values()):
            return None
        return {partition: offset for partition, offset in found.items() if offset is not None}

    def _rebuild_needed(self) -> bool:
        """After a rebalance: False when this worker owns the same partitions as at its
        last rebuild and their stores have applied nothing since but its own writes (the
        counts and the index followed those); faust's start makes two assignments, and
        at 1M sagas a rebuild takes seconds."""
        owned = {tp.partition for tp in self.owned()}
        if self._built is None or set(self._built) != owned:
            return True
        return self._applied(owned) != self._built

    async def _measure_backlog(self) -> None:
        """After a rebalance: put each owned partition where its folded marker says
        (``ReadPosition.realign``) and note what the agent has to read before deadlines
        may fire: each owned partition's records past its marker, as they stand now."""
        tps = self.owned()
        ends = await self.transport.end_offsets(tps)
        committed = await self.transport.group_offsets(self.app_id)
        folded = await self.position.realign(tps, committed)
        self.pipeline.metrics.read_gaps = self.folded.gaps
        self._backlog = {tp: end for tp, end in ends.items() if folded.get(tp, 0) < end}
        self._backlog_until = time.monotonic() + _BACKLOG_WAIT

    def caught_up(self) -> bool:
        self._backlog = {
            tp: end for tp, end in self._backlog.items() if self._read.get(tp, 0) < end
        }
        if self._backlog and time.monotonic() > self._backlog_until:
            # A partition ending in records the agent never sees (transaction markers).
            log.warning("firing deadlines before reaching the end of %s",
                        ", ".join(map(str, self._backlog)))  # fmt: skip
            self._backlog = {}
        return not self._backlog

    async def _on_tick(self, *_: Any) -> None:
        app = self._app
        if app.rebalancing or getattr(app, "in_recovery", False):
            return
        if self._stale:
            self._stale = False
            if self._rebuild_needed():
                self.rebuild()
            else:
                log.info("tracker owns partitions %s as before, their stores unchanged but "
                         "for its own writes: counts and deadlines kept",
                         sorted(self._built or ()))  # fmt: skip
            try:
                await self._measure_backlog()
            except TransportError as exc:
                log.warning("cannot read the tracker's offsets, will retry: %s", exc)
                self._stale = True
                return
        if not self.caught_up():
            return
        now = time.time() - _TIMESTAMP_SLACK
        await self.pipeline.send_due(now)
        if self._sweep is not None and self.pipeline.retention is not None:
            await self._sweep(now, self.pipeline.retention)

    # -- the state API and shutdown ------------------------------------------------------
    def view(self) -> StatesView:
        return StatesView(self.states, self.pipeline.metrics)

    def workers(self) -> FaustWorkers:
        """Who owns which saga among the workers of this app id (faust's assignment),
        for the state API to route requests (``choreo.tracker.routing``)."""
        return FaustWorkers(
            self._app, TABLE_NAME, self.partitions, lambda: {tp.partition for tp in self.owned()}
        )

    async def _on_shutdown(self, *_: Any, **__: Any) -> None:
        producer, self._changelog = self._changelog, None
        if producer is not None:
            await quietly(producer.stop())
        with contextlib.suppress(Exception):
            await self.transport.stop()
