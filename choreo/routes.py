"""The route table: which handlers an event type reaches, each resolved once, when the
service is built, to the barrier step and op it records under."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from choreo.handlers import Handler, HandlerOp
from choreo.store.base import BarrierKey

if TYPE_CHECKING:
    from choreo.saga.contract import SagaContract


def default_step(service: str, handler: Handler) -> str:
    """The barrier step of a handler that names none and no contract places."""
    return f"{service}.{handler.name}"


@dataclass(frozen=True, slots=True)
class Route:
    """A handler with its barrier step and op settled."""

    handler: Handler
    step: str
    op: HandlerOp

    def key(self, gid: str) -> BarrierKey:
        return BarrierKey(gid, self.step, self.op)


def resolve(service: str, handler: Handler, contracts: Sequence[SagaContract]) -> Route:
    """``step=`` when the handler gave one; else the contract step whose trigger (action)
    or compensation event (compensate) it handles; else ``default_step``."""
    if handler.step is not None:
        return Route(handler, handler.step, handler.op)
    step, op = default_step(service, handler), handler.op
    for contract in contracts:
        for s in contract.steps:
            if handler.event is s.on:
                step, op = s.name, "action"
            elif handler.event is s.compensation:
                step, op = s.name, "compensate"
    return Route(handler.with_step(step, op), step, op)


@dataclass(frozen=True)
class RouteTable:
    """Event type -> the routes it reaches, in registration order. Frozen: built once."""

    by_type: Mapping[str, tuple[Route, ...]]

    @classmethod
    def build(
        cls, service: str, handlers: Iterable[Handler], contracts: Sequence[SagaContract] = ()
    ) -> RouteTable:
        table: dict[str, list[Route]] = {}
        for handler in handlers:
            table.setdefault(handler.event.event_type, []).append(
                resolve(service, handler, contracts)
            )
        return cls({event_type: tuple(routes) for event_type, routes in table.items()})

    def get(self, event_type: str) -> tuple[Route, ...]:
        return self.by_type.get(event_type, ())

    def __iter__(self) -> Iterator[Route]:
        for routes in self.by_type.values():
            yield from routes
