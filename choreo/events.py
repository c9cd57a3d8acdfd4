"""Events and their envelope.

An event is an immutable pydantic model: the business fact. The envelope is the
metadata choreo moves beside it in record headers (see docs/wire-format.md), so routers
and the tracker never parse payloads they do not own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from choreo.errors import ConfigurationError

Op = Literal["action", "compensate", ""]
Outcome = Literal["done", "failed", "skipped", ""]

DEFAULT_TOPIC_PREFIX = "choreo."


class Event(BaseModel):
    """Base class of every event.

    Class keywords set the wire identity::

        class OrderPlaced(Event, type="order.placed", topic="orders", version=2): ...

    ``type`` defaults to the class name, ``topic`` to ``choreo.<type>``; subclasses inherit
    an explicit topic, so one base class can gather a saga's events on one topic.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str] = "Event"
    topic: ClassVar[str] = "choreo.Event"
    schema_version: ClassVar[int] = 1
    __choreo_explicit_topic__: ClassVar[bool] = False

    def __init_subclass__(
        cls,
        type: str | None = None,
        topic: str | None = None,
        version: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if version < 1:
            raise ConfigurationError(f"{cls.__name__}: version must be >= 1, got {version}")
        cls.event_type = type or cls.__name__
        cls.schema_version = version
        if topic is not None:
            cls.topic, cls.__choreo_explicit_topic__ = topic, True
        elif not cls.__choreo_explicit_topic__:
            cls.topic = DEFAULT_TOPIC_PREFIX + cls.event_type

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # The wire keywords were consumed by __init_subclass__; pydantic must not see them.
        super().__pydantic_init_subclass__()


def new_event_id() -> str:
    return str(uuid.uuid4())


def derived_event_id(*parts: str) -> str:
    """A deterministic id: re-running the same step yields the same ids, so a repeat is
    recognisable downstream instead of looking like a new fact."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "choreo:" + "/".join(parts)))


def new_traceparent() -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


def child_traceparent(parent: str) -> str:
    """Keep the trace id, start a new span: W3C trace context's rule for a child."""
    pieces = parent.split("-")
    if len(pieces) != 4 or len(pieces[1]) != 32:
        return new_traceparent()
    return f"00-{pieces[1]}-{uuid.uuid4().hex[:16]}-{pieces[3]}"


@dataclass(frozen=True, slots=True)
class Envelope:
    """Everything about an event except its payload."""

    event_type: str
    gid: str
    event_id: str = field(default_factory=new_event_id)
    saga: str = ""
    step: str = ""
    op: Op = ""
    outcome: Outcome = ""
    causation_id: str = ""
    occurred_at: float = field(default_factory=time.time)
    schema_version: int = 1
    traceparent: str = field(default_factory=new_traceparent)
    attempt: int = 1
    source: str = ""

    def evolve(self, **changes: Any) -> Envelope:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Message:
    """An event with its envelope, ready to publish or just received."""

    envelope: Envelope
    event: Event
    topic: str

    @property
    def gid(self) -> str:
        return self.envelope.gid


class EventRegistry:
    """Maps wire type names to event classes; one per app, never global."""

    def __init__(self) -> None:
        self._by_type: dict[str, type[Event]] = {}

    def add(self, cls: type[Event]) -> type[Event]:
        if not (isinstance(cls, type) and issubclass(cls, Event)) or cls is Event:
            raise ConfigurationError(f"{cls!r} is not a subclass of choreo.Event")
        known = self._by_type.get(cls.event_type)
        if known is not None and known is not cls:
            raise ConfigurationError(
                f"event type {cls.event_type!r} is claimed by both {known.__qualname__} and "
                f"{cls.__qualname__}; give one of them type='...'"
            )
        self._by_type[cls.event_type] = cls
        return cls

    def get(self, event_type: str) -> type[Event] | None:
        return self._by_type.get(event_type)

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._by_type

    def __iter__(self) -> Iterator[type[Event]]:
        return iter(self._by_type.values())

    def merge(self, other: EventRegistry) -> None:
        for cls in other._by_type.values():
            self.add(cls)
