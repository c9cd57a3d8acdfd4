"""Events choreo itself publishes; they share one topic so a saga's bookkeeping stays
in one place and services may subscribe to them like any other event."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import StringConstraints

from choreo.events import Event, EventRegistry

SYSTEM_TOPIC = "choreo.system"
# An operator's admin command is kept in the saga's timeline: who acted, and why, bounded.
MAX_ACTOR_CHARS = 200
MAX_NOTE_CHARS = 2000
# A failure's reason travels in events and lives in saga states: bounded, so one huge
# exception message cannot grow a state past what the changelog accepts.
MAX_REASON_CHARS = 2000
Reason = Annotated[str, StringConstraints(max_length=MAX_REASON_CHARS)]


def bounded_reason(text: str) -> str:
    """``text`` cut to MAX_REASON_CHARS, saying how long it was."""
    if len(text) <= MAX_REASON_CHARS:
        return text
    suffix = f"... ({len(text)} characters)"
    return text[: MAX_REASON_CHARS - len(suffix)] + suffix


class SystemEvent(Event, topic=SYSTEM_TOPIC):
    """Base of choreo's own events."""


class StepFailed(SystemEvent, type="choreo.StepFailed"):
    """A handler raised BusinessFailure without an event of its own."""

    step: str
    reason: Reason


class CompensationSkipped(SystemEvent, type="choreo.CompensationSkipped"):
    """The barrier confirmed a compensation without running it (null compensation or
    a compensation of a step that failed): the tracker counts it as confirmed."""

    step: str
    reason: Reason


class SagaCompleted(SystemEvent, type="choreo.SagaCompleted"):
    saga: str


class SagaCompensated(SystemEvent, type="choreo.SagaCompensated"):
    saga: str
    reason: Reason


class SagaStuck(SystemEvent, type="choreo.SagaStuck"):
    """An alert: a compensation's retry budget is spent and an operator must act."""

    saga: str
    step: str
    attempts: int
    reason: Reason


class DeadlineCheck(SystemEvent, type="choreo.DeadlineCheck"):
    """Routed through the log so the tracker changes state only inside stream processing."""

    version: int


AdminAction = Literal["retry", "compensate", "resolve"]


class AdminCommand(SystemEvent, type="choreo.AdminCommand"):
    """An operator's audited request, carried out by the tracker. ``actor`` is at most
    ``MAX_ACTOR_CHARS`` characters and ``note`` ``MAX_NOTE_CHARS``: a longer one is a
    schema violation, dead-lettered, never stored."""

    action: AdminAction
    actor: Annotated[str, StringConstraints(max_length=MAX_ACTOR_CHARS)]
    note: Annotated[str, StringConstraints(max_length=MAX_NOTE_CHARS)] = ""


SYSTEM_EVENTS: tuple[type[Event], ...] = (
    StepFailed,
    CompensationSkipped,
    SagaCompleted,
    SagaCompensated,
    SagaStuck,
    DeadlineCheck,
    AdminCommand,
)


def system_registry() -> EventRegistry:
    registry = EventRegistry()
    for cls in SYSTEM_EVENTS:
        registry.add(cls)
    return registry
