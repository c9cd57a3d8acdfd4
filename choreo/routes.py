"""The route table: which handlers an event type reaches, each resolved once, when the
service is built, to the barrier step and op it records under."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from choreo.errors import ConfigurationError
from choreo.handlers import Handler, HandlerOp
from choreo.store.base import BarrierKey

if TYPE_CHECKING:
    from choreo.saga.contract import SagaContract


def default_step(service: str, handler: Handler) -> str:
    """The barrier step of a handler that names none and no contract places."""
    return f"{service}.{handler.name}"


@dataclass(frozen=True, slots=True)
class Route:
    """A handler with its barrier step and op settled.

    Its barrier records live under ``<service>/<step>``: two services that both name a
    step ``reserve`` keep apart (neither service names nor steps may contain ``/``)."""

    handler: Handler
    step: str
    op: HandlerOp
    service: str = ""
    # The step the barrier records under, worked out once: key() runs for every record.
    barrier_step: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        step = f"{self.service}/{self.step}" if self.service else self.step
        object.__setattr__(self, "barrier_step", step)  # frozen: set once, here

    def key(self, gid: str) -> BarrierKey:
        return BarrierKey(gid, self.barrier_step, self.op)


def resolve(service: str, handler: Handler, contracts: Sequence[SagaContract]) -> Route:
    """``step=`` when the handler gave one; else the contract step whose trigger (action)
    or compensation event (compensate) it handles; else ``default_step``, which a
    compensation may not take: it would never meet its action's barrier record."""
    if handler.step is not None:
        return Route(handler, handler.step, handler.op, service)
    step, op, placed = default_step(service, handler), handler.op, False
    for contract in contracts:
        for s in contract.steps:
            if handler.event is s.on:
                step, op, placed = s.name, "action", True
            elif handler.event is s.compensation:
                step, op, placed = s.name, "compensate", True
    if op == "compensate" and not placed:
        raise ConfigurationError(
            f"{service}: {handler.name}, the compensation for {handler.event.__qualname__}, "
            f"names no step= and no saga contract of the service places it, so its barrier "
            f"step would be {step!r}, apart from its action's: an action arriving after it "
            "would still run. Give it and its action the same step= (e.g. "
            'step="stock" on both), or give the service the saga\'s contract'
        )
    return Route(handler.with_step(step, op), step, op, service)


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
