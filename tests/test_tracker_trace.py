"""A saga that times out is one trace, tracker included: the tracker's spans (a fold per
record, the deadline decision, a publish span per compensation it issues) sit in the
saga's trace with the parent links docs/observability.md describes, on the memory
transport and store and on real Kafka + Redis, with the SDK's in-memory exporter.

The tracker is ``MemoryTracker``, the in-process shell over the same ``TrackerPipeline``
as the faust tracker (faust in-process trips over the test's event loop; see
test_faust_tracker.py); the pipeline makes the spans, so both shells make the same ones.
"""

from __future__ import annotations

import uuid

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from choreo import SagaStatus
from choreo.testing import Harness
from choreo.tracker.memory import MemoryTracker
from choreo.tracker.tracing import TrackerTracing
from tests.scenarios.trip import Plan, TripBooked, build_travel

pytestmark = pytest.mark.timeout(180)


def _span_id(traceparent: str) -> int:
    return int(traceparent.split("-")[2], 16)


def _trace_id(traceparent: str) -> int:
    return int(traceparent.split("-")[1], 16)


def _parent(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def test_a_timed_out_saga_is_one_trace_with_the_trackers_decisions(
    backend: tuple[str, str],
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    prefix = f"tt{uuid.uuid4().hex[:8]}"
    # The hotel never answers: its deadline fires, and compensation goes hotel, flight.
    # A long retry backoff: no compensation is re-issued while a slow broker confirms it.
    travel = build_travel(prefix, deadline=3.0, retry_backoff=60.0, retry_backoff_max=60.0)
    for service in travel.services:
        service.tracer_provider = provider
    tracker = MemoryTracker([travel.contract], group=f"{prefix}.tracker", tracer_provider=provider)
    broker, store = backend
    async with Harness(*travel.services, tracker, broker=broker, store=store) as h:
        await h.drain(timeout=60)  # a new group on the session's Kafka replays the topic first
        gid = await h.publish(TripBooked(trip_id=uuid.uuid4().hex, plan=Plan(silent="hotel")))
        state = await h.wait(gid, timeout=60)
        await h.drain(timeout=60)
    assert state.status is SagaStatus.COMPENSATED, state.reason
    history = h.history(gid)
    types = [m.envelope.event_type.rsplit(".", 1)[-1] for m in history]
    for expected in ("TripBooked", "FlightBooked", "CancelHotel", "HotelCancelled",
                     "CancelFlight", "FlightCancelled", "SagaCompensated"):  # fmt: skip
        assert types.count(expected) == 1, types
    by_type = {t: m for t, m in zip(types, history, strict=True)}

    # One trace: every record of the saga, and every span about it.
    trace_id = _trace_id(history[0].envelope.traceparent)
    assert {_trace_id(m.envelope.traceparent) for m in history} == {trace_id}
    spans = [s for s in exporter.get_finished_spans() if s.attributes.get("choreo.gid") == gid]  # type: ignore[union-attr]
    assert spans
    assert {s.context.trace_id for s in spans if s.context} == {trace_id}
    ids = {_id(s) for s in spans}

    # A span per hop: every record is taken by the tracker's fold span, and the records
    # for a service by its process span; each is a child of the span the record names.
    consumed: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        if span.kind is trace.SpanKind.CONSUMER:
            consumed.setdefault(_parent(span), []).append(span)
    for t, message in by_type.items():
        names = sorted(s.name for s in consumed.get(_span_id(message.envelope.traceparent), []))
        event_type = message.envelope.event_type
        assert f"{event_type} fold" in names, (t, names)
        if t in ("TripBooked", "FlightBooked", "CancelHotel", "CancelFlight"):
            assert f"{event_type} process" in names, (t, names)
        # Spans from the harness's publish down: all but the start's parent are ours.
        if t != "TripBooked":
            assert _span_id(message.envelope.traceparent) in ids, t

    # The deadline decision: a child of the span of the saga's last seen event (the
    # airline's, which emitted FlightBooked), with what it decided.
    [fired] = [s for s in spans if s.name == "deadline fired"]
    assert _parent(fired) == _span_id(by_type["FlightBooked"].envelope.traceparent)
    attributes = dict(fired.attributes or {})
    assert attributes["choreo.status.before"] == "RUNNING"
    assert attributes["choreo.status.after"] == "COMPENSATING"
    assert tuple(attributes["choreo.timed_out"]) == ("hotel",)  # type: ignore[arg-type]

    # The compensation it issued: a publish span, child of the decision; the record
    # carries it, and the hotel's compensation handler is its child.
    cancel_hotel = by_type["CancelHotel"]
    [issued] = [s for s in spans if s.name == f"{cancel_hotel.envelope.event_type} publish"]
    assert issued.kind is trace.SpanKind.PRODUCER
    assert _parent(issued) == _id(fired)
    assert dict(issued.attributes or {})["choreo.decision"] == "compensation issued"
    assert _span_id(cancel_hotel.envelope.traceparent) == _id(issued)
    [undo_hotel] = [s for s in spans if s.name == f"{cancel_hotel.envelope.event_type} process"]
    assert _parent(undo_hotel) == _id(issued)
    assert dict(undo_hotel.attributes or {})["choreo.op"] == "compensate"

    # The next compensation continues the chain: issued by the fold of the hotel's
    # confirmation, which the hotel's compensation span emitted.
    confirmed = by_type["HotelCancelled"]
    assert _span_id(confirmed.envelope.traceparent) == _id(undo_hotel)
    [fold] = [s for s in spans if s.name == f"{confirmed.envelope.event_type} fold"]
    cancel_flight = by_type["CancelFlight"]
    [issued_flight] = [s for s in spans if s.name == f"{cancel_flight.envelope.event_type} publish"]
    assert _parent(issued_flight) == _id(fold)
    assert _span_id(cancel_flight.envelope.traceparent) == _id(issued_flight)
    [settled] = [s for s in spans if s.name == "choreo.SagaCompensated publish"]
    assert dict(settled.attributes or {})["choreo.decision"] == "compensated"

    # Fold spans say what the fold did, in bounded attributes.
    [first] = [s for s in spans if s.name == f"{history[0].envelope.event_type} fold"]
    attributes = dict(first.attributes or {})
    assert attributes["choreo.status.before"] == ""
    assert attributes["choreo.status.after"] == "RUNNING"
    assert attributes["choreo.saga"] == "trip"
    assert all(len(str(v)) <= 200 for s in spans for v in (s.attributes or {}).values())


def test_without_an_sdk_the_tracker_makes_no_span() -> None:
    assert not TrackerTracing().enabled  # the test process installs no global provider
    assert TrackerTracing(TracerProvider()).enabled
