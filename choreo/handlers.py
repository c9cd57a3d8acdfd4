"""Handler specs: what ``@on_event`` records, checked when the decorator runs."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from choreo.breaker import CircuitBreaker
from choreo.context import Context
from choreo.errors import ConfigurationError
from choreo.events import Event
from choreo.retry import RetryPolicy

HandlerFunc = Callable[..., Awaitable[Any]]
HandlerOp = Literal["action", "compensate"]


@dataclass(frozen=True)
class Handler:
    event: type[Event]
    func: HandlerFunc
    name: str
    step: str | None
    op: HandlerOp
    retry: RetryPolicy
    throws: tuple[type[BaseException], ...]
    wants_context: bool
    emits: tuple[type[Event], ...]
    breaker: CircuitBreaker | None = None

    def with_step(self, step: str, op: HandlerOp) -> Handler:
        return Handler(
            self.event,
            self.func,
            self.name,
            step,
            op,
            self.retry,
            self.throws,
            self.wants_context,
            self.emits,
            self.breaker,
        )


def _events_in(annotation: Any) -> tuple[type[Event], ...]:
    """The Event classes a return annotation mentions (T, T | U, list[T], None...)."""
    if isinstance(annotation, type) and issubclass(annotation, Event):
        return (annotation,)
    found: list[type[Event]] = []
    for arg in typing.get_args(annotation):
        found.extend(_events_in(arg))
    return tuple(found)


def make_handler(
    event: type[Event],
    func: HandlerFunc,
    *,
    step: str | None,
    op: HandlerOp,
    retry: RetryPolicy | None,
    throws: Sequence[type[BaseException]],
    breaker: CircuitBreaker | None = None,
) -> Handler:
    where = getattr(func, "__qualname__", repr(func))
    if not (isinstance(event, type) and issubclass(event, Event)) or event is Event:
        raise ConfigurationError(
            f"@on_event({event!r}) on {where}: the first argument must be a subclass of "
            "choreo.Event"
        )
    if not inspect.iscoroutinefunction(func):
        raise ConfigurationError(f"{where} must be an `async def` function to be a handler")
    if op not in ("action", "compensate"):
        raise ConfigurationError(f"{where}: op must be 'action' or 'compensate', got {op!r}")
    if step is not None and (not step or "/" in step):
        raise ConfigurationError(f"{where}: step must be a non-empty name without '/'")
    for exc in throws:
        if not (isinstance(exc, type) and issubclass(exc, BaseException)):
            raise ConfigurationError(f"{where}: throws= takes exception classes, got {exc!r}")
    params = list(inspect.signature(func).parameters.values())
    if not 1 <= len(params) <= 2 or any(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY) for p in params
    ):
        raise ConfigurationError(
            f"{where} must take the event and optionally a Context: "
            f"`async def {getattr(func, '__name__', 'handler')}(event, ctx: Context)`"
        )
    try:
        hints = typing.get_type_hints(func)
    except Exception:
        hints = {}
    first = hints.get(params[0].name)
    if isinstance(first, type) and not issubclass(event, first):
        raise ConfigurationError(
            f"{where}: its first parameter is annotated {first.__qualname__} but it handles "
            f"{event.__qualname__}"
        )
    if len(params) == 2:
        second = hints.get(params[1].name)
        if second is not None and second is not Context:
            raise ConfigurationError(
                f"{where}: the second parameter must be annotated `Context`, got {second!r}"
            )
    policy = retry or RetryPolicy()
    if breaker is not None and breaker.failures > policy.max_attempts:
        raise ConfigurationError(
            f"{where}: circuit breaker {breaker.name!r} opens after {breaker.failures} "
            f"failures, but a record is dead-lettered after {policy.max_attempts} attempts: "
            "lower failures= or raise the retry budget"
        )
    return Handler(
        event=event,
        func=func,
        name=getattr(func, "__name__", "handler"),
        step=step,
        op=op,
        retry=policy,
        throws=tuple(throws),
        wants_context=len(params) == 2,
        emits=_events_in(hints.get("return")),
        breaker=breaker,
    )
