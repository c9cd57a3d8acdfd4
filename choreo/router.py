"""Handler registration: ``@router.on_event(...)`` is sugar over ``Router.add_handler``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from choreo.breaker import CircuitBreaker
from choreo.errors import ConfigurationError
from choreo.events import Event
from choreo.handlers import Handler, HandlerFunc, HandlerOp, make_handler
from choreo.retry import RetryPolicy

F = TypeVar("F", bound=HandlerFunc)


class Router:
    """A group of handlers, to split a service across modules (like FastAPI's APIRouter)."""

    def __init__(self) -> None:
        self.handlers: list[Handler] = []

    def add_handler(self, handler: Handler) -> None:
        for known in self.handlers:
            if known.func is handler.func and known.event is handler.event:
                raise ConfigurationError(
                    f"{handler.name} is already registered for {handler.event.__qualname__}"
                )
            if handler.step is not None and (known.event, known.step, known.op) == (
                handler.event,
                handler.step,
                handler.op,
            ):
                raise ConfigurationError(
                    f"two handlers ({known.name}, {handler.name}) for {handler.event.__qualname__}"
                    f" as the {handler.op} of step {handler.step!r}: the barrier could not tell "
                    "them apart; give one of them another step="
                )
        self.handlers.append(handler)

    def on_event(
        self,
        event: type[Event],
        *,
        step: str | None = None,
        op: HandlerOp = "action",
        retry: RetryPolicy | None = None,
        throws: Sequence[type[BaseException]] = (),
        breaker: CircuitBreaker | None = None,
    ) -> Callable[[F], F]:
        """Register an async handler for ``event``.

        ``step``/``op`` name the barrier record (DTM's branch and op); when omitted they
        come from the service's saga contracts, else ``<service>.<function>``/action. A
        compensation (``op="compensate"``) that no contract places must name its action's
        ``step``: the barrier pairs the two by step, so it is refused without one.
        ``throws`` lists exceptions that mean business failure (compensate, no retry);
        any other exception is retried per ``retry`` and then dead-lettered. ``breaker``
        (a ``CircuitBreaker``, shareable between handlers of one dependency) stops
        consuming while the dependency fails, instead of dead-lettering (choreo.breaker).
        """

        def register(func: F) -> F:
            self.add_handler(
                make_handler(
                    event, func, step=step, op=op, retry=retry, throws=throws, breaker=breaker
                )
            )
            return func

        return register

    def include_router(self, router: Router) -> None:
        for handler in router.handlers:
            self.add_handler(handler)
