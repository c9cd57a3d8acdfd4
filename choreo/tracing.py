"""Tracing through OpenTelemetry's API: a span per handled record, its parent taken from
the record's ``traceparent`` header with OTel's W3C propagator, and the handler's
outgoing events carrying that span's context, so one saga is one trace across services.

choreo depends on ``opentelemetry-api`` only; the SDK and an exporter are the user's
choice (``pip install choreo[otel]`` installs the SDK and the OTLP exporter). Without an
SDK the tracer provider is OTel's no-op: choreo then starts no spans at all (not even
non-recording ones, which would still cost a header parse per record) and keeps the
trace going by giving each outgoing event a child span id of its cause's trace, as W3C
trace context asks.

A provider is looked up when a service starts (``Service.running``): set yours
(``opentelemetry.trace.set_tracer_provider``) before that, or hand one to the service
(``Service(tracer_provider=...)``), which is what tests do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from choreo.events import child_traceparent

if TYPE_CHECKING:
    from choreo.events import Message

TRACER_NAME = "choreo"
_PROPAGATOR = TraceContextTextMapPropagator()
_NO_OP_PROVIDERS = (trace.NoOpTracerProvider, trace.ProxyTracerProvider)


def sdk_configured(provider: trace.TracerProvider | None = None) -> bool:
    """Whether spans would be recorded: a provider was given, or one was installed
    globally (the API's default is a proxy to a no-op)."""
    if provider is not None:
        return not isinstance(provider, trace.NoOpTracerProvider)
    return not isinstance(trace.get_tracer_provider(), _NO_OP_PROVIDERS)


class Tracing:
    """What the dispatcher asks of tracing; ``enabled`` False makes every call free."""

    def __init__(self, service: str, provider: trace.TracerProvider | None = None) -> None:
        self.service = service
        self.enabled = sdk_configured(provider)
        source = provider if provider is not None else trace.get_tracer_provider()
        self.tracer = source.get_tracer(TRACER_NAME)

    def start_handle(self, message: Message, step: str, op: str, handler: str) -> Span | None:
        """The span of one handler's work on one record, child of the record's trace."""
        if not self.enabled:
            return None
        envelope = message.envelope
        parent = extract(envelope.traceparent)
        return self.tracer.start_span(
            f"{envelope.event_type} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": message.topic,
                "messaging.message.id": envelope.event_id,
                "messaging.consumer.group.name": self.service,
                "choreo.gid": envelope.gid,
                "choreo.saga": envelope.saga,
                "choreo.event_type": envelope.event_type,
                "choreo.step": step,
                "choreo.op": op,
                "choreo.handler": handler,
            },
        )

    @staticmethod
    def finish(span: Span | None, attributes: Mapping[str, str | int], error: str = "") -> None:
        if span is None:
            return
        span.set_attributes(attributes)
        if error:
            span.set_status(StatusCode.ERROR, error[:500])
        span.end()

    @staticmethod
    def traceparent(span: Span | None, cause: str) -> str:
        """The ``traceparent`` of an event emitted under ``span``: the span's context when
        it records, else a child span id in ``cause``'s trace."""
        if span is None or not span.get_span_context().is_valid:
            return child_traceparent(cause)
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return carrier.get("traceparent") or child_traceparent(cause)


def extract(traceparent: str) -> otel_context.Context:
    """The OTel context a ``traceparent`` header names (empty when it names none)."""
    return _PROPAGATOR.extract({"traceparent": traceparent} if traceparent else {})
