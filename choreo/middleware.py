"""Middleware: hooks around dispatch, no-ops by default (dramatiq's shape).

Subclass and override what you need; metrics, tracing and tests' fault injection live
here instead of in the dispatcher. A hook that raises is logged and skipped: a broken
metrics exporter must not stop a partition. "Before" hooks run in registration order,
the others in reverse, so the first middleware wraps all the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from choreo.deadletter import DeadLetter
    from choreo.events import Message
    from choreo.handlers import Handler
    from choreo.store.base import Decision
    from choreo.transport.base import Record, TopicPartition

log = logging.getLogger("choreo.middleware")


class Middleware:
    async def before_handle(self, message: Message, handler: Handler) -> None:
        """Before each attempt to run a handler."""

    async def after_handle(self, message: Message, handler: Handler, decision: Decision) -> None:
        """After the barrier decided and the outgoing events were acknowledged,
        before the input offset is committed."""

    async def on_dead_letter(self, record: Record, letter: DeadLetter) -> None:
        """After a record was written to the dead-letter topic."""

    async def after_batch(self, tp: TopicPartition, records: int, seconds: float) -> None:
        """After a batch of one partition was handled and everything it produced was
        acknowledged (``seconds`` from taking the batch to the last acknowledgement)."""

    async def after_commit(self, offsets: dict[TopicPartition, int]) -> None:
        """After input offsets were committed."""


async def _isolated(hook: str, middleware: Middleware, call: Awaitable[None]) -> None:
    try:
        await call
    except Exception:
        log.exception("middleware %s.%s failed; carrying on", type(middleware).__name__, hook)


class Hooks:
    """Calls every middleware's hook, each isolated from the others' failures. A hook is
    called only on the middleware that override it, and the per-record ones
    (``before_handle``, ``after_handle``) cost nothing when none does: the dispatcher asks
    ``before_each`` and ``after_each`` first."""

    def __init__(self, middleware: Sequence[Middleware] = ()) -> None:
        self.forward = tuple(middleware)
        self.backward = tuple(reversed(self.forward))
        self._before = _overriding(self.forward, "before_handle")
        self._after = _overriding(self.backward, "after_handle")
        self._dead = _overriding(self.backward, "on_dead_letter")
        self._batch = _overriding(self.backward, "after_batch")
        self._commit = _overriding(self.backward, "after_commit")
        # The hooks called per record: callers skip them (and what they pass) when unset.
        self.before_each = bool(self._before)
        self.after_each = bool(self._after)

    def __bool__(self) -> bool:
        return bool(self.forward)

    async def before_handle(self, message: Message, handler: Handler) -> None:
        for mw in self._before:
            await _isolated("before_handle", mw, mw.before_handle(message, handler))

    async def after_handle(self, message: Message, handler: Handler, decision: Decision) -> None:
        for mw in self._after:
            await _isolated("after_handle", mw, mw.after_handle(message, handler, decision))

    async def on_dead_letter(self, record: Record, letter: DeadLetter) -> None:
        for mw in self._dead:
            await _isolated("on_dead_letter", mw, mw.on_dead_letter(record, letter))

    async def after_batch(self, tp: TopicPartition, records: int, seconds: float) -> None:
        for mw in self._batch:
            await _isolated("after_batch", mw, mw.after_batch(tp, records, seconds))

    async def after_commit(self, offsets: dict[TopicPartition, int]) -> None:
        for mw in self._commit:
            await _isolated("after_commit", mw, mw.after_commit(offsets))


def _overriding(middleware: Sequence[Middleware], hook: str) -> tuple[Middleware, ...]:
    """The middleware whose class overrides ``hook`` (the base's are no-ops)."""
    base = getattr(Middleware, hook)
    return tuple(mw for mw in middleware if getattr(type(mw), hook, base) is not base)
