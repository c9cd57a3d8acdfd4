"""Saga contracts and the pure saga state machine the tracker is built around."""

from choreo.saga.contract import SagaContract, Step
from choreo.saga.machine import Publish, Transition, apply, compensation_event_id, on_deadline
from choreo.saga.state import (
    TERMINAL,
    SagaState,
    SagaStatus,
    StepState,
    StepStatus,
    TimelineEntry,
)

__all__ = [
    "TERMINAL",
    "Publish",
    "SagaContract",
    "SagaState",
    "SagaStatus",
    "Step",
    "StepState",
    "StepStatus",
    "TimelineEntry",
    "Transition",
    "apply",
    "compensation_event_id",
    "on_deadline",
]
