"""The saga contract: which events dispatch, finish, fail and compensate each step.

Services and the tracker import the same contract. It is checked when it is built, so a
contract that could confuse the tracker (an event in two roles, a step nobody can
trigger, a cycle) fails at import time with a ContractError naming the problem.

Step B depends on step A when B's trigger is one of A's done events; steps that share
a trigger run in parallel. Compensation runs in the reverse of that order.

A step's compensation is made from that step's own trigger and done event, never from
other events of the saga (an ``amount`` on a later event must not become a refund):

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from choreo.errors import ContractError
from choreo.events import Event
from choreo.retry import RetryPolicy
from choreo.system_events import SYSTEM_EVENTS

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


class SagaContract:
    """A declared saga, validated at construction."""

    def __init__(
        self,
        name: str,
        *,
        start: type[Event],
        steps: Sequence[Step],
        completed_by: EventTypes = (),
        compensation_retries: int = 5,
        retry_backoff: float = 1.0,
        retry_backoff_max: float = 30.0,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ContractError(f"a saga needs a non-empty name, got {name!r}")
        self.name = name
        self.start = start
        self.steps: tuple[Step, ...] = tuple(steps)
        self.completed_by = _as_tuple(completed_by)
        self.compensation_retries = compensation_retries
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self._check_scalars()
        self._by_name = {step.name: step for step in self.steps}
        self._check_roles()
        self._index()
        self._check_graph()

    # -- validation -----------------------------------------------------------------

    def _fail(self, problem: str) -> ContractError:
        return ContractError(f"saga {self.name!r}: {problem}")

    def _check_scalars(self) -> None:
        if not _is_event_class(self.start):
            raise self._fail(f"start must be a choreo.Event subclass, got {self.start!r}")
        if not self.steps:
            raise self._fail("declares no steps")
        for step in self.steps:
            if not isinstance(step, Step):
                raise self._fail(f"steps must be Step objects, got {step!r}")
        for cls in self.completed_by:
            if not _is_event_class(cls):
                raise self._fail(f"completed_by must hold choreo.Event subclasses, got {cls!r}")
        names = [step.name for step in self.steps]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise self._fail(f"duplicate step names: {', '.join(duplicates)}")
        retries = self.compensation_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
            raise self._fail(f"compensation_retries must be an int >= 1, got {retries!r}")
        backoff, backoff_max = self.retry_backoff, self.retry_backoff_max
        if not (isinstance(backoff, int | float) and math.isfinite(backoff) and backoff > 0):
            raise self._fail(f"retry_backoff must be > 0 seconds, got {backoff!r}")
        if not (isinstance(backoff_max, int | float) and backoff_max >= backoff):
            raise self._fail(f"retry_backoff_max must be >= retry_backoff, got {backoff_max!r}")

    def _check_roles(self) -> None:
        roles: dict[type[Event], list[str]] = {}
        by_wire_name: dict[str, type[Event]] = {}

        def claim(cls: type[Event], role: str) -> None:
            if cls in SYSTEM_EVENTS:
                raise self._fail(f"{cls.__name__} is a system event and cannot be {role}")
            other = by_wire_name.setdefault(cls.event_type, cls)
            if other is not cls:
                raise self._fail(
                    f"{other.__qualname__} and {cls.__qualname__} share the event type "
                    f"{cls.event_type!r}"
                )
            roles.setdefault(cls, []).append(role)

        claim(self.start, "the start event")
        for step in self.steps:
            for cls in step.done:
                claim(cls, f"done of {step.name!r}")
            for cls in step.failed:
                claim(cls, f"failed of {step.name!r}")
            if step.compensation is not None:
                claim(step.compensation, f"compensation of {step.name!r}")
            for cls in step.compensated:
                claim(cls, f"compensated of {step.name!r}")
        for cls in self.completed_by:
            claim(cls, "completed_by")
        for cls, claimed in roles.items():
            # A done event may also complete the saga; every other pairing is ambiguous.
            ambiguous = [role for role in claimed if role != "completed_by"]
            if len(ambiguous) > 1:
                raise self._fail(f"{cls.__name__} is used as {' and as '.join(claimed)}")

    def _index(self) -> None:
        self._triggers: dict[str, list[Step]] = {}
        self._done: dict[str, Step] = {}
        self._failed: dict[str, Step] = {}
        self._compensation: dict[str, Step] = {}
        self._compensated: dict[str, Step] = {}
        self._completion = {cls.event_type for cls in self.completed_by}
        for step in self.steps:
            self._triggers.setdefault(step.on.event_type, []).append(step)
            self._done.update((cls.event_type, step) for cls in step.done)
            self._failed.update((cls.event_type, step) for cls in step.failed)
            self._compensated.update((cls.event_type, step) for cls in step.compensated)
            if step.compensation is not None:
                self._compensation[step.compensation.event_type] = step

    def _check_graph(self) -> None:
        for step in self.steps:
            if step.on is not self.start and step.on.event_type not in self._done:
                raise self._fail(
                    f"step {step.name!r} is triggered by {step.on.__name__}, which is neither "
                    "the start event nor a done event of any step"
                )
        for step in self.steps:
            seen = [step.name]
            parent = self.dependency(step)
            while parent is not None:
                if parent.name in seen:
                    cycle = " -> ".join([*seen, parent.name])
                    raise self._fail(f"dependency cycle (each step waits for the next): {cycle}")
                seen.append(parent.name)
                parent = self.dependency(parent)

    # -- lookups ----------------------------------------------------------------------

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def has_step(self, name: str) -> bool:
        return name in self._by_name

    def step(self, name: str) -> Step:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"saga {self.name!r} has no step {name!r}") from None

    def step_for_trigger(self, event_type: type[Event] | str) -> list[Step]:
        """The steps this event dispatches (several when they run in parallel)."""
        return list(self._triggers.get(_key(event_type), ()))

    def step_done_by(self, event_type: type[Event] | str) -> Step | None:
        return self._done.get(_key(event_type))

    def step_failed_by(self, event_type: type[Event] | str) -> Step | None:
        return self._failed.get(_key(event_type))

    def step_compensated_by(self, event_type: type[Event] | str) -> Step | None:
        return self._compensated.get(_key(event_type))

    def step_for_compensation(self, event_type: type[Event] | str) -> Step | None:
        """The step whose compensation event this is."""
        return self._compensation.get(_key(event_type))

    def completes(self, event_type: type[Event] | str) -> bool:
        return _key(event_type) in self._completion

    def dependency(self, step: Step | str) -> Step | None:
        """The step whose success dispatches ``step`` (None for steps on the start event)."""
        on = self._step(step).on
        return None if on is self.start else self._done.get(on.event_type)

    def dependents(self, step: Step | str) -> tuple[Step, ...]:
        """Steps dispatched by ``step``'s done events."""
        done = {cls.event_type for cls in self._step(step).done}
        return tuple(s for s in self.steps if s.on.event_type in done)

    def descendants(self, step: Step | str) -> tuple[Step, ...]:
        """Every step that depends on ``step``, directly or transitively."""
        found: list[Step] = []
        frontier = list(self.dependents(step))
        while frontier:
            current = frontier.pop(0)
            if current not in found:
                found.append(current)
                frontier.extend(self.dependents(current))
        return tuple(found)

    def retry_delay(self, attempts: int) -> float:
        """Capped exponential backoff after the ``attempts``-th compensation attempt;
        no jitter: the state machine is pure, and replaying the log must reproduce it."""
        policy = RetryPolicy(backoff=self.retry_backoff, backoff_max=self.retry_backoff_max,
                             jitter=False)  # fmt: skip
        return policy.delay(max(attempts, 1))

    def event_types(self) -> tuple[type[Event], ...]:
        """Every event class the contract mentions, plus the system events it relies on."""
        classes: list[type[Event]] = [self.start]
        for step in self.steps:
            classes += [step.on, *step.done, *step.failed, *step.compensated]
            if step.compensation is not None:
                classes.append(step.compensation)
        classes += [*self.completed_by, *SYSTEM_EVENTS]
        return tuple(dict.fromkeys(classes))

    def topics(self) -> tuple[str, ...]:
        return tuple(sorted({cls.topic for cls in self.event_types()}))

    def lint(self) -> list[str]:
        """Advice that does not make the contract invalid."""
        warnings: list[str] = []
        for step in self.steps:
            where = f"step {step.name!r}"
            if step.compensation is None:
                warnings.append(f"{where} has no compensation: it cannot be undone")
            elif not step.compensated:
                warnings.append(
                    f"{where} declares no compensated event: only CompensationSkipped can "
                    "confirm its compensation, so the tracker may retry it until STUCK"
                )
            if not step.service:
                warnings.append(f"{where} names no service")
            warnings += self._compensation_advice(step)
        return warnings

    def _compensation_advice(self, step: Step) -> list[str]:
        """What the default fill rule does that may surprise: fields only the done event
        carries (none if the step times out) and fields the done event overrides. A field
        every event of the saga carries (an order id) is its subject, not a surprise."""
        comp = step.compensation
        if comp is None or step.compensate_with is not None:
            return []
        where = f"step {step.name!r}"
        business = [cls for cls in self.event_types() if cls not in SYSTEM_EVENTS]
        subject = set.intersection(*(set(cls.model_fields) for cls in business))
        only_done: list[str] = []
        both: list[str] = []
        for field, info in comp.model_fields.items():
            if field in step.on.model_fields:
                if field not in subject and any(field in c.model_fields for c in step.done):
                    both.append(field)
            elif info.is_required():
                only_done.append(field)
        done = " or ".join(cls.__name__ for cls in step.done)
        advice: list[str] = []
        if only_done:
            advice.append(
                f"{where}: its compensation needs {', '.join(only_done)}, which only its done "
                f"event {done} carries, not its trigger {step.on.__name__}; if it times out "
                "it cannot be compensated"
            )
        if both:
            advice.append(
                f"{where}: {comp.__name__} takes {', '.join(both)} from its done event "
                f"{done}, or from its trigger {step.on.__name__} if it times out; if they "
                "mean different things there, build it with compensate_with="
            )
        return advice

    def _step(self, step: Step | str) -> Step:
        return self.step(step) if isinstance(step, str) else step

    def __repr__(self) -> str:
        return f"SagaContract({self.name!r}, steps={list(self.step_names)!r})"
