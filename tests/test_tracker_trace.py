"""A saga that times out is one trace, tracker included: the tracker's spans (a fold per
record, the deadline decision, a publish span per compensation it issues) sit in the
saga's trace with the parent links docs/observability.md describes.

- On the memory transport and store and on real Kafka + Redis with the SDK's in-memory
  exporter, the tracker being ``MemoryTracker`` in the test's process: faust in-process
  trips over the suite's event loop and warnings (see test_faust_tracker.py).
- On real Kafka + Redis with the faust tracker as ``choreo tracker`` in a subprocess,
  whose contract module installs a global SDK provider that writes each span to a file
  (tests/procs/traced_trip_tracker.py): ``choreo tracker`` uses the global provider.

The same scenario each time: the hotel never answers, its deadline fires, the hotel's and
then the flight's compensations run, the saga ends COMPENSATED.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from choreo import SagaStatus
from choreo.events import Message
from choreo.testing import Harness
from choreo.tracker.memory import MemoryTracker
from choreo.tracker.tracing import TrackerTracing
from tests.scenarios.trip import Plan, Travel, TripBooked, build_travel

pytestmark = pytest.mark.timeout(180)

DEADLINE = 5.0  # ample for the answering steps on a busy machine
# A long retry backoff: no compensation is re-issued while a slow broker confirms it.
BACKOFF = 60.0


@dataclass(frozen=True)
class Span:
    """What the checks read of a span, from the SDK's spans or the subprocess's file."""

    name: str
    kind: str
    trace_id: int
    span_id: int
    parent_id: int | None
    attributes: dict[str, Any]

    @classmethod
    def of(cls, span: ReadableSpan) -> Span:
        assert span.context is not None
        return cls(
            span.name,
            span.kind.name,
            span.context.trace_id,
            span.context.span_id,
            span.parent.span_id if span.parent else None,
            {k: v if isinstance(v, str | int | float) else list(v)
             for k, v in (span.attributes or {}).items()},
        )  # fmt: skip

    @classmethod
    def parse(cls, line: str) -> Span:
        raw = json.loads(line)
        return cls(
            raw["name"],
            raw["kind"],
            int(raw["trace_id"], 16),
            int(raw["span_id"], 16),
            int(raw["parent_id"], 16) if raw["parent_id"] else None,
            raw["attributes"],
        )


def _span_id(message: Message) -> int:
    return int(message.envelope.traceparent.split("-")[2], 16)


def _trace_id(message: Message) -> int:
    return int(message.envelope.traceparent.split("-")[1], 16)


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _travel(provider: TracerProvider) -> Travel:
    travel = build_travel(
        f"tt{uuid.uuid4().hex[:8]}", deadline=DEADLINE, retry_backoff=BACKOFF,
        retry_backoff_max=BACKOFF,
    )  # fmt: skip
    for service in travel.services:
        service.tracer_provider = provider
    return travel


def _start() -> TripBooked:
    return TripBooked(trip_id=uuid.uuid4().hex, plan=Plan(silent="hotel"))


def check_trace(gid: str, history: Sequence[Message], all_spans: Sequence[Span]) -> None:
    """The trace shape of a timed-out, compensated trip (docs/observability.md)."""
    types = [m.envelope.event_type.rsplit(".", 1)[-1] for m in history]
    for expected in ("TripBooked", "FlightBooked", "CancelHotel", "HotelCancelled",
                     "CancelFlight", "FlightCancelled", "SagaCompensated"):  # fmt: skip
        assert types.count(expected) == 1, types
    by_type = dict(zip(types, history, strict=True))
    spans = [s for s in all_spans if s.attributes.get("choreo.gid") == gid]

    def named(name: str) -> Span:
        [span] = [s for s in spans if s.name == name]
        return span

    # One trace: every record of the saga, and every span about it.
    trace_id = _trace_id(history[0])
    assert {_trace_id(m) for m in history} == {trace_id}
    assert spans
    assert {s.trace_id for s in spans} == {trace_id}
    ids = {s.span_id for s in spans}

    # A span per hop: every record is taken by the tracker's fold span, and the records
    # for a service by its process span; each is a child of the span the record names.
    consumed: dict[int | None, list[str]] = {}
    for span in spans:
        if span.kind == "CONSUMER":
            consumed.setdefault(span.parent_id, []).append(span.name)
    for t, message in by_type.items():
        names = consumed.get(_span_id(message), [])
        event_type = message.envelope.event_type
        assert f"{event_type} fold" in names, (t, names)
        if t in ("TripBooked", "FlightBooked", "CancelHotel", "CancelFlight"):
            assert f"{event_type} process" in names, (t, names)
        if t != "TripBooked":  # the start's parent is the publisher's, outside choreo
            assert _span_id(message) in ids, t

    # The deadline decision: a child of the span of the saga's last seen event (the
    # airline's, which emitted FlightBooked), saying what it decided.
    fired = named("deadline fired")
    assert fired.parent_id == _span_id(by_type["FlightBooked"])
    assert fired.attributes["choreo.status.before"] == "RUNNING"
    assert fired.attributes["choreo.status.after"] == "COMPENSATING"
    assert fired.attributes["choreo.timed_out"] == ["hotel"]

    # The compensation it issued: a publish span, child of the decision; the record
    # carries it, and the hotel's compensation handler is its child.
    cancel_hotel = by_type["CancelHotel"]
    issued = named(f"{cancel_hotel.envelope.event_type} publish")
    assert issued.kind == "PRODUCER"
    assert issued.parent_id == fired.span_id
    assert issued.attributes["choreo.decision"] == "compensation issued"
    assert issued.attributes["choreo.attempt"] == 1
    assert _span_id(cancel_hotel) == issued.span_id
    undo_hotel = named(f"{cancel_hotel.envelope.event_type} process")
    assert undo_hotel.parent_id == issued.span_id
    assert undo_hotel.attributes["choreo.op"] == "compensate"

    # The next compensation continues the chain: issued by the fold of the hotel's
    # confirmation, which the hotel's compensation span emitted.
    confirmed = by_type["HotelCancelled"]
    assert _span_id(confirmed) == undo_hotel.span_id
    fold = named(f"{confirmed.envelope.event_type} fold")
    cancel_flight = by_type["CancelFlight"]
    issued_flight = named(f"{cancel_flight.envelope.event_type} publish")
    assert issued_flight.parent_id == fold.span_id
    assert _span_id(cancel_flight) == issued_flight.span_id
    settled = named("choreo.SagaCompensated publish")
    assert settled.attributes["choreo.decision"] == "compensated"
    assert (
        settled.parent_id == named(f"{by_type['FlightCancelled'].envelope.event_type} fold").span_id
    )

    # Fold spans say what the fold did, in bounded attributes.
    first = named(f"{history[0].envelope.event_type} fold")
    assert first.attributes["choreo.status.before"] == ""
    assert first.attributes["choreo.status.after"] == "RUNNING"
    assert first.attributes["choreo.saga"] == "trip"
    assert all(len(str(v)) <= 200 for s in spans for v in s.attributes.values())


async def test_a_timed_out_saga_is_one_trace_with_the_trackers_decisions(
    backend: tuple[str, str],
) -> None:
    provider, exporter = _provider()
    travel = _travel(provider)
    tracker = MemoryTracker(
        [travel.contract], group=f"{travel.airline.group}.tracker", tracer_provider=provider
    )
    broker, store = backend
    async with Harness(*travel.services, tracker, broker=broker, store=store) as h:
        await h.drain(timeout=60)  # a new group on the session's Kafka replays the topic first
        gid = await h.publish(_start())
        state = await h.wait(gid, timeout=60)
        await h.drain(timeout=60)
    assert state.status is SagaStatus.COMPENSATED, state.reason
    check_trace(gid, h.history(gid), [Span.of(s) for s in exporter.get_finished_spans()])


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
async def test_the_faust_tracker_traces_with_the_global_provider(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import test_faust_tracker as ft

    spans_file = tmp_path / "tracker-spans.jsonl"
    monkeypatch.setattr(ft, "CONTRACT", "tests.procs.traced_trip_tracker:contract")
    env = {**ft.tracker_env(DEADLINE, 3, BACKOFF, BACKOFF), "CHOREO_TEST_SPANS": str(spans_file)}
    broker = f"kafka://{kafka_bootstrap}"
    tracker = ft.TrackerProcess(broker, f"{ft.APP_PREFIX}trace-{uuid.uuid4().hex[:8]}",
                                tmp_path, env)  # fmt: skip
    provider, exporter = _provider()
    travel = _travel(provider)
    tracker.start()
    try:
        await asyncio.to_thread(tracker.wait_ready)
        async with Harness(*travel.services, broker=broker, store=redis_url) as h:
            await h.drain(timeout=60)
            gid = await h.publish(_start())
            limit = time.monotonic() + 90
            while (saga := await tracker.saga(gid)) is None or saga["status"] != "COMPENSATED":
                assert time.monotonic() < limit, f"saga {gid}: {saga}\n{tracker.output()}"
                await asyncio.sleep(0.2)
            await h.drain(timeout=60)
            # The tracker's spans of the saga's last records (its own SagaCompensated's
            # fold) are written once it has read them back.
            while '"choreo.SagaCompensated fold"' not in _read(spans_file, gid):
                assert time.monotonic() < limit, tracker.output()
                await asyncio.sleep(0.2)
    finally:
        code = tracker.stop()
    assert code == 0, tracker.output()
    from_tracker = [Span.parse(line) for line in spans_file.read_text().splitlines()]
    assert {s.name for s in from_tracker if s.attributes.get("choreo.gid") == gid} >= {
        "deadline fired", "choreo.SagaCompensated publish",
    }  # fmt: skip
    services = [Span.of(s) for s in exporter.get_finished_spans()]
    check_trace(gid, h.history(gid), [*from_tracker, *services])


async def test_retries_and_stuck_are_decisions_in_the_trace() -> None:
    """A compensation that keeps failing: each retry is a ``deadline fired`` span with
    the re-issued compensation's publish span under it, and the last one, which gives
    up, has an error status and the ``SagaStuck`` alert's publish span under it."""
    provider, exporter = _provider()
    travel = build_travel(f"tt{uuid.uuid4().hex[:8]}", deadline=1.0, compensation_retries=3,
                          retry_backoff=0.2, retry_backoff_max=0.4)  # fmt: skip
    for service in travel.services:
        service.tracer_provider = provider
    tracker = MemoryTracker([travel.contract], tracer_provider=provider)
    async with Harness(*travel.services, tracker) as h:
        gid = await h.publish(
            TripBooked(trip_id=uuid.uuid4().hex, plan=Plan(lost="car", stuck="hotel"))
        )
        state = await h.wait(gid, timeout=60)
        await h.drain()
    assert state.status is SagaStatus.STUCK, state.reason
    finished = [
        s for s in exporter.get_finished_spans() if Span.of(s).attributes.get("choreo.gid") == gid
    ]
    spans = {s.span_id: s for s in map(Span.of, finished)}
    assert len({s.trace_id for s in spans.values()}) == 1
    issued = [s for s in spans.values() if s.name.endswith("CancelHotel publish")]
    assert sorted(s.attributes["choreo.attempt"] for s in issued) == [1, 2, 3]
    retries = [s for s in issued if s.attributes["choreo.attempt"] > 1]
    assert {spans[s.parent_id].name for s in retries if s.parent_id} == {"deadline fired"}
    [alert] = [s for s in spans.values() if s.name == "choreo.SagaStuck publish"]
    assert alert.attributes["choreo.decision"] == "stuck"
    assert alert.attributes["choreo.reason"] == state.reason
    assert alert.parent_id is not None
    gave_up = spans[alert.parent_id]
    assert gave_up.name == "deadline fired"
    assert gave_up.attributes["choreo.status.after"] == "STUCK"
    [raw] = [s for s in finished if s.context and s.context.span_id == gave_up.span_id]
    assert raw.status.status_code is StatusCode.ERROR
    assert raw.status.description == state.reason


def _read(path: Path, gid: str) -> str:
    if not path.exists():
        return ""
    return "\n".join(line for line in path.read_text().splitlines() if gid in line)


def test_without_an_sdk_the_tracker_makes_no_span() -> None:
    assert not TrackerTracing().enabled  # the test process installs no global provider
    assert TrackerTracing(TracerProvider()).enabled
