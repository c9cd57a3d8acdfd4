"""What happens to one record: decode, route, barrier, call, record, publish.

The dispatcher never loses a record: a poison record or a handler that cannot succeed
is dead-lettered (the send is acknowledged before the caller commits), business
failures become failure events, and only infrastructure trouble (the store or the
broker not answering) escapes as ``TransportError`` for the worker to retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from choreo import codec
from choreo.context import Context
from choreo.deadletter import DeadLetter, dead_letter_record
from choreo.errors import BusinessFailure, PoisonEvent, UnknownEventType, is_retriable
from choreo.events import (
    Envelope,
    Event,
    EventRegistry,
    Message,
    Outcome,
    child_traceparent,
    derived_event_id,
)
from choreo.handlers import Handler
from choreo.middleware import Middleware
from choreo.store.base import BarrierKey, BarrierResult, Decision, Effect, Status, Store
from choreo.system_events import CompensationSkipped, StepFailed
from choreo.transport.base import OutgoingRecord, Record, Transport

log = logging.getLogger("choreo.dispatch")


@dataclass(frozen=True, slots=True)
class Ran:
    """A handler's result, before it is recorded."""

    status: Status
    events: list[Event]
    effects: list[Effect]


def as_events(result: Any) -> list[Event]:
    if result is None:
        return []
    if isinstance(result, Event):
        return [result]
    if isinstance(result, list | tuple) and all(isinstance(e, Event) for e in result):
        return list(result)
    raise TypeError(
        f"a handler returned {type(result).__name__}; return an Event, a list of Events or None"
    )


def pack(records: Sequence[OutgoingRecord]) -> bytes:
    """Outgoing records as stored in a barrier record (the step's outbox)."""
    return codec.dumps(
        [
            {
                "t": r.topic,
                "k": (r.key or b"").decode(),
                "v": r.value.decode(),
                "h": [[k, v.decode()] for k, v in r.headers],
            }
            for r in records
        ]
    )


def unpack(blob: bytes) -> list[OutgoingRecord]:
    if not blob:
        return []
    return [
        OutgoingRecord(
            topic=item["t"],
            key=item["k"].encode(),
            value=item["v"].encode(),
            headers=tuple((k, v.encode()) for k, v in item["h"]),
        )
        for item in codec.loads(blob)
    ]


