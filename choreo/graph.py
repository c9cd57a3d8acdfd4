"""The choreography map: who consumes and who emits each event, and what looks wrong.

Built from services' registered handlers (a handler's return annotation says what it
emits) and from saga contracts (a step's service emits its done, failed and compensated
events; the tracker emits compensations and its own system events).

Lint levels, chosen so ``choreo graph --lint`` can gate CI on what breaks sagas at run
time and only advise on the rest:

- error: a cycle of events through handlers (an endless ping-pong); a handler for an
  event nothing emits while contracts are known (it can never run; start events count
  as emitted); a contract step whose service is loaded but has no handler for its
  trigger or its compensation (the saga would always time out or end STUCK).
- warning: an event emitted that nobody consumes (no handler, no contract); a handler
  for an event nothing emits when no contract names the entry points; a step without
  compensation and the contract's other advice (``SagaContract.lint``); a step whose
  service was not given, so its handlers could not be checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from choreo.app import Service
from choreo.events import Event
from choreo.saga.contract import SagaContract
from choreo.system_events import (
    AdminCommand,
    CompensationSkipped,
    DeadlineCheck,
    SagaCompensated,
    SagaCompleted,
    SagaStuck,
    StepFailed,
)

TRACKER = "tracker"
EdgeKind = Literal["handles", "emits", "declared", "compensates", "fails"]
_BUILTIN_PRODUCERS: dict[type[Event], str] = {
    SagaCompleted: TRACKER, SagaCompensated: TRACKER, SagaStuck: TRACKER,
    DeadlineCheck: TRACKER, StepFailed: "runtime", CompensationSkipped: "runtime",
    AdminCommand: "operator",
}  # fmt: skip


@dataclass(frozen=True, order=True)
class Edge:
    """``source`` and ``target`` are a service name, ``tracker`` or an event type."""

    source: str
    target: str
    kind: EdgeKind
    label: str = ""


@dataclass(frozen=True, order=True)
class Finding:
    level: Literal["error", "warning"]
    message: str


@dataclass
class Choreography:
    services: list[Service]
    contracts: list[SagaContract]
    events: dict[str, type[Event]] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def consumers(self, event_type: str) -> list[Edge]:
        return [e for e in self.edges if e.source == event_type and e.kind in ("handles", "fails")]

    def producers(self, event_type: str) -> list[Edge]:
        return [e for e in self.edges if e.target == event_type]

    def start_events(self) -> set[str]:
        return {c.start.event_type for c in self.contracts}

    def tracked(self) -> set[str]:
        """Event types the tracker folds (it consumes every contract event)."""
        return {cls.event_type for c in self.contracts for cls in c.event_types()}


def build(services: Sequence[Service], contracts: Sequence[SagaContract] = ()) -> Choreography:
    """Contracts attached to the services are included; a contract given twice counts once."""
    known = {c.name: c for s in services for c in s.contracts} | {c.name: c for c in contracts}
    graph = Choreography(list(services), list(known.values()))
    edges: set[Edge] = set()

    def event(cls: type[Event]) -> str:
        graph.events.setdefault(cls.event_type, cls)
        return cls.event_type

    for service in services:
        for handler in service.resolved_handlers():
            edges.add(Edge(event(handler.event), service.name, "handles", handler.name))
            for cls in handler.emits:
                edges.add(Edge(service.name, event(cls), "emits", handler.name))
    for contract in graph.contracts:
        event(contract.start)
        for step in contract.steps:
            replies = [*step.done, *step.failed, *step.compensated]
            for cls in replies:
                if step.service and not any(
                    e.source == step.service and e.target == cls.event_type for e in edges
                ):
                    edges.add(Edge(step.service, event(cls), "declared", step.name))
            for cls in step.failed:
                edges.add(Edge(event(cls), TRACKER, "fails", step.name))
            if step.compensation is not None:
                edges.add(Edge(TRACKER, event(step.compensation), "compensates", step.name))
    for cls, producer in _BUILTIN_PRODUCERS.items():
        if cls.event_type in graph.events:
            edges.add(Edge(producer, cls.event_type, "emits"))
    graph.edges = sorted(edges)
    return graph


def cycles(graph: Choreography) -> list[list[str]]:
    """Cycles of events through service handlers, each listed once from its least event."""
    follows: dict[str, set[str]] = {}
    for edge in graph.edges:
        if edge.kind == "handles":
            emitted = {
                e.target
                for e in graph.edges
                if e.source == edge.target and e.kind == "emits" and e.label == edge.label
            }
            follows.setdefault(edge.source, set()).update(emitted)
    found: set[tuple[str, ...]] = set()

    def walk(path: list[str]) -> None:
        for nxt in sorted(follows.get(path[-1], ())):
            if nxt == path[0]:
                found.add(tuple(path))
            elif nxt not in path and nxt > path[0]:
                walk([*path, nxt])

    for start in sorted(follows):
        walk([start])
    return [[*c, c[0]] for c in sorted(found)]


def lint(graph: Choreography) -> list[Finding]:
    findings: set[Finding] = set()
    names = {s.name for s in graph.services}
    starts, tracked = graph.start_events(), graph.tracked()
    for cycle in cycles(graph):
        findings.add(Finding("error", f"event cycle through handlers: {' -> '.join(cycle)}"))
    for event_type in graph.events:
        consumed = graph.consumers(event_type) or event_type in tracked
        producers = graph.producers(event_type)
        if producers and not consumed:
            by = ", ".join(sorted({e.source for e in producers}))
            findings.add(
                Finding(
                    "warning",
                    f"{event_type} (emitted by {by}) is consumed by "
                    "no handler and no saga contract",
                )
            )
        handlers = [
            f"{e.target}.{e.label}" for e in graph.consumers(event_type) if e.kind == "handles"
        ]
        if handlers and not producers and event_type not in starts:
            level: Literal["error", "warning"] = "error" if graph.contracts else "warning"
            findings.add(
                Finding(
                    level,
                    f"{event_type} is handled by {', '.join(handlers)} but nothing emits it "
                    "(annotate the emitting handler's return type, also for events raised "
                    "with BusinessFailure, or declare the saga's contract)",
                )
            )
    for contract in graph.contracts:
        for advice in contract.lint():
            findings.add(Finding("warning", f"saga {contract.name!r}: {advice}"))
        for step in contract.steps:
            where = f"saga {contract.name!r} step {step.name!r}"
            if step.service and step.service not in names:
                findings.add(
                    Finding(
                        "warning",
                        f"{where}: service {step.service!r} was not "
                        "given, so its handlers were not checked",
                    )
                )
                continue
            wanted = [("trigger", step.on), ("compensation", step.compensation)]
            for role, cls in wanted:
                if (
                    cls is not None
                    and step.service
                    and not any(e.target == step.service for e in graph.consumers(cls.event_type))
                ):
                    findings.add(
                        Finding(
                            "error",
                            f"{where}: service {step.service!r} has no "
                            f"handler for its {role} {cls.event_type}",
                        )
                    )
    return sorted(findings)
