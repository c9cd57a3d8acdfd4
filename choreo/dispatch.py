"""What happens to the records of one partition: decode, route, barrier, call, record,
publish, in batches that behave exactly as if each record were handled alone.

A batch costs one store round trip to check every barrier, one to commit every result
(more only when a barrier pair repeats inside the batch, or a guard refuses), and one
wait for the acknowledgements of every outgoing record together. On a store whose barrier
lives in the user's database (``TransactionalStore``: PostgreSQL) the handlers run inside
the store's transaction instead, one per chunk of a wave, each job under a savepoint
(claim the barrier row, run the handler with ``ctx.db``, record), so that the handler's
SQL commits with its barrier record and outgoing events (docs/postgres.md). The dispatcher never
loses a record: a poison record or a handler that cannot succeed is dead-lettered (the
dead letter is acknowledged with the batch's other records, before the caller commits),
business failures become failure events, and only infrastructure trouble (the store or
the broker not answering) escapes as ``TransportError``; the caller then runs the batch
again, and the barrier turns what was already recorded into re-publications.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span

from choreo import codec
from choreo.deadletter import H_REPLAY_FOR, DeadLetter, dead_letter_record
from choreo.errors import PoisonEvent, UnknownEventType
from choreo.events import Envelope, Event, EventRegistry, Message, Outcome, derived_event_id
from choreo.invoke import Invoker, Ran
from choreo.middleware import Hooks, Middleware
from choreo.routes import Route, RouteTable
from choreo.store.base import (
    APPLIED,
    DUPLICATE,
    FAILED,
    HANGING,
    INVALID,
    NULL_COMPENSATION,
    RUN,
    BarrierKey,
    BarrierResult,
    Commit,
    Decision,
    Store,
    StoreSession,
    StoreTransaction,
    TransactionalStore,
)
from choreo.system_events import CompensationSkipped, StepFailed, bounded_reason
from choreo.tracing import Tracing
from choreo.transport.base import OutgoingRecord, Record, Transport

log = logging.getLogger("choreo.dispatch")

# Decisions after which a job is settled: nothing more is written for it. A tuple, not a
# set: membership by identity, where a set would call Enum's __hash__ (Python) per record.
_SETTLED = (APPLIED, FAILED, DUPLICATE, HANGING, NULL_COMPENSATION)


# Jobs per SQL transaction on a TransactionalStore, at most (docs/postgres.md).
SQL_JOBS_PER_TRANSACTION = 32


@dataclass(slots=True)
class _Job:
    """One route of one decoded record, on its way through the barrier."""

    record: Record
    message: Message
    route: Route
    key: BarrierKey
    committed: bool = False  # a commit was sent: NULL_COMPENSATION is then final
    ran: Ran | None = None
    pending: list[OutgoingRecord] = field(default_factory=list)  # what the commit stores
    null: list[OutgoingRecord] = field(default_factory=list)
    null_blob: bytes = b""
    decision: Decision | None = None
    out: list[OutgoingRecord] = field(default_factory=list)
    dead: DeadLetter | None = None
    span: Span | None = None  # with tracing on: this job's span (choreo.tracing)


@dataclass(slots=True)
class _Slot:
    """One incoming record: dead on arrival, or the jobs of its routes."""

    record: Record
    dead: DeadLetter | None = None
    jobs: list[_Job] = field(default_factory=list)


def _waves(jobs: Sequence[_Job]) -> Iterator[list[_Job]]:
    """Consecutive runs of jobs whose barrier pairs (gid, step) are distinct: inside a
    wave no job can change another's barrier decision, so one check and one commit
    round serve the wave; a repeated pair starts the next wave, as if delivered later."""
    wave: list[_Job] = []
    seen: set[tuple[str, str]] = set()
    for job in jobs:
        pair = (job.key.gid, job.key.step)
        if pair in seen:
            yield wave
            wave, seen = [], set()
        wave.append(job)
        seen.add(pair)
    if wave:
        yield wave


class Outgoing:
    """A prepared batch's outgoing records (events and dead letters), their record keys,
    and what remains once they are sent: the acknowledgements, then the middleware hooks
    and the spans of the batch's jobs."""

    __slots__ = ("_hooks", "_jobs", "_slots", "_tracing", "_transport", "dead", "keys", "records")

    def __init__(
        self,
        transport: Transport,
        hooks: Hooks,
        tracing: Tracing,
        slots: Sequence[_Slot],
        jobs: Sequence[_Job],
        records: list[OutgoingRecord],
        dead: list[tuple[Record, DeadLetter]],
    ) -> None:
        self._transport = transport
        self._hooks = hooks
        self._tracing = tracing
        self._slots = slots
        self._jobs = jobs
        self.records = records
        self.dead = dead
        # Every record is keyed by its saga's gid: records of two batches with no key in
        # common keep the per-gid order whichever of them is acknowledged first.
        self.keys = {record.key for record in records}

    async def deliver(self) -> None:
        """Send the records and return once the broker acknowledged every one of them."""
        try:
            await self._transport.send_many(self.records)
            if self._hooks:
                await self._after()
        except BaseException as exc:
            self.abandon(exc)
            raise
        if self._tracing.enabled:
            self._finish_spans()

    def abandon(self, exc: BaseException) -> None:
        """The batch will not be delivered (the caller handles it again): end its spans."""
        _abandon_spans(self._tracing, self._jobs, exc)

    async def _after(self) -> None:
        """The middleware hooks, once the batch's records are acknowledged."""
        hooks = self._hooks
        for record, letter in self.dead:
            await hooks.on_dead_letter(record, letter)
        if not hooks.after_each:
            return
        for slot in self._slots:
            for job in slot.jobs:
                if job.decision is not None:
                    await hooks.after_handle(job.message, job.route.handler, job.decision)

    def _finish_spans(self) -> None:
        for job in self._jobs:
            attributes: dict[str, str | int] = {"choreo.outputs": len(job.out)}
            if job.decision is not None:
                attributes["choreo.decision"] = job.decision.value
            if job.dead is not None:
                attributes["choreo.dead_letter"] = job.dead.kind
            self._tracing.finish(job.span, attributes, job.dead.reason if job.dead else "")


