"""The compact stored form of a saga's state and of its timeline (msgpack).

The tracker keeps every saga of its partitions and reads and writes one per event, so
what it stores is a positional msgpack array, not a pydantic model or its JSON: a saga
in flight packs to a few hundred bytes and unpacks without validation (the tracker wrote
it). The human timeline is packed apart (``pack_entries``): the tracker never reads it to
fold an event, so it is stored under its own keys and only read to show a saga.

Fields are stored in the models' declaration order; a field added at the end of a model
unpacks from older records with its default. A JSON state written by an earlier version
still unpacks (with its timeline).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import msgpack
from pydantic import BaseModel

from choreo.saga.state import SagaState, SagaStatus, StepState, StepStatus, TimelineEntry

FORMAT = 1
M = TypeVar("M", bound=BaseModel)
# What stays out of the packed state: the timeline is stored apart.
_STATE_FIELDS = tuple(name for name in SagaState.model_fields if name != "timeline")
_STEP_FIELDS = tuple(StepState.model_fields)
_ENTRY_FIELDS = tuple(TimelineEntry.model_fields)
_INDEX = {name: n + 1 for n, name in enumerate(_STATE_FIELDS)}  # +1: the format comes first
_SAGA, _STATUS, _VERSION = _INDEX["saga"], _INDEX["status"], _INDEX["version"]
_STARTED, _UPDATED, _RESOLVED = _INDEX["started_at"], _INDEX["updated_at"], _INDEX["resolved"]


class Peek(NamedTuple):
    """What listing and counting sagas need, read without building the state."""

    saga: str
    status: SagaStatus
    version: int
    started_at: float
    updated_at: float
    resolved: bool

    @property
    def stuck_unresolved(self) -> bool:
        return self.status == SagaStatus.STUCK and not self.resolved


def pack_state(state: SagaState) -> bytes:
    """The state without its timeline."""
    values: list[Any] = [FORMAT]
    for name in _STATE_FIELDS:
        value = getattr(state, name)
        if name == "steps":
            value = {
                step_name: [getattr(step, f) for f in _STEP_FIELDS]
                for step_name, step in value.items()
            }
        values.append(value)
    packed: bytes = msgpack.packb(values)
    return packed


def unpack_state(raw: bytes) -> SagaState:
    """A packed state (its timeline empty), or a JSON one of an earlier version."""
    if raw[:1] == b"{":
        return SagaState.model_validate_json(raw)
    values = _values(raw)
    try:
        fields = dict(zip(_STATE_FIELDS, values[1:], strict=False))
        fields["status"] = SagaStatus(fields["status"])
        fields["steps"] = {
            name: _step(dict(zip(_STEP_FIELDS, step, strict=False)))
            for name, step in fields["steps"].items()
        }
    except (KeyError, TypeError, AttributeError) as exc:  # not a state this code packed
        raise ValueError(f"not a packed saga state: {exc!r}") from exc
    fields["timeline"] = []
    return _construct(SagaState, fields, _STATE_NAMES)


def _step(fields: dict[str, Any]) -> StepState:
    fields["status"] = StepStatus(fields["status"])
    return _construct(StepState, fields, _STEP_NAMES)


_STATE_NAMES = frozenset(SagaState.model_fields)
_STEP_NAMES = frozenset(_STEP_FIELDS)


def _construct(cls: type[M], fields: dict[str, Any], names: frozenset[str]) -> M:
    """``cls.model_construct(**fields)`` for a complete set of fields, in a quarter of its
    time (it looks at every field's default, and inspects default factories' signatures
    on every call); a record of an older format, missing fields, takes that path."""
    if fields.keys() != names:
        return cls.model_construct(**fields)
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", fields)
    object.__setattr__(model, "__pydantic_fields_set__", set(names))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


def peek(raw: bytes) -> Peek:
    if raw[:1] == b"{":
        s = SagaState.model_validate_json(raw)
        return Peek(s.saga, s.status, s.version, s.started_at, s.updated_at, s.resolved)
    v = _values(raw)
    return Peek(v[_SAGA], SagaStatus(v[_STATUS]), v[_VERSION], v[_STARTED], v[_UPDATED],
                v[_RESOLVED])  # fmt: skip


def _values(raw: bytes) -> list[Any]:
    try:
        values = msgpack.unpackb(raw)
    except Exception as exc:  # msgpack's errors are not all ValueErrors
        raise ValueError(f"not a packed saga state: {exc!r}") from exc
    if not isinstance(values, list) or not values or values[0] != FORMAT:
        raise ValueError("not a packed saga state of format 1")
    return values


def pack_entries(entries: Sequence[TimelineEntry]) -> bytes:
    packed: bytes = msgpack.packb([[getattr(e, f) for f in _ENTRY_FIELDS] for e in entries])
    return packed


def unpack_entries(raw: bytes) -> list[TimelineEntry]:
    return [
        TimelineEntry.model_construct(**dict(zip(_ENTRY_FIELDS, values, strict=False)))
        for values in msgpack.unpackb(raw)
    ]


_STEPS, _CLEARED = _INDEX["steps"], _INDEX["cleared_at"]
_S_STATUS = _STEP_FIELDS.index("status")
_S_DEADLINE = _STEP_FIELDS.index("deadline_at")
_S_RETRY = _STEP_FIELDS.index("next_retry_at")
_SETTLED = frozenset({SagaStatus.COMPLETED.value, SagaStatus.COMPENSATED.value})
# A step still compensating, as packed: a COMPLETED or COMPENSATED state without these
# bytes has no step with a retry to wait for (the only deadline such a state can have).
_COMPENSATING = msgpack.packb(StepStatus.COMPENSATING.value)


class Head(NamedTuple):
    """What a tracker's restart needs of a stored state (its counts and when its deadline
    index must wake it), read without building the state: ``SagaState.next_deadline`` and
    ``settled_at`` of the state, computed from the packed fields."""

    saga: str
    status: SagaStatus
    version: int
    next_deadline: float | None
    settled_at: float | None
    resolved: bool

    @property
    def stuck_unresolved(self) -> bool:
        return self.status == SagaStatus.STUCK and not self.resolved


def head(raw: bytes) -> Head:
    """``Head`` of one packed state (see ``head_reader``)."""
    return head_reader()(raw)


_STATUSES = {status.value: status for status in SagaStatus}
_WANTED = frozenset({_SAGA, _STATUS, _STEPS, _VERSION, _UPDATED, _RESOLVED, _CLEARED})
_FIELDS = len(_STATE_FIELDS) + 1
# The order ``head_reader`` reads a whole record of this version in (else field by field).
_LAYOUT = _STATE_FIELDS == (
    "gid", "saga", "status", "steps", "version", "started_at", "updated_at", "finished_at",
    "reason", "payloads", "replies", "compensations", "seen_ids", "resolved", "resolved_by",
    "resolved_note", "cleared_at", "traceparent",
)  # fmt: skip


def head_reader() -> Callable[[bytes], Head]:
    """A function giving ``Head`` of packed states, for reading many (a restart reads
    every state of its store). A msgpack stream unpacks only the fields a head needs and
    skips the rest (payloads, replies, event ids); a COMPLETED or COMPENSATED saga (the
    finished ones a tracker keeps for their retention, most of its store) is read only up
    to its ``updated_at``, its steps skipped, unless a step may still be compensating:
    about 4 us a state here, against 25 us to unpack every field and 60 us to build the
    state. (A record cut short is a ValueError; bytes after the fields a head needs are
    not read.)"""
    unpacker_class = msgpack.Unpacker

    def read(raw: bytes) -> Head:
        if raw[:1] == b"{":
            s = SagaState.model_validate_json(raw)
            return Head(s.saga, s.status, s.version, s.next_deadline(), s.settled_at(),
                        s.resolved)  # fmt: skip
        try:
            unpacker = unpacker_class()
            unpacker.feed(raw)
            count = unpacker.read_array_header()
            if count < 1 or unpacker.unpack() != FORMAT:
                raise ValueError("not a packed saga state of format 1")
            if count == _FIELDS and _LAYOUT:  # this version's records: straight through
                unpack, skip = unpacker.unpack, unpacker.skip
                skip()  # gid
                saga, value = unpack(), unpack()
                if value in _SETTLED and _COMPENSATING not in raw:
                    skip()  # steps
                    version = unpack()
                    skip()  # started_at
                    return Head(saga, _STATUSES[value], version, None, unpack(), False)
                values: list[Any] = [None] * _FIELDS
                values[_SAGA], values[_STATUS] = saga, value
                values[_STEPS] = unpack()
                values[_VERSION] = unpack()
                skip()  # started_at
                values[_UPDATED] = unpack()
                for _ in range(6):  # finished_at ... seen_ids
                    skip()
                values[_RESOLVED] = unpack()
                skip()  # resolved_by
                skip()  # resolved_note
                values[_CLEARED] = unpack()
            else:  # a record of another version: field by field
                values = [None] * max(count, _FIELDS)
                for index in range(1, count):
                    if index in _WANTED:
                        values[index] = unpacker.unpack()
                    else:
                        unpacker.skip()
            status = _STATUSES[values[_STATUS]]
        except Exception as exc:
            raise ValueError(f"not a packed saga state: {exc!r}") from exc
        resolved = bool(values[_RESOLVED])
        settled = None
        if status.is_terminal and not (
            status == SagaStatus.STUCK and not resolved and values[_CLEARED] is None
        ):
            settled = values[_UPDATED]
        times = []
        try:
            for step in values[_STEPS].values():
                if step[_S_STATUS] == StepStatus.COMPENSATING.value:
                    if step[_S_RETRY] is not None:
                        times.append(step[_S_RETRY])
                elif (
                    step[_S_STATUS] == StepStatus.PENDING.value
                    and status == SagaStatus.RUNNING
                    and step[_S_DEADLINE] is not None
                ):
                    times.append(step[_S_DEADLINE])
        except (AttributeError, TypeError, IndexError) as exc:
            raise ValueError(f"not a packed saga state: {exc!r}") from exc
        return Head(values[_SAGA], status, values[_VERSION], min(times, default=None), settled,
                    resolved)  # fmt: skip

    return read
