"""choreo: choreographed sagas over Kafka, with DTM's semantics.

The public API is exactly ``__all__`` and these modules:

- ``choreo.testing``: ``Harness``, several services (and a ``MemoryTracker``) in one test,
  with fault controls (``choreo.faults``) and a virtual clock;
- ``choreo.pytest_plugin``: the ``choreo_harness`` fixtures (registered with pytest);
- ``choreo.alerts``: ``StuckWebhook``, SagaStuck alerts delivered to a webhook;
- ``choreo.client``: ``TrackerClient``, a client of a tracker's state API;
- ``choreo.dashboard``: what ``choreo dashboard`` shows, as data (``Snapshot``) and rendered;
- ``choreo.local``: real Kafka, Redis and PostgreSQL servers as plain processes, for
  development.

Everything else may change between releases.
"""

from typing import TYPE_CHECKING, Any

from choreo.app import Service
from choreo.breaker import CircuitBreaker, CircuitOpen
from choreo.context import Context
from choreo.errors import (
    BusinessFailure,
    ChoreoError,
    ConfigurationError,
    ContractError,
    PoisonEvent,
    RetriableError,
    SchemaViolation,
    TransportError,
    UndecodableEvent,
    UnknownEventType,
    UsageError,
)
from choreo.events import Envelope, Event, Message
from choreo.middleware import Middleware
from choreo.retry import RetryPolicy
from choreo.router import Router
from choreo.saga.contract import SagaContract, Step
from choreo.saga.state import SagaState, SagaStatus
from choreo.store.base import Delete, Incr, Put, Store, Transaction
from choreo.system_events import (
    AdminCommand,
    CompensationSkipped,
    SagaCompensated,
    SagaCompleted,
    SagaStuck,
    StepFailed,
)
from choreo.transport.base import Transport
from choreo.urls import open_store, open_transport

if TYPE_CHECKING:
    from choreo.store.postgres import PostgresStore

__all__ = [
    "AdminCommand",
    "BusinessFailure",
    "ChoreoError",
    "CircuitBreaker",
    "CircuitOpen",
    "CompensationSkipped",
    "ConfigurationError",
    "Context",
    "ContractError",
    "Delete",
    "Envelope",
    "Event",
    "Incr",
    "Message",
    "Middleware",
    "PoisonEvent",
    "PostgresStore",
    "Put",
    "RetriableError",
    "RetryPolicy",
    "Router",
    "SagaCompensated",
    "SagaCompleted",
    "SagaContract",
    "SagaState",
    "SagaStatus",
    "SagaStuck",
    "SchemaViolation",
    "Service",
    "Step",
    "StepFailed",
    "Store",
    "Transaction",
    "Transport",
    "TransportError",
    "UndecodableEvent",
    "UnknownEventType",
    "UsageError",
    "open_store",
    "open_transport",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":  # imported on first use: it brings in asyncpg
        from choreo.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
