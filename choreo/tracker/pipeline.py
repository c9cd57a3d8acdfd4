"""The tracker's pipeline, written once for every shell.

A record goes: decode (an event type no contract knows is skipped, poison is
dead-lettered) -> load the saga's state -> fold it (``TrackerCore``) -> publish the fold's
records, retrying until they are acknowledged -> save the new state -> track its
deadlines -> count the transition's actions in the metrics. The deadline timer's step is
here too: pop the due sagas, send their ``DeadlineCheck`` records, track them again when
the send fails.

The shells supply only I/O: how a record's outputs are sent, how a state is loaded and
saved, the clock, and an event set when the process stops (a retry then gives the record
up unacknowledged; it is read again after the restart).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from choreo import codec
from choreo.deadletter import DLQ_TOPIC, DeadLetter, dead_letter_record
from choreo.errors import PoisonEvent, TransportError, UnknownEventType
from choreo.events import Message
from choreo.retry import INFRASTRUCTURE_RETRY, Backoff
from choreo.saga.packing import pack_entries, pack_state
from choreo.saga.state import SagaState
from choreo.saga.transition import Publish
from choreo.system_events import DeadlineCheck
from choreo.tracker.core import TRACKER_SOURCE, DeadlineIndex, TrackerCore
from choreo.tracker.states import Read, SagaTable, Write, saga_writes
from choreo.tracker.tracing import TrackerTracing
from choreo.tracker.view import TrackerMetrics
from choreo.transport.base import OutgoingRecord, Record

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

log = logging.getLogger("choreo.tracker")

Send = Callable[[Sequence[OutgoingRecord]], Awaitable[object]]
Load = Callable[[str], SagaState | None]
Save = Callable[[Sequence[tuple[SagaState, Record]], Sequence[tuple[str, Record]]], Awaitable[None]]
"""Make new states durable, each with the record whose fold produced it (its partition is
the changelog record's), and remove expired sagas (gid, the record that expired it).
Called for every batch, even one that changed nothing; the store records to write are
``TrackerPipeline.writes(changed, removed)``."""

# A saga's packed state, and the timeline lines one write of it adds, are each kept under
# this: the faust tracker's changelog takes records up to the broker's 1 MiB message size
# (``message.max.bytes``), with the record's framing and the batch's other records beside
# it. An event whose fold would go past it is dead-lettered, the state left as it was.
MAX_STATE_BYTES = 512 * 1024


@dataclass
class _Batch:
    """What folding a batch produced, before anything of it is durable."""

    out: list[OutgoingRecord] = field(default_factory=list)
    states: dict[str, SagaState] = field(default_factory=dict)  # the batch's view of states
    changed: dict[str, tuple[SagaState, Record]] = field(default_factory=dict)
    removed: dict[str, Record] = field(default_factory=dict)  # expired (retention)
    packed: dict[str, bytes] = field(default_factory=dict)  # changed states, packed
    lines: dict[str, bytes] = field(default_factory=dict)  # their new timeline lines, packed
    versions: dict[str, int] = field(default_factory=dict)  # each saga's before the batch
    observed: list[tuple[SagaState | None, SagaState, Sequence[Publish]]] = field(
        default_factory=list
    )
    spans: list[Span] = field(default_factory=list)  # with tracing on: open publish spans


class Stopping(Exception):
    """The process stops while a record's work is unfinished: the record is given up
    without being acknowledged, so it is read again after the restart."""


class TrackerPipeline:
    """Folds records into ``states`` and sends what the folds and deadlines ask for.

    ``send`` makes one attempt to send records and raises ``TransportError`` when the
    broker does not answer. ``load`` reads a saga's state (``ValueError``: unreadable);
    by default it is ``states``, the parsed states. ``save`` makes a new state durable
    once it is in ``states`` (by default there is nothing more to do). ``clock`` is the
    time the metrics see outputs acknowledged at. ``tracer_provider``: where the
    decisions' spans go (``choreo.tracker.tracing``; default: the global provider, looked
    up now; without an SDK no span is made).
    """

    def __init__(
        self,
        core: TrackerCore,
        *,
        send: Send,
        clock: Callable[[], float],
        load: Load | None = None,
        save: Save | None = None,
        dlq_topic: str = DLQ_TOPIC,
        limits: codec.Limits | None = None,
        retention: float | None = None,
        read: Read | None = None,
        max_state_bytes: int = MAX_STATE_BYTES,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """``retention``: seconds a settled saga (``SagaState.settled_at``) stays; then
        the timer's ``DeadlineCheck`` removes it (None: kept for ever). ``read``: where
        the shell's store keeps timeline records (None: ``states`` keeps them)."""
        self.core = core
        self.retention = retention
        self.max_state_bytes = max_state_bytes
        self.states = SagaTable(read)
        self.deadlines = DeadlineIndex(self.wake_at)
        self.metrics = TrackerMetrics()
        self.tracing = TrackerTracing(tracer_provider)
        self.processed = 0
        self.stopping: asyncio.Event | None = None  # set by the shell while it runs
        self.clock = clock
        self.dlq_topic = dlq_topic
        self.limits = limits or codec.Limits()
        self._send = send
        self._load = load or self.states.hot
        self._save = save
        self._batch: _Batch | None = None
        self._writes: list[Write] | None = None  # of the batch being saved

    async def handle(self, record: Record, now: float) -> None:
        """Fold one record at time ``now`` (see ``handle_batch``)."""
        await self.handle_batch([(record, now)])

    async def handle_batch(self, items: Sequence[tuple[Record, float]]) -> None:
        """Fold records in order, each at its own time; returns once the outputs of all
        of them are acknowledged and then their new states saved, so one round trip
        to the broker (and one changelog write per saga) serves the whole batch.

        Outputs go first: a state saved before its outputs were durable would, after a
        crash, make the redelivered record look already seen and its outputs would be
        lost. Raises only ``Stopping`` (nothing of the batch then reaches ``states``);
        a poison record, an unreadable state or a failing fold is dead-lettered with its
        reason and the batch goes on."""
        batch = self._batch = _Batch()
        self._writes = None
        for record, now in items:
            self.processed += 1
            try:
                self._fold(batch, record, now)
            except Exception as exc:  # a bug must not stop every other saga
                log.exception("tracker cannot handle %s[%d]@%d", record.topic,
                              record.partition, record.offset)  # fmt: skip
                batch.out.append(
                    self._dead_letter(record, "failed", f"{type(exc).__name__}: {exc}")
                )
        try:
            await self.publish(batch.out)
        except BaseException as exc:
            self.tracing.sent(batch.spans, f"not sent: {exc!r}")  # none without tracing
            raise
        self.tracing.sent(batch.spans)
        sent_at = self.clock()
        changed, removed = list(batch.changed.values()), list(batch.removed.items())
        if self._save is not None and items:  # even unchanged: the shell may note progress
            await self._save(changed, removed)
        self.states.apply(self.writes(changed, removed), hot=False)
        for gid, (state, _record) in batch.changed.items():
            # The state's own gid object: the deadline index keys by it too, one string.
            self.states.put(state.gid, batch.packed[gid], state)
        self._batch = self._writes = None
        for gid in batch.removed:
            self.deadlines.forget(gid)
        self.metrics.expired += len(batch.removed)
        for state in batch.states.values():
            self.deadlines.track(state)
        for before, after, actions in batch.observed:
            self.metrics.observe(before, after, actions, sent_at)

    def writes(
        self, changed: Sequence[tuple[SagaState, Record]], removed: Sequence[tuple[str, Record]]
    ) -> list[Write]:
        """The store records of the batch being saved (``states.saga_writes``): each changed
        saga's packed state and new timeline lines in its source record's partition,
        tombstones of removed sagas."""
        if self._writes is None:
            batch = self._batch or _Batch()
            self._writes = saga_writes(
                [
                    (record.partition, state, batch.packed.get(state.gid) or pack_state(state),
                     batch.versions.get(state.gid, state.version - 1))
                    for state, record in changed
                ],
                [
                    (record.partition, gid, batch.versions.get(gid, 0))
                    for gid, record in removed
                ],
                batch.lines,
            )  # fmt: skip
        return self._writes

    def _fold(self, batch: _Batch, record: Record, now: float) -> None:
        try:
            message = codec.decode(record, self.core.registry, self.limits)
        except UnknownEventType:
            return  # another app's event on a shared topic; its own consumers judge it
        except PoisonEvent as exc:
            batch.out.append(self._dead_letter(record, "poison", exc.reason))
            return
        gid = message.gid
        try:
            if gid in batch.removed:
                before = None
            elif gid in batch.states:
                before = batch.states[gid]
            else:
                before = self._load(gid)
                batch.versions[gid] = 0 if before is None else before.version
        except ValueError as exc:
            batch.out.append(self._dead_letter(record, "failed", f"stored state unreadable: {exc}"))
            return
        if self._retained(batch, before, message, record, now):
            return
        started = self.tracing.now() if self.tracing.enabled else 0
        transition = self.core.transition(before, message, now)
        if transition is None:
            return  # no contract of this tracker knows it
        after = transition.state
        if after is not before:
            packed = pack_state(after)
            # The timeline lines this batch adds to the saga form one record.
            lines = pack_entries(after.timeline)
            if max(len(packed), len(lines)) > self.max_state_bytes:
                what = f"{len(packed)} bytes packed, timeline lines {len(lines)} bytes"
                batch.out.append(self._dead_letter(record, "failed",
                    f"the saga's new state is too large to store ({what}; the limit is "
                    f"{self.max_state_bytes}): not applied"))  # fmt: skip
                return
            batch.packed[gid], batch.lines[gid] = packed, lines
            batch.changed[gid] = (after, record)  # the saga's last version is what is saved
        if self.tracing.enabled:
            traces, spans = self.tracing.decide(record, message, before, transition, started)
            batch.spans += spans
            batch.out += self.core.records(transition, message.envelope, traces)
        else:
            batch.out += self.core.records(transition, cause=message.envelope)
        batch.states[gid] = after
        batch.observed.append((before, after, transition.actions))

    def wake_at(self, state: SagaState) -> float | None:
        """When the timer must next send a ``DeadlineCheck`` for ``state``: its next
        deadline, or the end of its retention once it is settled."""
        due = state.next_deadline()
        settled = state.settled_at()
        if self.retention is None or settled is None:
            return due
        expiry = settled + self.retention
        return expiry if due is None else min(due, expiry)

    def _retained(
        self,
        batch: _Batch,
        before: SagaState | None,
        message: Message,
        record: Record,
        now: float,
    ) -> bool:
        """A ``DeadlineCheck`` of a settled saga is retention's: past it, the saga is
        removed (a tombstone in the changelog), before it, nothing happens (the machine
        would only stamp the state and push its retention out). True when handled. A
        settled saga with a deadline due (the retry of a compensation it still owes: a
        late success of a compensated saga's step) is the machine's, which retries it
        (invariant 4); its retention goes on from that change."""
        if self.retention is None or before is None:
            return False
        if not isinstance(message.event, DeadlineCheck):
            return False
        settled = before.settled_at()
        if settled is None:
            return False
        due = before.next_deadline()
        if due is not None and due <= now:
            return False
        if now >= settled + self.retention:
            batch.states.pop(before.gid, None)
            batch.changed.pop(before.gid, None)
            batch.packed.pop(before.gid, None)
            batch.lines.pop(before.gid, None)
            batch.removed[before.gid] = record
            batch.versions[before.gid] = before.version
        return True

    def _dead_letter(self, record: Record, kind: str, reason: str) -> OutgoingRecord:
        log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition,
                    record.offset, reason)  # fmt: skip
        return dead_letter_record(record, DeadLetter(kind, reason, TRACKER_SOURCE), self.dlq_topic)

    async def dead_letter(self, record: Record, kind: str, reason: str) -> None:
        await self.publish([self._dead_letter(record, kind, reason)])

    async def publish(self, records: Sequence[OutgoingRecord]) -> None:
        """Send or keep trying: a record must not be acknowledged past unsent outputs."""
        if records:
            await self.retry(lambda: self._send(records), f"publishing {len(records)} records")

    async def retry(self, attempt: Callable[[], Awaitable[object]], what: str) -> None:
        """Run ``attempt`` until it does not raise ``TransportError``, backing off between
        tries; ``Stopping`` when the process stops first."""
        backoff = Backoff(INFRASTRUCTURE_RETRY, self.stopping)
        while True:
            try:
                await attempt()
                return
            except TransportError as exc:
                log.warning("tracker: %s failed, will retry: %s", what, exc)
            if not await backoff.wait():
                raise Stopping(f"stopping before {what} succeeded")

    async def send_due(self, now: float) -> None:
        """Send a ``DeadlineCheck`` for each saga due at ``now``; the state changes when
        the check comes back through the log. Checks that cannot be sent are tracked
        again, so a later tick retries them (a repeat is harmless)."""
        checks = [
            (state, self.core.deadline_check(state))
            for gid, version in self.deadlines.pop_due(now)
            if (state := self.states.hot(gid)) is not None and state.version == version
        ]
        if not checks:
            return
        try:
            await self._send([record for _state, record in checks])
        except TransportError as exc:
            log.warning("cannot send %d deadline checks, will retry: %s", len(checks), exc)
            for state, _record in checks:
                self.deadlines.track(state)
