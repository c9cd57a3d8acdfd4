"""Fuzzing the places hostile records reach: the dispatcher (decode, route, barrier,
handler) and the tracker's fold, on the memory backend, with records whose headers, key
and value are drawn at random around the valid shapes. Neither may raise: every record
is handled, skipped or dead-lettered with a reason, and what the tracker keeps stays
storable. ``CHOREO_FUZZ_EXAMPLES`` sets the examples per property (``scripts/fuzz.sh``
runs thousands); the normal test run takes a quick sample."""

from __future__ import annotations

import asyncio
import os
import uuid

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from choreo import Context, Event, Service, codec
from choreo.deadletter import H_OFFSET, H_REASON
from choreo.dispatch import Dispatcher
from choreo.store.memory import MemoryStore
from choreo.tracker.core import TrackerCore
from choreo.tracker.pipeline import TrackerPipeline
from choreo.transport.base import OutgoingRecord, Record
from choreo.transport.memory import MemoryBroker, MemoryTransport
from tests.scenarios.trip import TRAVEL_EVENTS, trip_contract

EXAMPLES = int(os.environ.get("CHOREO_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Ask(Event, type="fuzz.Ask", topic="fuzz.in"):
    qty: int
    note: str = ""


class Told(Event, type="fuzz.Told", topic="fuzz.out"):
    qty: int


ENVELOPE = [
    codec.H_TYPE, codec.H_ID, codec.H_GID, codec.H_SAGA, codec.H_STEP, codec.H_OP,
    codec.H_OUTCOME, codec.H_CAUSATION, codec.H_OCCURRED, codec.H_VERSION, codec.H_ATTEMPT,
    codec.H_SOURCE, codec.H_TRACEPARENT,
]  # fmt: skip
TYPES = ["fuzz.Ask", "fuzz.Told", "nonsense", "", *(cls.event_type for cls in TRAVEL_EVENTS)]
GIDS = ["g-1", "g-2", "", "é", "g" * 300]

texts = st.one_of(
    st.sampled_from(
        [*TYPES, *GIDS, "action", "compensate", "done", "failed", "skipped", "1", "2", "-5",
         "9" * 400, "1e3", "trip", "flight", "hotel"]
    ),
    st.text(max_size=20),
).map(str.encode)  # fmt: skip
values = st.one_of(texts, st.binary(max_size=30), st.just(b"\xff\xfe"), st.just(b"x" * 2000))
headers = st.lists(
    st.tuples(st.one_of(st.sampled_from(ENVELOPE), st.text(max_size=8)), values), max_size=16
)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
payloads = st.one_of(
    st.builds(lambda q, n: orjson.dumps({"qty": q, "note": n}), ints, st.text()),
    st.builds(lambda p: orjson.dumps({"plan": p}), st.dictionaries(st.text(), ints)),
    st.just(b'{"qty": 1' + b"0" * 400 + b"}"),
    st.just(b'{"reason": "x"}'),
    st.just(b"[" * 50 + b"]" * 50),
    st.binary(max_size=40),
    st.recursive(ints | st.text(), lambda kids: st.lists(kids) | st.dictionaries(
        st.text(), kids), max_leaves=20).map(orjson.dumps),
)  # fmt: skip
keys = st.one_of(st.none(), st.sampled_from(GIDS).map(str.encode), st.binary(max_size=8))
records = st.lists(st.tuples(headers, keys, payloads), min_size=1, max_size=12)


def as_records(
    topic: str, drawn: list[tuple[list[tuple[str, bytes]], bytes | None, bytes]]
) -> list[Record]:
    return [
        Record(topic, 0, offset, key, value, tuple(hdrs), 1_700_000_000_000)
        for offset, (hdrs, key, value) in enumerate(drawn)
    ]  # fmt: skip


def service() -> Service:
    app = Service("fuzz")

    @app.on_event(Ask, step="ask")
    async def ask(event: Ask, ctx: Context) -> Told:
        ctx.tx.incr(f"asked:{ctx.gid}", event.qty)
        return Told(qty=event.qty)

    return app


@FUZZ
@given(drawn=records)
def test_the_dispatcher_handles_or_dead_letters_any_record(drawn: list) -> None:  # type: ignore[type-arg]
    asyncio.run(_dispatch(as_records(Ask.topic, drawn)))


def dispatcher() -> tuple[Dispatcher, MemoryTransport]:
    app = service()
    transport = MemoryTransport(MemoryBroker(1))
    made = Dispatcher(
        service=app.name, routes=app.routes(), registry=app.registry(), store=MemoryStore(),
        transport=transport, dlq_topic="fuzz.dlq", limits=codec.Limits(),
    )  # fmt: skip
    return made, transport


async def _dispatch(batch: list[Record]) -> None:
    handler, transport = dispatcher()
    await handler.handle_batch(batch)  # must not raise
    dead = transport.broker.records("fuzz.dlq")
    offsets = [int(dict(d.headers)[H_OFFSET]) for d in dead]
    assert len(offsets) == len(set(offsets))  # at most one dead letter per record (one route)
    assert all(dict(d.headers)[H_REASON] for d in dead)
    assert len(transport.broker.records("fuzz.out")) + len(dead) <= len(batch)


@FUZZ
@given(drawn=records, now=st.floats(min_value=0, max_value=2e9))
def test_the_tracker_folds_or_dead_letters_any_record(drawn: list, now: float) -> None:  # type: ignore[type-arg]
    asyncio.run(_fold(as_records("trip.events", drawn), now))


async def _fold(batch: list[Record], now: float) -> None:
    sent: list[OutgoingRecord] = []

    async def send(records: list[OutgoingRecord]) -> None:
        sent.extend(records)

    pipeline = TrackerPipeline(TrackerCore([trip_contract()]), send=send, clock=lambda: now)  # type: ignore[arg-type]
    await pipeline.handle_batch([(record, now) for record in batch])  # must not raise
    for state in pipeline.states.values():
        state.model_dump_json()  # what the faust table stores
    dead = [r for r in sent if r.topic.endswith(".dlq")]
    assert all(dict(d.headers)[H_REASON] for d in dead)


def test_the_fuzz_strategies_reach_valid_records_too() -> None:
    """The properties above mean something only if valid records are among the drawn:
    a well-formed Ask is handled."""
    gid = str(uuid.uuid4())
    good = [([(codec.H_TYPE, b"fuzz.Ask"), (codec.H_GID, gid.encode())], gid.encode(),
             orjson.dumps({"qty": 2}))]  # fmt: skip

    async def check() -> None:
        handler, transport = dispatcher()
        await handler.handle_batch(as_records(Ask.topic, good))
        assert len(transport.broker.records("fuzz.out")) == 1

    asyncio.run(check())
