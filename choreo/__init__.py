"""choreo: choreographed sagas over Kafka, with DTM's semantics.

The public API is exactly ``__all__``; everything else may change between releases.
"""

from choreo.app import Service
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
from choreo.system_events import (
    AdminCommand,
    CompensationSkipped,
    SagaCompensated,
    SagaCompleted,
    SagaStuck,
    StepFailed,
)

__all__ = [
    "AdminCommand",
    "BusinessFailure",
    "ChoreoError",
    "CompensationSkipped",
    "ConfigurationError",
    "Context",
    "ContractError",
    "Envelope",
    "Event",
    "Message",
    "Middleware",
    "PoisonEvent",
    "RetriableError",
    "RetryPolicy",
    "Router",
    "SagaCompensated",
    "SagaCompleted",
    "SagaContract",
    "SagaStuck",
    "SchemaViolation",
    "Service",
    "Step",
    "StepFailed",
    "TransportError",
    "UndecodableEvent",
    "UnknownEventType",
    "UsageError",
]
