"""Saga state: what the tracker knows about one saga, keyed by gid.

Plain pydantic models that survive ``model_dump(mode="json")`` and ``model_validate``
unchanged: the tracker keeps them in a changelog-backed table and the state API serves
them as JSON. Only the pure machine (``choreo.saga.machine``) changes them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from choreo.events import Message

SEEN_IDS_LIMIT = 512
Payload = dict[str, Any]  # an event's fields as JSON
TIMELINE_LIMIT = 1000


M = TypeVar("M", bound=BaseModel)


def _copy(model: M, **update: Any) -> M:
    """``model.model_copy(update=update)`` for these plain models (no private attributes,
    no extra fields) without pydantic's generic path: the tracker drafts a state, and
    copies each of its steps, for every event it folds (a tenth of the fold's time)."""
    clone = type(model).__new__(type(model))
    fields = {**model.__dict__, **update}
    object.__setattr__(clone, "__dict__", fields)
    object.__setattr__(clone, "__pydantic_fields_set__", set(model.__pydantic_fields_set__))
    object.__setattr__(clone, "__pydantic_extra__", None)
    object.__setattr__(clone, "__pydantic_private__", None)
    return clone


class SagaStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    STUCK = "STUCK"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.STUCK})


class StepStatus(StrEnum):
    """A step absent from ``SagaState.steps`` was never dispatched."""

    PENDING = "PENDING"
    DONE = "DONE"
    FAILED = "FAILED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"


class StepState(BaseModel):
    status: StepStatus
    dispatched_at: float | None = None
    finished_at: float | None = None
    deadline_at: float | None = None
    compensation_attempts: int = 0
    # Bumped by an operator's retry, which grants a fresh attempt budget; it keeps the
    # event ids of the new attempts distinct from the earlier ones.
    compensation_round: int = 0
    compensation_issued_at: float | None = None
    next_retry_at: float | None = None
    compensated_at: float | None = None
    outcome_note: str = ""


class TimelineEntry(BaseModel):
    """One line of a saga's history: an event seen or an action the tracker took."""

    model_config = ConfigDict(frozen=True)

    at: float
    occurred_at: float | None = None
    event_type: str = ""
    event_id: str = ""
    step: str = ""
    op: str = ""
    outcome: str = ""
    source: str = ""
    note: str = ""

    @classmethod
    def of_message(cls, message: Message, at: float, note: str, step: str = "") -> TimelineEntry:
        env = message.envelope
        return cls(
            at=at,
            occurred_at=env.occurred_at,
            event_type=env.event_type,
            event_id=env.event_id,
            step=env.step or step,
            op=env.op,
            outcome=env.outcome,
            source=env.source,
            note=note,
        )


class SagaState(BaseModel):
    gid: str
    saga: str
    status: SagaStatus = SagaStatus.RUNNING
    steps: dict[str, StepState] = Field(default_factory=dict)
    version: int = 0
    started_at: float
    updated_at: float
    finished_at: float | None = None
    reason: str = ""
    # Only what owed compensations and operators' retries need (docs/tracker.md): the
    # payloads of steps' triggers and done events, by event type and each kept once (one
    # step's done event is often the next one's trigger); the done event type applied to
    # each step that may be compensated, by step; and by step, a compensation once built
    # (every attempt re-publishes it as is). ``choreo.saga.compensation.forget`` drops
    # what nothing can need any more: a completed saga keeps none of it.
    payloads: dict[str, Payload] = Field(default_factory=dict)
    replies: dict[str, str] = Field(default_factory=dict)
    compensations: dict[str, Payload] = Field(default_factory=dict)
    seen_ids: list[str] = Field(default_factory=list)
    timeline: list[TimelineEntry] = Field(default_factory=list)
    resolved: bool = False
    resolved_by: str = ""
    resolved_note: str = ""
    # A STUCK saga stays STUCK (terminal states never reopen); when every compensation it
    # owed is confirmed after all, this says since when it is clear.
    cleared_at: float | None = None
    # The trace context of the last event folded: what the tracker publishes on its own
    # account (deadline checks, compensations after a timeout) continues the saga's trace.
    traceparent: str = ""

    @classmethod
    def new(cls, gid: str, saga: str, now: float) -> SagaState:
        return cls(gid=gid, saga=saga, started_at=now, updated_at=now)

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def settled_at(self) -> float | None:
        """Since when nothing more is expected of this saga (the start of its retention):
        a COMPLETED or COMPENSATED saga's last change, a STUCK one's once an operator
        resolved it or its compensations were all confirmed; None while it may act."""
        if not self.status.is_terminal:
            return None
        if self.status == SagaStatus.STUCK and not self.resolved and self.cleared_at is None:
            return None
        return self.updated_at

    def has_seen(self, event_id: str) -> bool:
        return event_id in self.seen_ids

    def draft(self) -> SagaState:
        """A copy that can be edited without touching this state (cheaper than a deep
        copy: the payload dicts and timeline entries are shared, never edited in place)."""
        return _copy(
            self,
            steps={name: _copy(step) for name, step in self.steps.items()},
            payloads=dict(self.payloads),
            replies=dict(self.replies),
            compensations=dict(self.compensations),
            seen_ids=list(self.seen_ids),
            timeline=list(self.timeline),
        )

    def remember(self, message: Message) -> None:
        """Note the event's id for dedupe."""
        self.seen_ids = [*self.seen_ids, message.envelope.event_id][-SEEN_IDS_LIMIT:]

    def add_timeline(self, entries: list[TimelineEntry]) -> None:
        self.timeline = [*self.timeline, *entries][-TIMELINE_LIMIT:]

    def next_deadline(self) -> float | None:
        """When the tracker must next call ``on_deadline``: the earliest deadline of a
        pending step (while running) or retry of an unconfirmed compensation."""
        times: list[float] = []
        for step in self.steps.values():
            if step.status == StepStatus.COMPENSATING and step.next_retry_at is not None:
                times.append(step.next_retry_at)
            elif (
                step.status == StepStatus.PENDING
                and self.status == SagaStatus.RUNNING
                and step.deadline_at is not None
            ):
                times.append(step.deadline_at)
        return min(times, default=None)
