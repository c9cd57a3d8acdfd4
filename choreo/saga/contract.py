"""The saga contract: which events dispatch, finish, fail and compensate each step.

Services and the tracker import the same contract. It is checked when it is built, so a
contract that could confuse the tracker (an event in two roles, a step nobody can
trigger, a cycle) fails at import time with a ContractError naming the problem.

Step B depends on step A when B's trigger is one of A's done events; steps that share
a trigger run in parallel. Compensation runs in the reverse of that order. Steps and how
their compensations are made: ``choreo.saga.step``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from choreo.errors import ContractError
from choreo.events import Event
from choreo.retry import RetryPolicy
from choreo.saga.step import EventTypes, Step, _as_tuple, _is_event_class, _key
from choreo.system_events import SYSTEM_EVENTS

__all__ = ["SagaContract", "Step"]


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
        self._descendants: dict[str, tuple[Step, ...]] = {}  # by step name, see descendants
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
        """Every step that depends on ``step``, directly or transitively. Worked out once
        per step: the tracker's fold asks for every compensable step at every event."""
        name = self._step(step).name
        known = self._descendants.get(name)
        if known is None:
            known = self._descendants[name] = self._walk_dependents(name)
        return known

    def _walk_dependents(self, step: str) -> tuple[Step, ...]:
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
