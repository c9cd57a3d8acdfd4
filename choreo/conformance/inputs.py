"""What the kit sends: the target, trigger payloads, and the step's trigger and
compensation as their real producers (the previous step, the tracker) publish them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from choreo import codec
from choreo.errors import UsageError
from choreo.events import Envelope, Event, Message, new_event_id
from choreo.saga.contract import SagaContract
from choreo.saga.step import Step
from choreo.transport.base import OutgoingRecord

SOURCE = "conformance"
_SAMPLES: dict[Any, Any] = {str: "conformance", int: 1, float: 1.0, bool: False}


@dataclass
class Target:
    """The participant under test and how to drive it."""

    broker: str
    service: str
    contract: SagaContract
    step: Step
    group: str
    timeout: float = 30.0
    payload: dict[str, Any] = field(default_factory=dict)
    failing_payload: dict[str, Any] | None = None
    security: Mapping[str, Any] | None = None


def pick_step(contract: SagaContract, service: str, name: str | None) -> Step:
    if name is not None:
        if not contract.has_step(name):
            raise UsageError(
                f"saga {contract.name!r} has no step {name!r}",
                hint=f"its steps: {', '.join(contract.step_names)}",
            )
        return contract.step(name)
    mine = [step for step in contract.steps if step.service == service]
    if len(mine) != 1:
        raise UsageError(
            f"saga {contract.name!r} has {len(mine)} steps of service {service!r}",
            hint=f"name one with --step ({', '.join(contract.step_names)})",
        )
    return mine[0]


def sample_payload(cls: type[Event], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A valid payload of ``cls``: ``overrides``, then a sample for each other required
    field of a plain type (a string, 1, 1.0, false)."""
    data: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        if name in overrides or not info.is_required():
            continue
        if info.annotation in _SAMPLES:
            data[name] = _SAMPLES[info.annotation]
    data.update(overrides)
    try:
        cls.model_validate(data)
    except ValidationError as exc:
        raise UsageError(
            f"cannot make a valid {cls.event_type} payload: {exc.errors()[0]['msg']} "
            f"({'.'.join(map(str, exc.errors()[0]['loc']))})",
            hint="give its fields with --payload '{\"field\": ...}'",
        ) from None
    return data


class Inputs:
    """Records of the target's step for a gid."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def trigger(self, gid: str, payload: Mapping[str, Any], event_id: str = "") -> OutgoingRecord:
        """The step's trigger as its producer would publish it: a client's start event, or
        the previous step's done event (op action, outcome done, that step's name)."""
        step, contract = self.target.step, self.target.contract
        event = step.on.model_validate(payload)
        env = Envelope.first(event, gid=gid, saga=contract.name, source=SOURCE)
        previous = contract.dependency(step)
        if previous is not None:
            env = env.evolve(
                op="action", outcome="done", step=previous.name, source=previous.service or SOURCE
            )
        if event_id:
            env = env.evolve(event_id=event_id)
        return codec.encode(Message(env, event, step.on.topic))

    def compensation(self, gid: str, done: tuple[str, Mapping[str, Any]] | None) -> OutgoingRecord:
        """The step's compensation as the tracker issues it (op compensate, no outcome,
        attempt 1, a new id), built by the contract from the trigger and done event."""
        step, contract = self.target.step, self.target.contract
        try:
            event, _ = step.build_compensation(self.target.payload, done)
        except (ValueError, TypeError, ValidationError) as exc:
            raise UsageError(
                f"cannot build the compensation of step {step.name!r}: {exc}",
                hint="give the trigger's fields with --payload",
            ) from None
        env = Envelope.own(
            event,
            gid=gid,
            saga=contract.name,
            event_id=new_event_id(),
            source="tracker",
            step=step.name,
            op="compensate",
        )
        assert step.compensation is not None
        return codec.encode(Message(env, event, step.compensation.topic))


def header_of(record: OutgoingRecord, name: str) -> str:
    for key, value in record.headers:
        if key == name:
            return value.decode()
    return ""