def _abandon_spans(tracing: Tracing, jobs: Sequence[_Job], exc: BaseException) -> None:
    """End the spans of jobs whose batch will be handled again."""
    if tracing.enabled:
        for job in jobs:
            tracing.finish(job.span, {}, f"batch not finished: {exc!r}")


class Dispatcher:
    def __init__(
        self,
        *,
        service: str,
        routes: RouteTable,
        registry: EventRegistry,
        store: Store,
        transport: Transport,
        dlq_topic: str,
        limits: codec.Limits,
        middleware: Sequence[Middleware] = (),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tracer_provider: trace.TracerProvider | None = None,
        state: Any = None,
    ) -> None:
        self.service = service
        self.routes = routes
        self.registry = registry
        self.store = store
        self.transport = transport
        self.dlq_topic = dlq_topic
        self.limits = limits
        self.hooks = Hooks(middleware)
        self.invoke = Invoker(service, store, self.hooks, sleep, state)
        self.tracing = Tracing(service, tracer_provider)
        self._service_bytes = service.encode()

    async def handle(self, record: Record) -> None:
        await self.handle_batch([record])

    async def handle_batch(self, records: Sequence[Record]) -> None:
        """Handle records of one partition, in order; returns once everything they
        produced (events and dead letters) is acknowledged by the broker."""
        await (await self.prepare(records)).deliver()

    async def prepare(self, records: Sequence[Record]) -> Outgoing:
        """Handle records of one partition, in order, up to their outgoing records: every
        barrier settled and recorded, nothing sent yet. The caller then ``deliver()``s what
        this returns (it may do so while it prepares the partition's next batch)."""
        slots = [self._plan(record) for record in records]
        jobs = [job for slot in slots for job in slot.jobs]
        if self.tracing.enabled:
            for job in jobs:
                route = job.route
                job.span = self.tracing.start_handle(job.message, route.step, route.op,
                                                     route.handler.name)  # fmt: skip
        try:
            for wave in _waves(jobs):
                await self._settle(wave)
        except BaseException as exc:
            _abandon_spans(self.tracing, jobs, exc)
            raise
        out: list[OutgoingRecord] = []
        dead: list[tuple[Record, DeadLetter]] = []
        for slot in slots:
            if slot.dead is not None:
                dead.append((slot.record, slot.dead))
            for job in slot.jobs:
                if job.dead is not None:
                    dead.append((job.record, job.dead))
                out += job.out
        for record, letter in dead:
            log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition,
                        record.offset, letter.reason)  # fmt: skip
        out += [dead_letter_record(record, letter, self.dlq_topic) for record, letter in dead]
        return Outgoing(self.transport, self.hooks, self.tracing, slots, jobs, out, dead)

    # -- planning ------------------------------------------------------------------------

    def _plan(self, record: Record) -> _Slot:
        slot = _Slot(record)
        # A record as choreo writes it has the envelope's headers and no other, so no
        # replay address: only any other record is searched for one.
        envelope = codec.decode_own_envelope(record, self.limits)
        if envelope is None:
            replay_for = record.header(H_REPLAY_FOR)
            if replay_for is not None and replay_for != self._service_bytes:
                return slot  # a dead letter replayed for another service; handled it before
            try:  # the general path: the common one already said no
                envelope = codec.decode_any_envelope(record, self.limits)
            except PoisonEvent as exc:
                slot.dead = DeadLetter("poison", exc.reason, self.service)
                return slot
        routes = self.routes.get(envelope.event_type)
        if not routes:
            if envelope.event_type not in self.registry:
                reason = UnknownEventType(f"unknown event type {envelope.event_type!r}").reason
                slot.dead = DeadLetter("poison", reason, self.service)
            return slot  # else another service's event on a shared topic
        try:
            message = codec.decode(record, self.registry, self.limits, envelope)
        except PoisonEvent as exc:
            names = ",".join(route.handler.name for route in routes)
            slot.dead = DeadLetter("poison", exc.reason, self.service, names)
            return slot
        slot.jobs = [_Job(record, message, route, route.key(message.gid)) for route in routes]
        return slot

    # -- the barrier ---------------------------------------------------------------------

    async def _settle(self, wave: list[_Job]) -> None:
        """Check, run and commit a wave until every job is settled or dead."""
        if isinstance(self.store, TransactionalStore):
            await self._settle_in_transactions(wave, self.store)
            return
        todo = list(zip(wave, await self.store.check_many([job.key for job in wave]), strict=True))
        while todo:
            commits: list[Commit] = []
            owners: list[_Job] = []
            for job, result in todo:
                commit = await self._next(job, result)
                if commit is not None:
                    job.committed = True
                    commits.append(commit)
                    owners.append(job)
            if not commits:
                return
            todo = list(zip(owners, await self.store.commit_many(commits), strict=True))

    async def _settle_in_transactions(self, wave: list[_Job], store: TransactionalStore) -> None:
        """The wave on a store whose barrier shares the handler's transaction: what the
        check finds recorded is settled at once; the rest is claimed, run and recorded in
        transactions of up to SQL_JOBS_PER_TRANSACTION jobs (one claim statement, the
        handlers, one record statement, one commit each), at most one of them a handler
        that takes a Context (the last)."""
        async with store.session() as session:  # one connection for the wave
            todo: list[_Job] = []
            checks = await session.check_many([job.key for job in wave])
            for job, result in zip(wave, checks, strict=True):
                if result.decision in (DUPLICATE, HANGING):
                    await self._next(job, result)
                else:
                    self._prepare_null(job)
                    todo.append(job)
            chunk: list[_Job] = []
            for job in todo:
                chunk.append(job)
                # A handler that takes a Context may lock the user's rows: it ends its
                # transaction, so no transaction holds two handlers' locks (which could
                # deadlock with another partition's transaction taking them the other way).
                if len(chunk) == SQL_JOBS_PER_TRANSACTION or job.route.handler.wants_context:
                    await self._transaction(session, chunk)
                    chunk = []
            if chunk:
                await self._transaction(session, chunk)

    async def _transaction(self, session: StoreSession, chunk: list[_Job]) -> None:
        """Claim, run and record ``chunk`` in one transaction."""
        finishing: list[tuple[_Job, Commit]] = []
        async with session.transaction() as tx:
            claims = await tx.claim_many([j.key for j in chunk], [j.null_blob for j in chunk])
            drop: list[BarrierKey] = []
            for job, claim in zip(chunk, claims, strict=True):
                job.committed = True  # a claim records a null compensation itself
                if claim.decision is not RUN:
                    await self._next(job, claim)
                    continue
                commit = await self._run_claimed(tx, job)
                if commit is None:
                    drop.append(job.key)
                else:
                    finishing.append((job, commit))
            results = await tx.finish_many([commit for _, commit in finishing], drop)
        for (job, _), result in zip(finishing, results, strict=True):
            await self._next(job, result)

    async def _run_claimed(self, tx: StoreTransaction, job: _Job) -> Commit | None:
        """Run a claimed job's handler and apply its effects: the commit that records it,
        or None when the job is dead (its SQL and effects undone, its claim to drop)."""
        guarded = job.route.handler.wants_context  # only these can write SQL or effects
        if guarded:
            await tx.savepoint()
        ran = await self._invoke(job, tx)
        if isinstance(ran, DeadLetter):
            job.dead = ran
        else:
            job.ran = ran
            commit = self._recorded(job)
            if commit is not None:
                refused = await tx.apply(commit)
                if refused is None:
                    return commit
                if guarded:
                    await tx.rollback()
                # REJECTED: the refusal recorded as a failed step in the handler's place;
                # INVALID (or a compensation's refusal): dead.
                return await self._next(job, refused)
        if guarded:
            await tx.rollback()
        return None

    async def _next(self, job: _Job, result: BarrierResult) -> Commit | None:
        """The commit a job needs after ``result``, or None once it is settled or dead."""
        decision = result.decision
        route = job.route
        if decision is NULL_COMPENSATION and not job.committed:
            self._prepare_null(job)
            return Commit(job.key, "done", job.null_blob, (), job.null_blob, handler_ran=False)
        if decision in _SETTLED:
            job.decision = decision
            if decision is DUPLICATE:
                job.out = codec.unpack_outbox(result.outputs)
            elif decision is NULL_COMPENSATION:
                job.out = job.null
            elif decision is not HANGING:
                job.out = job.pending
            else:
                log.info("%s: %s arrived after its compensation; not run", job.key,
                         route.handler.name)  # fmt: skip
            return None
        if decision is RUN:
            if job.ran is None:
                ran = await self._invoke(job)
                if isinstance(ran, DeadLetter):
                    job.dead = ran
                    return None
                job.ran = ran
            return self._recorded(job)
        name = route.handler.name
        if decision is INVALID:
            job.dead = DeadLetter("failed", f"the store refused the effects: {result.detail}",
                                  self.service, name, 1)  # fmt: skip
            return None
        # REJECTED: a guard refused the effects; nothing was written.
        if route.op == "compensate":
            job.dead = DeadLetter("failed", f"compensation refused: {result.detail}",
                                  self.service, name, 1)  # fmt: skip
            return None
        job.pending, blob = self._outgoing(
            job, "failed", [StepFailed(step=route.step, reason=bounded_reason(result.detail))]
        )
        return Commit(job.key, "failed", blob, (), job.null_blob)

    async def _invoke(self, job: _Job, tx: StoreTransaction | None = None) -> Ran | DeadLetter:
        if job.span is None:
            return await self.invoke(job.route, job.message, tx)
        with trace.use_span(job.span, end_on_exit=False):  # the handler's spans nest
            return await self.invoke(job.route, job.message, tx)

    def _recorded(self, job: _Job) -> Commit | None:
        """The commit of a job whose handler ran, or None when its outputs are refused."""
        assert job.ran is not None
        self._prepare_null(job)
        outcome: Outcome = "done" if job.ran.status == "done" else "failed"
        job.pending, blob = self._outgoing(job, outcome, job.ran.events)
        # The stored outbox holds every record's key, value and header values, at least as
        # many bytes as each has on the wire, all but the envelope's header names: when
        # that bound fits the limit, no record can be over it, and none is weighed.
        bound = len(blob) + len(job.pending) * codec.ENVELOPE_HEADER_NAME_CHARS
        too_big = self._oversized(job.pending) if bound > self.limits.max_record_bytes else ""
        if too_big:
            # Refused before the commit: nothing applied, nothing that could never be
            # published stored in the outbox to block the partition on every replay.
            job.dead = DeadLetter("failed", too_big, self.service, job.route.handler.name, 1)
            return None
        return Commit(job.key, job.ran.status, blob, job.ran.effects, job.null_blob)

    def _oversized(self, records: Sequence[OutgoingRecord]) -> str:
        limit = self.limits.max_record_bytes
        for record in records:
            size = codec.record_bytes(record)
            if size > limit:
                kind = dict(record.headers).get(codec.H_TYPE, b"?").decode(errors="replace")
                return (
                    f"an outgoing {kind[:100]} record would be "
                    f"{size} bytes, over the {limit} byte limit"
                )
        return ""

    def _prepare_null(self, job: _Job) -> None:
        """A compensation's outputs in case its action never ran (null compensation)."""
        if job.route.op != "compensate" or job.null_blob:
            return
        reason = "null compensation: the action never ran"
        job.null, job.null_blob = self._outgoing(
            job, "skipped", [CompensationSkipped(step=job.route.step, reason=reason)]
        )

    def _outgoing(
        self, job: _Job, outcome: Outcome, events: Sequence[Event]
    ) -> tuple[list[OutgoingRecord], bytes]:
        """The records of ``events`` as this job's outputs, and their stored outbox."""
        incoming: Envelope = job.message.envelope
        route = job.route
        return codec.encode_outbox(
            [
                Message(
                    incoming.caused(
                        event,
                        event_id=derived_event_id(
                            incoming.event_id, self.service, route.step, route.op, str(index)
                        ),
                        step=route.step,
                        op=route.op,
                        outcome=outcome,
                        source=self.service,
                        traceparent=self.tracing.traceparent(job.span, incoming.traceparent)
                        if job.span is not None
                        else "",
                    ),
                    event,
                    event.topic,
                )
                for index, event in enumerate(events)
            ]
        )
