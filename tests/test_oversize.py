"""Records that could never be sent never block a partition: an output over the size
limit dead-letters its input before anything is applied, and a dead letter too large for
the broker drops its value (saying so) instead of failing to send (memory and real Kafka)."""

from __future__ import annotations

import uuid

from choreo import Context, Event, Service, codec
from choreo.deadletter import (
    H_DROPPED,
    H_REASON,
    MAX_DEAD_LETTER_BYTES,
    DeadLetter,
    dead_letter_record,
)
from choreo.testing import Harness
from choreo.transport.base import Record


def events(tag: str) -> tuple[type[Event], type[Event]]:
    class Ask(Event, type=f"big.{tag}.Ask", topic=f"big.{tag}"):
        size: int

    class Answer(Event, type=f"big.{tag}.Answer", topic=f"big.{tag}"):
        blob: str

    return Ask, Answer


async def test_an_oversized_output_dead_letters_its_input_and_the_partition_flows(
    backend: tuple[str, str],
) -> None:
    broker, store = backend
    Ask, Answer = events(uuid.uuid4().hex[:8])
    app = Service("big", limits=codec.Limits(max_record_bytes=50_000))
    app.register_events(Answer)

    @app.on_event(Ask, step="answer")
    async def answer(event: Ask, ctx: Context) -> Event:  # type: ignore[valid-type]
        ctx.tx.incr(f"answers:{ctx.gid}", 1)
        return Answer(blob="x" * event.size)  # type: ignore[attr-defined]

    async with Harness(app, broker=broker, store=store) as h:
        big = await h.publish(Ask(size=60_000))  # type: ignore[call-arg]
        small = await h.publish(Ask(size=10))  # type: ignore[call-arg]
        await h.drain()
        [dead] = h.dead_letters(big)
        assert b"over the 50000 byte limit" in dict(dead.headers)[H_REASON]
        assert h.types(big) == [Ask.event_type]  # nothing was published for it
        assert await h.store.get(f"answers:{big}") is None  # and nothing applied
        assert h.types(small) == [Ask.event_type, Answer.event_type]
        assert await h.store.get(f"answers:{small}") == "1"


def test_a_dead_letter_too_large_for_the_broker_drops_its_value_and_says_so() -> None:
    value = b"v" * (MAX_DEAD_LETTER_BYTES - 100)
    record = Record("t", 0, 7, b"gid", value, (("choreo-type", b"X"), ("huge", b"h" * 9000)))
    out = dead_letter_record(record, DeadLetter("poison", "too deep", "svc"))
    headers = dict(out.headers)
    assert out.value == b""
    assert b"value (999900 bytes, sha256 " in headers[H_DROPPED]
    assert b"header 'huge' (9000 bytes)" in headers[H_DROPPED]
    assert "huge" not in headers
    assert headers["choreo-type"] == b"X"
    assert headers[H_REASON] == b"too deep"
    small = dead_letter_record(Record("t", 0, 8, b"g", b"{}"), DeadLetter("poison", "x", "s"))
    assert small.value == b"{}"
    assert H_DROPPED not in dict(small.headers)


async def test_a_huge_failure_reason_is_bounded_in_events_and_state() -> None:
    from choreo import BusinessFailure, SagaContract, Step, StepFailed
    from choreo.system_events import MAX_REASON_CHARS
    from choreo.testing import MemoryTracker

    tag = uuid.uuid4().hex[:8]

    class Go(Event, type=f"why.{tag}.Go", topic=f"why.{tag}"):
        n: int

    class Went(Event, type=f"why.{tag}.Went", topic=f"why.{tag}"):
        n: int

    contract = SagaContract(f"why{tag}", start=Go, steps=[Step("go", on=Go, done=Went)])
    app = Service("why", contracts=[contract])

    @app.on_event(Go)
    async def go(event: Go) -> Went:  # type: ignore[valid-type]
        raise BusinessFailure("x" * 300_000)

    tracker = MemoryTracker([contract])
    async with Harness(app, tracker) as h:
        gid = await h.publish(Go(n=1))  # type: ignore[call-arg]
        await h.drain()
        [failed] = [m.event for m in h.history(gid) if isinstance(m.event, StepFailed)]
        assert len(failed.reason) <= MAX_REASON_CHARS
        assert failed.reason.endswith("(300000 characters)")
        state = tracker.get(gid)
        assert state is not None
        assert len(state.model_dump_json()) < 20_000
