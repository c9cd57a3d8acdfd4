"""What every tracker shell shares: which contract an event belongs to, folding it
into state, turning the machine's actions into records, and the deadline index.

Shells own I/O and time; this module owns neither, so the memory tracker and the
faust tracker cannot drift apart.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence

from choreo import codec
from choreo.errors import ConfigurationError
from choreo.events import Envelope, EventRegistry, Message
from choreo.saga.contract import SagaContract
from choreo.saga.machine import Transition, apply, on_deadline
from choreo.saga.state import SagaState
from choreo.system_events import (
    SYSTEM_EVENTS,
    SYSTEM_TOPIC,
    AdminCommand,
    DeadlineCheck,
    SystemEvent,
)
from choreo.transport.base import OutgoingRecord

TRACKER_SOURCE = "tracker"


class TrackerCore:
    def __init__(self, contracts: Sequence[SagaContract]) -> None:
        if not contracts:
            raise ConfigurationError("a tracker needs at least one saga contract")
        names = [c.name for c in contracts]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"saga names must be unique, got {names}")
        self.contracts = {c.name: c for c in contracts}
        self._by_start = {c.start.event_type: c for c in contracts}
        self._by_type: dict[str, SagaContract] = {}
        for contract in contracts:
            for cls in contract.event_types():
                self._by_type.setdefault(cls.event_type, contract)
        self.registry = EventRegistry()
        for cls in SYSTEM_EVENTS:
            self.registry.add(cls)
        for contract in contracts:
            for cls in contract.event_types():
                self.registry.add(cls)

    def topics(self) -> list[str]:
        found = {SYSTEM_TOPIC}
        for contract in self.contracts.values():
            found.update(contract.topics())
        return sorted(found)

    def contract_for(self, message: Message, state: SagaState | None) -> SagaContract | None:
        """The saga an event belongs to: its state's, its envelope's, or the one whose
        events include its type. A system event opens a saga only when its envelope names
        a known one (a step's failure may overtake the start event on another topic); an
        operator's command or bookkeeping outside any saga would make a phantom saga."""
        if state is not None:
            return self.contracts.get(state.saga)
        saga = message.envelope.saga
        if saga and saga not in self.contracts:
            return None  # another app's saga on a shared topic
        if isinstance(message.event, SystemEvent):
            if isinstance(message.event, AdminCommand | DeadlineCheck):
                return None  # addressed to a saga this tracker holds no state of
            return self.contracts.get(saga)
        if saga:
            return self.contracts[saga]
        return self._by_start.get(message.envelope.event_type) or self._by_type.get(
            message.envelope.event_type
        )

    def ignores(self, state: SagaState | None, message: Message) -> bool:
        return self.contract_for(message, state) is None

    def transition(
        self, state: SagaState | None, message: Message, now: float
    ) -> Transition | None:
        """What the machine decides on ``message``: the new state and its actions; None
        when no contract of this tracker knows the message (see ``ignores``)."""
        contract = self.contract_for(message, state)
        if contract is None:
            return None
        return apply(contract, state, message, now)

    def fold(
        self, state: SagaState | None, message: Message, now: float
    ) -> tuple[SagaState | None, list[OutgoingRecord]]:
        transition = self.transition(state, message, now)
        if transition is None:
            return state, []
        return transition.state, self.records(transition, cause=message.envelope)

    def fire(self, state: SagaState, now: float) -> tuple[SagaState, list[OutgoingRecord]]:
        contract = self.contracts.get(state.saga)
        if contract is None:
            return state, []
        transition = on_deadline(contract, state, now)
        return transition.state, self.records(transition, cause=None)

    def records(
        self, transition: Transition, cause: Envelope | None, traceparents: Sequence[str] = ()
    ) -> list[OutgoingRecord]:
        """The machine's actions as records: caused by ``cause`` (the event a fold
        consumed) or, from a deadline, the tracker's own. They carry the state's saga
        even when the cause's envelope named none. ``traceparents``: with tracing on, the
        ``traceparent`` of each action's record (its publish span's, see
        ``choreo.tracker.tracing``); else each is a new span id in the cause's trace."""
        state = transition.state
        if cause is not None and cause.saga != state.saga:
            cause = cause.evolve(saga=state.saga)
        out = []
        for i, action in enumerate(transition.actions):
            event, event_id, step, op = action.event, action.event_id, action.step, action.op
            traceparent = traceparents[i] if i < len(traceparents) else ""
            if cause is not None:
                envelope = cause.caused(
                    event,
                    event_id=event_id,
                    step=step,
                    op=op,
                    source=TRACKER_SOURCE,
                    traceparent=traceparent,
                )
            else:
                envelope = Envelope.own(
                    event,
                    gid=state.gid,
                    saga=state.saga,
                    event_id=event_id,
                    source=TRACKER_SOURCE,
                    step=step,
                    op=op,
                    trace=state.traceparent,
                )
                if traceparent:
                    envelope = envelope.evolve(traceparent=traceparent)
            out.append(codec.encode(Message(envelope, event, event.topic)))
        return out

    def deadline_check(self, state: SagaState) -> OutgoingRecord:
        """The record that asks the stream processor to fire ``state``'s deadlines; its id
        is fixed per version, so a timer that fires twice sends a recognisable repeat.

        It goes on the topic of the saga's start event, not the system topic: when a saga
        keeps its events on one topic (as docs recommend) the check is then ordered among
        them, so replaying the topic rebuilds the same state (invariant 10)."""
        contract = self.contracts.get(state.saga)
        topic = contract.start.topic if contract is not None else SYSTEM_TOPIC
        check = DeadlineCheck(version=state.version)
        envelope = Envelope.own(
            check,
            gid=state.gid,
            saga=state.saga,
            event_id=f"deadline:{state.gid}:{state.version}",
            source=TRACKER_SOURCE,
            trace=state.traceparent,
        )
        return codec.encode(Message(envelope, check, topic))


# A heap entry: (due at, gid, version). A tuple, not a dataclass: the heap holds one per
# saga with a deadline, and a tuple is half the memory.
_Due = tuple[float, str, int]


class DeadlineIndex:
    """Due times of sagas, earliest first. Lives in memory and is rebuilt from the saga
    table after recovery: deadlines themselves persist in the (changelogged) state."""

    def __init__(self, due: Callable[[SagaState], float | None] | None = None) -> None:
        """``due``: when a state next needs the timer (default: its next deadline)."""
        self._heap: list[_Due] = []
        self._latest: dict[str, int] = {}
        self._due: Callable[[SagaState], float | None] = due or SagaState.next_deadline

    def __len__(self) -> int:
        return len(self._latest)

    def forget(self, gid: str) -> None:
        self._latest.pop(gid, None)  # its heap entries are dropped when they surface

    def track(self, state: SagaState) -> None:
        due = self._due(state)
        if due is None:
            self._latest.pop(state.gid, None)
            return
        self._latest[state.gid] = state.version
        heapq.heappush(self._heap, (due, state.gid, state.version))

    def rebuild(self, states: Iterable[SagaState]) -> None:
        self._heap.clear()
        self._latest.clear()
        for state in states:
            self.track(state)

    def load(self, entries: list[_Due]) -> None:
        """Replace the index with ``entries`` (due, gid, version; one per saga), taken
        as the heap (a restart's bulk load: one heapify, not a push per saga)."""
        heapq.heapify(entries)
        self._heap = entries
        self._latest = {gid: version for _due, gid, version in entries}

    def pop_due(self, now: float) -> list[tuple[str, int]]:
        """(gid, version) of sagas due at ``now``; entries of superseded versions are
        dropped, so only the newest deadline of each saga fires."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            _at, gid, version = heapq.heappop(self._heap)
            if self._latest.get(gid) == version:
                del self._latest[gid]
                due.append((gid, version))
        return due

    def next_at(self) -> float | None:
        while self._heap and self._latest.get(self._heap[0][1]) != self._heap[0][2]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None
