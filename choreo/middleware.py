"""Middleware: hooks around dispatch, no-ops by default (dramatiq's shape).

Subclass and override what you need; metrics, tracing and tests' fault injection live
here instead of in the dispatcher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from choreo.deadletter import DeadLetter
    from choreo.events import Message
    from choreo.handlers import Handler
    from choreo.store.base import Decision
    from choreo.transport.base import Record, TopicPartition


class Middleware:
    async def before_handle(self, message: Message, handler: Handler) -> None:
        """Before each attempt to run a handler."""

    async def after_handle(self, message: Message, handler: Handler, decision: Decision) -> None:
        """After the barrier decided and the outgoing events were acknowledged,
        before the input offset is committed."""

    async def on_dead_letter(self, record: Record, letter: DeadLetter) -> None:
        """After a record was written to the dead-letter topic."""

    async def after_commit(self, offsets: dict[TopicPartition, int]) -> None:
        """After input offsets were committed."""
