"""What a handler may ask for besides its event."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from choreo.codec import encode_headers
from choreo.errors import ConfigurationError
from choreo.events import Envelope, Event
from choreo.store.base import Store, Transaction

if TYPE_CHECKING:
    from choreo.store.postgres import Connection


@dataclass(slots=True)
class Context:
    """Per-delivery context, passed to handlers that declare a ``Context`` parameter.

    ``tx`` collects store effects that are applied atomically with the step's barrier
    record; ``publish`` queues extra events that go out with the return value, after
    that commit, so a crash can never publish an event whose effect was not recorded.
    """

    envelope: Envelope
    step: str
    store: Store
    service_logger: logging.Logger
    tx: Transaction = field(default_factory=Transaction)
    outbox: list[Event] = field(default_factory=list)
    sql: Any = None  # the store transaction's connection, on a PostgreSQL store
    state: Any = None  # the service's ``state`` (see ``Service``): resources for handlers

    @property
    def has_db(self) -> bool:
        """True when the service's store is a database whose transaction ``db`` is."""
        return self.sql is not None

    @property
    def db(self) -> Connection:
        """The open transaction on the service's PostgreSQL store (an asyncpg connection):
        the handler's SQL commits together with the step's barrier record and outgoing
        events, or not at all (a ``BusinessFailure`` rolls it back; docs/postgres.md)."""
        if self.sql is None:
            raise ConfigurationError(
                "ctx.db needs a postgresql:// store (Service(store='postgresql://...'))"
            )
        conn: Connection = self.sql
        return conn

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """The service's logger with gid, step and event id as ``extra`` (made on use:
        most handlers never log)."""
        extra = {"gid": self.envelope.gid, "step": self.step, "event_id": self.envelope.event_id}
        return logging.LoggerAdapter(self.service_logger, extra)

    @property
    def gid(self) -> str:
        return self.envelope.gid

    @property
    def headers(self) -> dict[str, str]:
        """The envelope as the record's headers carried it (see docs/wire-format.md)."""
        return {name: value.decode() for name, value in encode_headers(self.envelope)}

    @property
    def attempt(self) -> int:
        return self.envelope.attempt

    def publish(self, *events: Event) -> None:
        self.outbox.extend(events)
