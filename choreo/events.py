"""Events and their envelope.

An event is an immutable pydantic model: the business fact. The envelope is the
metadata choreo moves beside it in record headers (see docs/wire-format.md), so routers
and the tracker never parse payloads they do not own.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import field, replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from choreo.errors import ConfigurationError
from choreo.values import value_type

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
    def upcast(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Turn the payload of an older ``version`` of this event into the current shape
        before it is validated. Override it when you raise ``version=``; the default
        passes the payload through (fields added with defaults need nothing more)."""
        return data

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # The wire keywords were consumed by __init_subclass__; pydantic must not see them.
        super().__pydantic_init_subclass__()


def new_event_id() -> str:
    return str(uuid.uuid4())


# The hex digit carrying the variant bits, by the digest's digit there: 10xx.
_VARIANT = {digit: "89ab"[int(digit, 16) & 0x3] for digit in "0123456789abcdef"}


def derived_event_id(*parts: str) -> str:
    """A deterministic id: re-running the same step yields the same ids, so a repeat is
    recognisable downstream instead of looking like a new fact.

    A UUID (version 8, RFC 9562's custom layout) of the BLAKE2b digest of the parts
    joined by ``/``: one C call per id, where uuid5 cost a SHA-1 plus a UUID object on
    every outgoing event of the hot path."""
    h = hashlib.blake2b("/".join(parts).encode(), digest_size=16).hexdigest()
    # Version 8 in the 13th hex digit, RFC 9562's variant (0b10) in the top bits of the
    # 17th, set on the hex text: the same id as setting them on the bytes, fewer steps.
    return f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def new_traceparent() -> str:
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def child_traceparent(parent: str) -> str:
    """Keep the trace id, start a new span: W3C trace context's rule for a child."""
    if len(parent) != 55 or parent[2] != "-" or parent[35] != "-" or parent[52] != "-":
        return new_traceparent()
    return f"{parent[:36]}{os.urandom(8).hex()}{parent[52:]}"


@value_type
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

    # The three ways an envelope comes to be; nothing else calls the constructor with
    # hand-picked fields, so the rules (ids, causation, trace) live here once.

    @classmethod
    def first(
        cls, event: Event, *, gid: str | None = None, saga: str = "", source: str = ""
    ) -> Envelope:
        """The envelope of an event nothing caused: a saga's start event published by a
        client, or an operator's command. A new gid when none is given, a new trace."""
        return cls(
            event_type=event.event_type,
            gid=gid or new_event_id(),
            saga=saga,
            schema_version=event.schema_version,
            source=source,
        )

    @classmethod
    def keyed(
        cls, event: Event, *, key: str | None, gid: str | None, saga: str, source: str
    ) -> Envelope:
        """``first``, made repeatable by ``key``: the gid (unless given) and the event id
        are derived from the key, so the same key makes the same event (an idempotent
        saga start); without a key, ``first``."""
        if key is None:
            return cls.first(event, gid=gid, saga=saga, source=source)
        gid = gid or derived_event_id("choreo-start-gid", key)
        envelope = cls.first(event, gid=gid, saga=saga, source=source)
        return envelope.evolve(event_id=derived_event_id("choreo-start", key))

    def caused(
        self,
        event: Event,
        *,
        event_id: str,
        step: str,
        op: Op,
        outcome: Outcome = "",
        source: str,
        traceparent: str = "",
    ) -> Envelope:
        """The envelope of ``event``, published because of the event this envelope
        belongs to: same gid and saga, causation = this event, a child span of its trace
        (``traceparent``: the span the event was emitted under, see ``choreo.tracing``).
        ``event_id`` is deterministic (see ``derived_event_id``), so a re-run repeats it."""
        # Positional: this runs for every event a handler emits.
        return Envelope(
            event.event_type,
            self.gid,
            event_id,
            self.saga,
            step,
            op,
            outcome,
            self.event_id,
            time.time(),
            event.schema_version,
            traceparent or child_traceparent(self.traceparent),
            1,
            source,
        )

    @classmethod
    def own(
        cls,
        event: Event,
        *,
        gid: str,
        saga: str,
        event_id: str,
        source: str,
        step: str = "",
        op: Op = "",
        trace: str = "",
    ) -> Envelope:
        """The envelope of an event a component publishes on its own account (the
        tracker's deadline checks and timer-driven compensations): no cause; a child span
        in ``trace`` (the saga's last known traceparent), else a new trace."""
        return cls(
            event_type=event.event_type,
            gid=gid,
            event_id=event_id,
            saga=saga,
            step=step,
            op=op,
            schema_version=event.schema_version,
            source=source,
            traceparent=child_traceparent(trace) if trace else new_traceparent(),
        )


@value_type
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
