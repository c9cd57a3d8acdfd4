"""choreo's error tree.

Every error says whether retrying can help, the idea aiokafka's ``retriable`` flag
made familiar: a business failure compensates, an infrastructure failure retries.

    ChoreoError
    ├── ConfigurationError        wrong use of the API, raised at decoration/start-up
    │   └── ContractError         a malformed saga contract, raised at import
    ├── BusinessFailure           the step cannot succeed: compensate, never retry
    ├── RetriableError            transient: retry with backoff, then dead-letter
    │   └── TransportError        the broker or the store did not answer
    ├── StoreLost                 the store forgot its barrier records: stop, never guess
    ├── PoisonEvent               the bytes can never be handled: dead-letter at once
    │   ├── UndecodableEvent      not UTF-8, not JSON, over a size or depth limit
    │   ├── SchemaViolation       JSON that does not fit the event's model
    │   └── UnknownEventType      no event class is registered for its type header
    └── UsageError                CLI misuse; carries a hint on how to fix it
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel


class ChoreoError(Exception):
    """Base of every error choreo raises on purpose."""

    retriable: ClassVar[bool] = False


class ConfigurationError(ChoreoError):
    """The API was used in a way that can never work; raised as early as possible."""


class ContractError(ConfigurationError):
    """A saga contract is inconsistent (unknown step, cycle, missing event...)."""


class BusinessFailure(ChoreoError):
    """Raised by a handler when its step cannot succeed for business reasons.

    The step's effects are discarded, the barrier records the step as failed (so a
    redelivery does not run it again and a later compensation is a null compensation),
    and ``event`` is published, or a ``StepFailed`` system event when it is None.
    """

    # Typed as pydantic's BaseModel, not choreo.Event: events import this module, and
    # the error tree imports nothing of choreo's (the dispatcher checks it is an Event).
    def __init__(self, reason: str, event: BaseModel | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event = event


class RetriableError(ChoreoError):
    """A transient failure: the dispatcher retries it with capped exponential backoff."""

    retriable = True


class TransportError(RetriableError):
    """The broker or the store failed or timed out."""


class StoreLost(ChoreoError):
    """The store was emptied or replaced under a running service (a Redis restarted
    without persistence, a failover to an empty replica): its barrier records are gone,
    so a redelivery would run twice. The service stops instead of guessing."""


class PoisonEvent(ChoreoError):
    """An incoming record that can never be handled; it goes to the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UndecodableEvent(PoisonEvent):
    """The value is not UTF-8 JSON, or breaks the size or nesting limit."""


class SchemaViolation(PoisonEvent):
    """The payload does not validate against the event class."""


class UnknownEventType(PoisonEvent):
    """The record's type header names no registered event class."""


class UsageError(ChoreoError):
    """A person used the CLI wrongly; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def is_retriable(exc: BaseException) -> bool:
    """Unknown exceptions count as infrastructure trouble: retrying is the safe default."""
    if isinstance(exc, ChoreoError):
        return exc.retriable
    return not isinstance(exc, TypeError | ValueError | AttributeError | KeyError)
