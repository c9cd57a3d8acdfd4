"""One transition in progress, and what it returns: the working copy of a saga's state,
the events the tracker must publish, and the timeline entries that explain them."""

from __future__ import annotations

from dataclasses import dataclass

from choreo.events import Event, Message, Op, derived_event_id
from choreo.saga.contract import SagaContract
from choreo.saga.state import SagaState, SagaStatus, TimelineEntry


@dataclass(frozen=True)
class Publish:
    """An event the tracker must publish with the saga's gid."""

    event: Event
    step: str
    op: Op
    event_id: str


@dataclass(frozen=True)
class Transition:
    state: SagaState
    actions: tuple[Publish, ...] = ()


def compensation_event_id(gid: str, step: str, attempt: int, round_: int = 0) -> str:
    """Deterministic id of a compensation attempt; an operator's retry starts a new round."""
    suffix = str(attempt) if round_ == 0 else f"{round_}.{attempt}"
    return derived_event_id(gid, step, "compensate", suffix)


class Run:
    """One transition in progress: a private copy of the state plus what it produced."""

    def __init__(self, contract: SagaContract, state: SagaState, now: float) -> None:
        self.contract = contract
        self.now = now
        self.state = state.draft()
        self.actions: list[Publish] = []
        self.entries: list[TimelineEntry] = []
        self.message: Message | None = None
        self.notes: list[str] = []
        self.step_hint = ""

    @property
    def touched(self) -> bool:
        return bool(self.message or self.entries or self.actions)

    def record(self, message: Message) -> None:
        self.message = message
        self.state.remember(message)

    def keep_payload(self) -> str:
        """Keep the fields of the business event being applied, unless an event of its
        type was kept already (the first one counts); returns its event type."""
        assert self.message is not None
        event_type = type(self.message.event).event_type
        if event_type not in self.state.payloads:
            self.state.payloads[event_type] = self.message.event.model_dump(mode="json")
        return event_type

    def note(self, text: str, step: str = "") -> None:
        """Explain what the message being applied did."""
        self.notes.append(text)
        self.step_hint = self.step_hint or step

    def log(
        self, text: str, *, step: str = "", event_type: str = "", event_id: str = "", op: str = ""
    ) -> None:
        """Record something the tracker itself did."""
        entry = TimelineEntry(
            at=self.now,
            occurred_at=self.now,
            event_type=event_type,
            event_id=event_id,
            step=step,
            op=op,
            source="tracker",
            note=text,
        )
        self.entries.append(entry)

    def publish(self, event: Event, step: str, op: Op, event_id: str, note: str) -> None:
        self.actions.append(Publish(event, step, op, event_id))
        self.log(note, step=step, event_type=event.event_type, event_id=event_id, op=op)

    def set_status(self, status: SagaStatus, reason: str | None = None) -> bool:
        """Move the saga on; a terminal saga never changes status."""
        s = self.state
        if s.status.is_terminal or s.status == status:
            return False
        s.status = status
        if reason is not None:
            s.reason = reason
        if status.is_terminal:
            s.finished_at = self.now
        return True

    def finish(self) -> Transition:
        s = self.state
        entries = list(self.entries)
        if self.message is not None:
            note = "; ".join(self.notes)
            entries.insert(
                0, TimelineEntry.of_message(self.message, self.now, note, self.step_hint)
            )
        s.add_timeline(entries)
        s.version += 1
        s.updated_at = self.now
        return Transition(s, tuple(self.actions))