class Dispatcher:
    def __init__(
        self,
        *,
        service: str,
        routes: Mapping[str, Sequence[Handler]],
        registry: EventRegistry,
        store: Store,
        transport: Transport,
        dlq_topic: str,
        limits: codec.Limits,
        middleware: Sequence[Middleware] = (),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.service = service
        self.routes = routes
        self.registry = registry
        self.store = store
        self.transport = transport
        self.dlq_topic = dlq_topic
        self.limits = limits
        self.middleware = tuple(middleware)
        self.sleep = sleep

    async def handle(self, record: Record) -> None:
        try:
            envelope = codec.decode_envelope(record)
        except PoisonEvent as exc:
            await self.dead_letter(record, DeadLetter("poison", exc.reason, self.service))
            return
        handlers = self.routes.get(envelope.event_type, ())
        if not handlers:
            if envelope.event_type not in self.registry:
                reason = UnknownEventType(f"unknown event type {envelope.event_type!r}").reason
                await self.dead_letter(record, DeadLetter("poison", reason, self.service))
            return  # another service's event on a shared topic
        try:
            message = codec.decode(record, self.registry, self.limits, envelope)
        except PoisonEvent as exc:
            names = ",".join(h.name for h in handlers)
            await self.dead_letter(record, DeadLetter("poison", exc.reason, self.service, names))
            return
        for handler in handlers:
            await self._run(handler, message, record)

    async def dead_letter(self, record: Record, letter: DeadLetter) -> None:
        log.warning(
            "dead-lettering %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            letter.reason,
        )
        await self.transport.send(dead_letter_record(record, letter, self.dlq_topic))
        for mw in self.middleware:
            await mw.on_dead_letter(record, letter)

    async def _run(self, handler: Handler, message: Message, record: Record) -> None:
        step = handler.step or f"{self.service}.{handler.name}"
        key = BarrierKey(message.gid, step, handler.op)
        null_blob = b""
        if handler.op == "compensate":
            skipped = CompensationSkipped(
                step=step, reason="null compensation: the action never ran"
            )
            null_blob = pack(self._outgoing(message, handler, step, "skipped", [skipped]))
        result = await self.store.check(key)
        if result.decision is Decision.NULL_COMPENSATION:
            result = await self.store.commit(
                key,
                status="done",
                outputs=null_blob,
                effects=(),
                null_outputs=null_blob,
                handler_ran=False,
            )
        if result.decision is Decision.RUN:
            ran = await self._invoke(handler, message, step)
            if isinstance(ran, DeadLetter):
                await self.dead_letter(record, ran)
                return
            committed = await self._commit(handler, message, step, key, ran, null_blob)
            if isinstance(committed, DeadLetter):
                await self.dead_letter(record, committed)
                return
            result = committed
        if result.decision is Decision.HANGING:
            log.info("%s: %s arrived after its compensation; not run", key, handler.name)
        await self.transport.send_many(unpack(result.outputs))
        for mw in self.middleware:
            await mw.after_handle(message, handler, result.decision)

    async def _commit(
        self,
        handler: Handler,
        message: Message,
        step: str,
        key: BarrierKey,
        ran: Ran,
        null_blob: bytes,
    ) -> BarrierResult | DeadLetter:
        outcome: Outcome = "done" if ran.status == "done" else "failed"
        blob = pack(self._outgoing(message, handler, step, outcome, ran.events))
        result = await self.store.commit(
            key,
            status=ran.status,
            outputs=blob,
            effects=ran.effects,
            null_outputs=null_blob,
            handler_ran=True,
        )
        if result.decision is not Decision.REJECTED:
            return result
        if handler.op == "compensate":
            return DeadLetter(
                "failed", f"compensation refused: {result.detail}", self.service, handler.name, 1
            )
        failed = [StepFailed(step=step, reason=result.detail)]
        blob = pack(self._outgoing(message, handler, step, "failed", failed))
        return await self.store.commit(
            key,
            status="failed",
            outputs=blob,
            effects=(),
            null_outputs=null_blob,
            handler_ran=True,
        )

    async def _invoke(self, handler: Handler, message: Message, step: str) -> Ran | DeadLetter:
        policy = handler.retry
        for attempt in range(1, policy.max_attempts + 1):
            envelope = message.envelope.evolve(attempt=attempt)
            ctx = Context(envelope, step, self.store, _logger(self.service, envelope, step))
            try:
                for mw in self.middleware:
                    await mw.before_handle(message, handler)
                if handler.wants_context:
                    result = await handler.func(message.event, ctx)
                else:
                    result = await handler.func(message.event)
                return Ran("done", as_events(result) + ctx.outbox, list(ctx.tx.effects))
            except BusinessFailure as exc:
                failure = self._failure(handler, step, attempt, exc.reason, exc.event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if handler.throws and isinstance(exc, handler.throws):
                    failure = self._failure(handler, step, attempt, reason, None)
                elif not is_retriable(exc):
                    return DeadLetter("failed", reason, self.service, handler.name, attempt)
                elif attempt == policy.max_attempts:
                    return DeadLetter(
                        "budget",
                        f"retry budget of {attempt} attempts spent; last error: {reason}",
                        self.service,
                        handler.name,
                        attempt,
                    )
                else:
                    log.info("%s attempt %d failed (%s); retrying", handler.name, attempt, reason)
                    await self.sleep(policy.delay(attempt))
                    continue
            return failure
        raise AssertionError("unreachable: the loop returns on its last attempt")

    def _failure(
        self, handler: Handler, step: str, attempt: int, reason: str, event: Event | None
    ) -> Ran | DeadLetter:
        if handler.op == "compensate":
            # A compensation has no business way to fail; an operator must look.
            return DeadLetter(
                "failed", f"compensation failed: {reason}", self.service, handler.name, attempt
            )
        return Ran("failed", [event or StepFailed(step=step, reason=reason)], [])

    def _outgoing(
        self,
        message: Message,
        handler: Handler,
        step: str,
        outcome: Outcome,
        events: Sequence[Event],
    ) -> list[OutgoingRecord]:
        incoming = message.envelope
        records = []
        for index, event in enumerate(events):
            envelope = Envelope(
                event_type=event.event_type,
                gid=incoming.gid,
                event_id=derived_event_id(
                    incoming.event_id, self.service, step, handler.op, str(index)
                ),
                saga=incoming.saga,
                step=step,
                op=handler.op,
                outcome=outcome,
                causation_id=incoming.event_id,
                schema_version=event.schema_version,
                traceparent=child_traceparent(incoming.traceparent),
                source=self.service,
            )
            records.append(codec.encode(Message(envelope, event, event.topic)))
        return records


def _logger(service: str, envelope: Envelope, step: str) -> logging.LoggerAdapter[logging.Logger]:
    extra = {"gid": envelope.gid, "step": step, "event_id": envelope.event_id}
    return logging.LoggerAdapter(logging.getLogger(f"choreo.service.{service}"), extra)
