"""The tracker's spans: one per decision, so a saga's trace shows what the tracker did.

- ``<event type> fold`` (CONSUMER): the fold of a saga's record, child of the span the
  record names (its ``traceparent``): gid, saga, event type, status before and after.
- ``deadline fired`` (INTERNAL): the fold of a ``DeadlineCheck`` that changed the saga
  (steps timed out, a compensation retried, the saga STUCK), child of the span of the
  saga's last seen event (``SagaState.traceparent``), not of the check, which the timer
  sends and no span records.
- ``<event type> publish`` (PRODUCER): each record a decision publishes, child of the
  decision's span, from the fold until the broker acknowledged it, with
  ``choreo.decision`` ``compensation issued``, ``stuck``, ``completed``,
  ``compensated`` or ``step re-published``. The record carries this span's context, so
  the services' spans for a compensation continue the saga's trace under it.

The pure core stays free of OpenTelemetry: it takes the records' ``traceparent`` strings
(``TrackerCore.records(..., traceparents=...)``). As in ``choreo.tracing``, without an
SDK ``enabled`` is False and the pipeline makes no call here at all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from choreo.events import Message
from choreo.saga.state import SagaState, SagaStatus
from choreo.saga.transition import Publish, Transition
from choreo.system_events import DeadlineCheck, SagaCompensated, SagaCompleted, SagaStuck
from choreo.tracing import TRACER_NAME, Tracing, extract, sdk_configured
from choreo.transport.base import Record

# Attribute strings are cut here: a reason is the business's text, never a payload, but
# still not unbounded.
MAX_ATTRIBUTE = 200


class TrackerTracing:
    """What the pipeline asks of tracing; ``enabled`` False: the pipeline calls nothing."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self.enabled = sdk_configured(provider)
        source = provider if provider is not None else trace.get_tracer_provider()
        self.tracer = source.get_tracer(TRACER_NAME)

    @staticmethod
    def now() -> int:
        """A decision's start, taken before the fold (ns, OTel's span time)."""
        return time.time_ns()

    def decide(
        self,
        record: Record,
        message: Message,
        before: SagaState | None,
        transition: Transition,
        started: int,
    ) -> tuple[list[str], list[Span]]:
        """The spans of one fold that began at ``started``: its decision span (ended)
        and a publish span per action (open until their records are acknowledged);
        returns the ``traceparent`` each action's record must carry, and the open
        spans. A ``DeadlineCheck`` that changed nothing makes no span."""
        after = transition.state
        envelope = message.envelope
        deadline = isinstance(message.event, DeadlineCheck)
        if deadline and after is before:
            return [], []
        attributes: dict[str, str | int | Sequence[str]] = {
            "choreo.gid": envelope.gid,
            "choreo.saga": after.saga,
            "choreo.event_type": envelope.event_type,
            "choreo.status.before": before.status.value if before is not None else "",
            "choreo.status.after": after.status.value,
            "choreo.version": after.version,
            "choreo.actions": len(transition.actions),
        }
        if deadline:
            assert before is not None  # a check of an unknown saga folds into nothing
            name, kind = "deadline fired", SpanKind.INTERNAL
            parent = extract(before.traceparent)
            timed_out = [
                step
                for step, cur in after.steps.items()
                if cur.outcome_note == "timed out"
                and (was := before.steps.get(step)) is not None
                and was.outcome_note != "timed out"
            ]
            attributes["choreo.timed_out"] = timed_out
        else:
            name, kind = f"{envelope.event_type} fold", SpanKind.CONSUMER
            parent = extract(envelope.traceparent)
            attributes.update(
                {
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": record.topic,
                    "messaging.destination.partition.id": str(record.partition),
                    "messaging.kafka.offset": record.offset,
                    "messaging.message.id": envelope.event_id,
                    "choreo.step": envelope.step,
                    "choreo.op": envelope.op,
                }
            )
            if after is before:
                attributes["choreo.duplicate"] = 1  # seen before: the state is unchanged
        decision = self.tracer.start_span(
            name, context=parent, kind=kind, attributes=attributes, start_time=started
        )
        under = trace.set_span_in_context(decision)
        traces: list[str] = []
        spans: list[Span] = []
        for action in transition.actions:
            span = self.tracer.start_span(
                f"{action.event.event_type} publish",
                context=under,
                kind=SpanKind.PRODUCER,
                attributes=_publish_attributes(after, action),
            )
            spans.append(span)
            traces.append(Tracing.traceparent(span, envelope.traceparent))
        if after.status is SagaStatus.STUCK and (before is None or not before.status.is_terminal):
            decision.set_status(StatusCode.ERROR, (after.reason or "STUCK")[:MAX_ATTRIBUTE])
        decision.end()
        return traces, spans

    @staticmethod
    def sent(spans: Sequence[Span], error: str = "") -> None:
        """End the publish spans once their records are acknowledged (or given up)."""
        for span in spans:
            if error:
                span.set_status(StatusCode.ERROR, error[:MAX_ATTRIBUTE])
            span.end()


def _publish_attributes(state: SagaState, action: Publish) -> dict[str, str | int]:
    event = action.event
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": event.topic,
        "messaging.message.id": action.event_id,
        "choreo.gid": state.gid,
        "choreo.saga": state.saga,
        "choreo.event_type": event.event_type,
        "choreo.step": action.step,
        "choreo.op": action.op,
        "choreo.decision": _decision(action),
    }
    if action.op == "compensate" and (cur := state.steps.get(action.step)) is not None:
        attributes["choreo.attempt"] = cur.compensation_attempts
    if isinstance(event, SagaStuck):
        attributes["choreo.reason"] = event.reason[:MAX_ATTRIBUTE]
    return attributes


def _decision(action: Publish) -> str:
    event = action.event
    if action.op == "compensate":
        return "compensation issued"
    if isinstance(event, SagaStuck):
        return "stuck"
    if isinstance(event, SagaCompleted):
        return "completed"
    if isinstance(event, SagaCompensated):
        return "compensated"
    if action.op == "action":
        return "step re-published"
    return "published"
