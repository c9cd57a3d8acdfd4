"""One saga is one trace: every handled record gets a span whose parent is the span that
emitted the record (through its ``traceparent`` header, OTel's W3C propagator), the
handler's own spans are children of it, and the outgoing events carry its context. On
the memory transport and on real Kafka + Redis, with the SDK's in-memory exporter; and
without an SDK, no spans and the trace id still kept from hop to hop.
"""

from __future__ import annotations

import uuid

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from choreo import Context, Event, SagaStatus, Service
from choreo.testing import Harness
from choreo.tracing import Tracing


def chain(tag: str, provider: TracerProvider | None) -> tuple[Service, Service, type[Event]]:
    class Placed(Event, type=f"trace.{tag}.Placed", topic=f"trace.{tag}.a"):
        n: int

    class Checked(Event, type=f"trace.{tag}.Checked", topic=f"trace.{tag}.b"):
        n: int

    class Shipped(Event, type=f"trace.{tag}.Shipped", topic=f"trace.{tag}.c"):
        n: int

    first = Service(f"check{tag}", tracer_provider=provider)
    second = Service(f"ship{tag}", tracer_provider=provider)
    tracer = (provider or trace.get_tracer_provider()).get_tracer("user-code")

    @first.on_event(Placed, step="check")
    async def check(event: Placed, ctx: Context) -> Checked:
        with tracer.start_as_current_span("look up the order"):  # the user's own span
            return Checked(n=event.n)

    @second.on_event(Checked, step="ship")
    async def ship(event: Checked, ctx: Context) -> Shipped:
        return Shipped(n=event.n)

    second.register_events(Shipped)
    return first, second, Placed


def trace_id(traceparent: str) -> str:
    return traceparent.split("-")[1]


def span_id(traceparent: str) -> str:
    return traceparent.split("-")[2]


@pytest.mark.parametrize("runs", [3])
async def test_one_saga_is_one_trace(backend: tuple[str, str], runs: int) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tag = uuid.uuid4().hex[:8]
    first, second, placed = chain(tag, provider)
    broker, store = backend
    async with Harness(first, second, broker=broker, store=store) as h:
        gids = [await h.publish(placed(n=n)) for n in range(runs)]  # type: ignore[call-arg]
        await h.drain(timeout=60)
    spans = exporter.get_finished_spans()
    for gid in gids:
        history = h.history(gid)
        assert [m.envelope.event_type.rsplit(".", 1)[1] for m in history] == [
            "Placed",
            "Checked",
            "Shipped",
        ]
        start, checked, shipped = history
        mine = [s for s in spans if _trace_of(s) == trace_id(start.envelope.traceparent)]
        by_name = {s.name: s for s in mine}
        assert set(by_name) == {
            f"trace.{tag}.Placed process",
            "look up the order",
            f"trace.{tag}.Checked process",
        }, [s.name for s in mine]
        handle_placed = by_name[f"trace.{tag}.Placed process"]
        user = by_name["look up the order"]
        handle_checked = by_name[f"trace.{tag}.Checked process"]
        # The first hop's parent is the (remote) span that published the start event.
        assert handle_placed.parent is not None
        assert f"{handle_placed.parent.span_id:016x}" == span_id(start.envelope.traceparent)
        assert handle_placed.kind is trace.SpanKind.CONSUMER
        # The handler's own span is a child of the hop's span.
        assert user.parent is not None
        assert user.parent.span_id == handle_placed.context.span_id
        # The emitted event carries the hop's span, and the next hop is its child.
        assert span_id(checked.envelope.traceparent) == f"{handle_placed.context.span_id:016x}"
        assert handle_checked.parent is not None
        assert handle_checked.parent.span_id == handle_placed.context.span_id
        assert span_id(shipped.envelope.traceparent) == f"{handle_checked.context.span_id:016x}"
        assert {trace_id(m.envelope.traceparent) for m in history} == {
            trace_id(start.envelope.traceparent)
        }
        attributes = dict(handle_placed.attributes or {})
        assert attributes["choreo.gid"] == gid
        assert attributes["choreo.step"] == "check"
        assert attributes["choreo.op"] == "action"
        assert attributes["choreo.decision"] == "applied"
        assert attributes["choreo.outputs"] == 1
        assert attributes["messaging.destination.name"] == f"trace.{tag}.a"


def _trace_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


async def test_without_an_sdk_no_spans_and_the_trace_is_kept() -> None:
    assert not Tracing("x").enabled  # the test process installs no global provider
    tag = uuid.uuid4().hex[:8]
    first, second, placed = chain(tag, None)
    async with Harness(first, second) as h:
        gid = await h.publish(placed(n=1))  # type: ignore[call-arg]
        await h.drain()
    parents = [m.envelope.traceparent for m in h.history(gid)]
    assert len(parents) == 3
    assert len({trace_id(p) for p in parents}) == 1  # one trace
    assert len({span_id(p) for p in parents}) == 3  # a new span id per hop


async def test_a_timed_out_saga_stays_one_trace() -> None:
    """The tracker's deadline check and the compensations it issues after a timeout
    continue the trace of the saga's last event, instead of starting their own."""
    from choreo.testing import MemoryTracker, VirtualClock
    from tests.scenarios.trip import Plan, TripBooked, build_travel

    travel = build_travel(f"tr{uuid.uuid4().hex[:8]}", deadline=600.0)
    async with Harness(*travel.services, MemoryTracker([travel.contract]),
                       clock=VirtualClock()) as h:  # fmt: skip
        gid = await h.publish(TripBooked(trip_id="t1", plan=Plan(silent="hotel")))
        await h.wait_for(gid, SagaStatus.RUNNING)
        await h.drain()
        await h.advance(601)
        state = await h.wait(gid, timeout=15)
        await h.drain()
    assert state.status is SagaStatus.COMPENSATED
    history = h.history(gid)
    by_tracker = [m for m in history if m.envelope.source == "tracker"]
    assert any(m.envelope.op == "compensate" for m in by_tracker), h.types(gid)
    assert {trace_id(m.envelope.traceparent) for m in history} == {
        trace_id(history[0].envelope.traceparent)
    }
