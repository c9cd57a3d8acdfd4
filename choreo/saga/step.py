"""A saga step: the events that dispatch, finish, fail and compensate it, its deadline,
and how its compensation is made from its own trigger and done event (never from other
events of the saga: an ``amount`` on a later event must not become a refund).

- ``compensate_with=lambda trigger, done: RefundPayment(...)`` builds it; ``done`` is None
  when the step timed out (its outcome is unknown, the compensation is still owed).
- Without it, each field of the compensation is copied by name from the done event when
  the done event carries it (it reports what the step did, like a compensation log),
  else from the trigger, else the field's default. The step is refused when a required
  field is carried by neither (by the trigger or by every done event), or when the
  trigger and a done event declare the field with different types (the same name for
  two things: say which one with ``compensate_with``). ``SagaContract.lint`` reports the
  rest: fields only the done event carries (lost if the step times out) and fields both
  carry (the done event's value wins; the trigger's is used after a timeout).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from choreo.errors import ContractError
from choreo.events import Event

EventTypes = type[Event] | Iterable[type[Event]]
OnT = TypeVar("OnT", bound=Event)
DoneT = TypeVar("DoneT", bound=Event)
CompT = TypeVar("CompT", bound=Event)
# (trigger, done or None) -> the compensation event; typed per step by Step.__init__.
CompensationBuilder = Callable[[Any, Any], Event]
Payload = Mapping[str, Any]


def _is_event_class(cls: object) -> bool:
    return isinstance(cls, type) and issubclass(cls, Event) and cls is not Event


def _as_tuple(value: EventTypes | None) -> tuple[type[Event], ...]:
    if value is None:
        return ()
    if isinstance(value, type):
        return (value,)
    return tuple(value)


def _key(event_type: type[Event] | str) -> str:
    return event_type if isinstance(event_type, str) else event_type.event_type


def _type_name(annotation: object) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


@dataclass(frozen=True, init=False)
class Step:
    """One service's unit of work. ``done``, ``failed`` and ``compensated`` accept one
    event class or several and are stored as tuples. ``compensate_with(trigger, done)``
    builds the compensation (see the module's docstring for the rule without it)."""

    name: str
    on: type[Event]
    done: tuple[type[Event], ...]
    failed: tuple[type[Event], ...]
    compensation: type[Event] | None
    compensated: tuple[type[Event], ...]
    deadline: float
    service: str
    compensate_with: CompensationBuilder | None

    def __init__(
        self,
        name: str,
        on: type[OnT],
        done: type[DoneT] | Iterable[type[DoneT]],
        failed: EventTypes = (),
        compensation: type[CompT] | None = None,
        compensated: EventTypes = (),
        deadline: float = 30.0,
        service: str = "",
        *,
        compensate_with: Callable[[OnT, DoneT | None], CompT] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ContractError(f"a step needs a non-empty name, got {name!r}")
        fields = {
            "name": name,
            "on": on,
            "done": _as_tuple(done),
            "failed": _as_tuple(failed),
            "compensation": compensation,
            "compensated": _as_tuple(compensated),
            "deadline": deadline,
            "service": service,
            "compensate_with": compensate_with,
        }
        for key, value in fields.items():
            object.__setattr__(self, key, value)
        self._check()

    def _check(self) -> None:
        where = f"step {self.name!r}"
        classes = [("on", self.on), *(("done", c) for c in self.done)]
        classes += [("failed", c) for c in self.failed]
        classes += [("compensated", c) for c in self.compensated]
        if self.compensation is not None:
            classes.append(("compensation", self.compensation))
        for role, cls in classes:
            if not _is_event_class(cls):
                raise ContractError(f"{where}: {role} must be a choreo.Event subclass, got {cls!r}")
        if not self.done:
            raise ContractError(f"{where}: needs at least one done event")
        if self.compensated and self.compensation is None:
            raise ContractError(f"{where}: lists compensated events but has no compensation")
        deadline = self.deadline
        if isinstance(deadline, bool) or not isinstance(deadline, int | float):
            raise ContractError(f"{where}: deadline must be a number of seconds")
        if not math.isfinite(deadline) or deadline <= 0:
            raise ContractError(f"{where}: deadline must be > 0 seconds, got {deadline}")
        self._check_compensation(where)

    def _check_compensation(self, where: str) -> None:
        comp, builder = self.compensation, self.compensate_with
        if builder is not None:
            if comp is None:
                raise ContractError(f"{where}: compensate_with is given but no compensation")
            if not callable(builder):
                raise ContractError(f"{where}: compensate_with must be callable, got {builder!r}")
            try:
                inspect.signature(builder).bind(None, None)
            except TypeError:
                raise ContractError(
                    f"{where}: compensate_with must take two arguments, the step's trigger "
                    "and its done event (None when the step timed out)"
                ) from None
            except ValueError:  # no signature to inspect (some builtins): trust it
                pass
            return
        if comp is None:
            return
        fix = f"build it with Step(..., compensate_with=lambda trigger, done: {comp.__name__}(...))"
        for field, info in comp.model_fields.items():
            trigger = self.on.model_fields.get(field)
            carriers = [cls for cls in self.done if field in cls.model_fields]
            for cls in carriers:
                theirs = cls.model_fields[field].annotation
                if trigger is not None and trigger.annotation != theirs:
                    raise ContractError(
                        f"{where}: {comp.__name__}.{field} is ambiguous: its trigger "
                        f"{self.on.__name__} has {field}: {_type_name(trigger.annotation)} "
                        f"and its done event {cls.__name__} has {field}: {_type_name(theirs)}; "
                        f"{fix} to say which one it is"
                    )
            lacking = [cls.__name__ for cls in self.done if cls not in carriers]
            if info.is_required() and trigger is None and lacking:
                done = " or ".join(cls.__name__ for cls in self.done)
                which = (
                    f"its done event {done}"
                    if len(self.done) == 1
                    else f"every done event ({', '.join(lacking)} lacks it)"
                )
                raise ContractError(
                    f"{where}: {comp.__name__}.{field} cannot be filled: neither its trigger "
                    f"{self.on.__name__} nor {which} carries {field!r} (fields of other "
                    "events of the saga are never used); add it to one of them, give it a "
                    f"default, or {fix}"
                )

    def _done_class(self, event_type: str) -> type[Event]:
        for cls in self.done:
            if cls.event_type == event_type:
                return cls
        raise ValueError(f"{event_type} is not a done event of step {self.name!r}")

    def build_compensation(
        self, trigger: Payload | None, done: tuple[str, Payload] | None
    ) -> tuple[Event, list[str]]:
        """The compensation from the payloads of this step's trigger and done event (None
        when not seen: a timed-out step has no done event), plus notes on fields whose
        trigger and done values differ. Raises when it cannot be built."""
        comp = self.compensation
        if comp is None:
            raise ValueError(f"step {self.name!r} has no compensation")
        if self.compensate_with is not None:
            if trigger is None:
                raise ValueError(f"its trigger {self.on.__name__} was never seen")
            reply = None if done is None else self._done_class(done[0]).model_validate(done[1])
            event = self.compensate_with(self.on.model_validate(trigger), reply)
            if not isinstance(event, comp):
                raise TypeError(f"compensate_with returned {event!r}, not a {comp.__name__}")
            return event, []
        fields: dict[str, Any] = {}
        notes: list[str] = []
        source, replied = ("", {}) if done is None else done
        asked = {} if trigger is None else trigger
        for field in comp.model_fields:
            if field in replied:
                fields[field] = replied[field]
                if field in asked and asked[field] != replied[field]:
                    notes.append(
                        f"{comp.__name__}.{field} is {replied[field]!r} from {source}, not "
                        f"{asked[field]!r} from {self.on.event_type} (the done event wins)"
                    )
            elif field in asked:
                fields[field] = asked[field]
        return comp.model_validate(fields), notes
