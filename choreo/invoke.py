"""Running one handler on one message: its retry budget, business failures, and what
counts as a dead letter. No store and no broker here: the dispatcher records the result."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from choreo.breaker import CircuitOpen
from choreo.context import Context
from choreo.deadletter import DeadLetter
from choreo.errors import BusinessFailure, is_retriable
from choreo.events import Event, Message
from choreo.handlers import Handler
from choreo.middleware import Hooks
from choreo.routes import Route
from choreo.store.base import Effect, Status, Store, StoreTransaction
from choreo.system_events import StepFailed, bounded_reason
from choreo.values import value_type

log = logging.getLogger("choreo.dispatch")


@value_type  # one per handler call: a frozen dataclass's construction costs more
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


def _abandon(handler: Handler) -> None:
    """The call ended without a verdict on the dependency (cancelled, the store failed)."""
    if handler.breaker is not None:
        handler.breaker.abandon()


class Invoker:
    def __init__(
        self,
        service: str,
        store: Store,
        hooks: Hooks,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        state: Any = None,
    ) -> None:
        self.service = service
        self.state = state
        self.store = store
        self.hooks = hooks
        self.sleep = sleep
        self.logger = logging.getLogger(f"choreo.service.{service}")

    async def __call__(
        self, route: Route, message: Message, tx: StoreTransaction | None = None
    ) -> Ran | DeadLetter:
        """Run the handler within its retry budget. With ``tx`` (a store whose barrier
        lives in the user's database) the handler gets ``ctx.db``, and each attempt runs
        in a savepoint: a failed attempt's SQL is rolled back before the next one, and a
        business failure's before its failure is recorded."""
        handler = route.handler
        policy = handler.retry
        for attempt in range(1, policy.max_attempts + 1):
            # A handler without a Context parameter cannot publish or add effects: no
            # Context (and no envelope for it) is built for it, once per record.
            ctx: Context | None = None
            if handler.wants_context:
                envelope = message.envelope
                if envelope.attempt != attempt:
                    envelope = envelope.evolve(attempt=attempt)
                ctx = Context(envelope, route.step, self.store, self.logger, state=self.state)
            if handler.breaker is not None:
                handler.breaker.before_call()  # CircuitOpen: the batch waits, not the DLQ
            try:
                if self.hooks.before_each:
                    await self.hooks.before_handle(message, handler)
                if ctx is None:
                    result = await handler.func(message.event)
                elif tx is not None:
                    ctx.sql = tx.db
                    async with tx.attempt():
                        result = await handler.func(message.event, ctx)
                else:
                    result = await handler.func(message.event, ctx)
                if handler.breaker is not None:
                    handler.breaker.success()
                if ctx is None:
                    return Ran("done", as_events(result), [])
                return Ran("done", as_events(result) + ctx.outbox, ctx.tx.effects)
            except BusinessFailure as exc:
                if tx is not None and tx.broken:
                    _abandon(handler)
                    raise tx.broken from exc
                if handler.breaker is not None:
                    handler.breaker.success()  # the dependency answered, with a refusal
                event = exc.event if isinstance(exc.event, Event) else None
                failure = self._failure(route, attempt, exc.reason, event)
            except asyncio.CancelledError:
                _abandon(handler)
                raise
            except Exception as exc:
                if tx is not None and tx.broken:
                    # The database failed under the handler: the store's trouble, not the
                    # handler's; the batch is retried (see docs/delivery.md, Errors).
                    _abandon(handler)
                    raise tx.broken from exc
                reason = f"{type(exc).__name__}: {exc}"
                answered = (handler.throws and isinstance(exc, handler.throws)) or (
                    not is_retriable(exc)
                )
                if answered and handler.breaker is not None:
                    handler.breaker.success()  # the handler's answer, not an outage
                if handler.throws and isinstance(exc, handler.throws):
                    failure = self._failure(route, attempt, reason, None)
                elif not is_retriable(exc):
                    return DeadLetter("failed", reason, self.service, handler.name, attempt)
                elif handler.breaker is not None and handler.breaker.failure():
                    # The dependency is down, not this record: wait with the partition.
                    raise CircuitOpen(f"{handler.name}: {reason}") from exc
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
        self, route: Route, attempt: int, reason: str, event: Event | None
    ) -> Ran | DeadLetter:
        if route.op == "compensate":
            # A compensation has no business way to fail; an operator must look.
            return DeadLetter(
                "failed",
                f"compensation failed: {reason}",
                self.service,
                route.handler.name,
                attempt,
            )
        return Ran(
            "failed", [event or StepFailed(step=route.step, reason=bounded_reason(reason))], []
        )
