"""The ops layer on the memory transport: why, dead letters, replay, admin commands."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from choreo import AdminCommand, codec
from choreo.deadletter import (
    DLQ_TOPIC,
    H_OFFSET,
    H_PARTITION,
    H_SERVICE,
    H_TOPIC,
    DeadLetter,
    dead_letter_record,
)
from choreo.saga import SagaState, SagaStatus
from choreo.system_events import MAX_ACTOR_CHARS, MAX_NOTE_CHARS, SYSTEM_TOPIC
from choreo.tracker import ops
from choreo.tracker.deadletters import (
    HEADERS_PREVIEW,
    VALUE_PREVIEW,
    DeadLetterReader,
    parse_dead_letter_id,
)
from choreo.transport.base import OutgoingRecord, Record
from choreo.transport.kafka import KafkaTransport
from choreo.transport.memory import MemoryTransport
from tests.procs.tracker_api import Seeded, seeded

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def env() -> AsyncIterator[Seeded]:
    async with seeded() as seeded_env:
        yield seeded_env


def state(env: Seeded, name: str) -> SagaState:
    found = env.tracker.get(env.gids[name])
    assert found is not None
    return found


async def why(env: Seeded, name: str) -> dict[str, object]:
    contracts = [env.travel.contract]
    return await ops.why(state(env, name), contracts, env.h.transport, groups=env.groups)


async def test_why_running_past_its_deadline(env: Seeded) -> None:
    found = await why(env, "running")
    assert found["status"] == "RUNNING"
    assert found["summary"] == "RUNNING, waiting on hotel (action by hotel)"
    [wait] = found["waiting"]  # type: ignore[misc]
    assert (wait["step"], wait["op"], wait["service"], wait["event_type"]) == (
        "hotel",
        "action",
        "hotel",
        "FlightBooked",
    )
    assert wait["group"] == env.travel.hotel.group
    assert wait["lag"] == 0
    assert wait["committed"] == wait["end_offset"] > 0
    assert wait["overdue_s"] > 0
    assert "did not answer" in wait["diagnosis"]
    assert "the tracker has not acted" in wait["diagnosis"]
    assert found["dead_letters"] == []


async def test_why_stuck_names_its_dead_letters(env: Seeded) -> None:
    found = await why(env, "stuck")
    assert found["status"] == "STUCK"
    [wait] = found["waiting"]  # type: ignore[misc]
    assert (wait["step"], wait["op"], wait["event_type"]) == ("hotel", "compensate", "CancelHotel")
    dead = found["dead_letters"]
    assert isinstance(dead, list)
    by_service = {d["service"] for d in dead}
    assert by_service == {"hotel", "rental"}  # rental choked on the car's trigger
    assert wait["dead_letters"] == [d["id"] for d in dead if d["service"] == "hotel"]
    assert "choreo dlq replay" in wait["diagnosis"]
    assert all(d["gid"] == env.gids["stuck"] for d in dead)


async def test_why_terminal_and_unknown_contract(env: Seeded) -> None:
    found = await why(env, "completed")
    assert (found["waiting"], found["summary"]) == ([], "COMPLETED: nothing to wait for")
    other = state(env, "completed").model_copy(update={"saga": "nope"})
    found = await ops.why(other, [env.travel.contract], env.h.transport)
    assert found["contract_known"] is False
    assert found["summary"] == "the tracker has no contract named 'nope'"


async def test_lag_shows_a_service_that_is_behind(env: Seeded) -> None:
    groups = dict(env.groups, hotel="a-group-that-never-ran")
    found = await ops.why(
        state(env, "running"), [env.travel.contract], env.h.transport, groups=groups
    )
    [wait] = found["waiting"]
    assert wait["committed"] is None
    assert wait["lag"] == wait["end_offset"] > 0
    assert "never committed" in wait["diagnosis"]


async def test_dead_letters_filter_and_reader_catches_up(env: Seeded) -> None:
    transport = env.h.transport
    every = await ops.dead_letters(transport)
    mine = await ops.dead_letters(transport, env.gids["stuck"])
    assert {d["gid"] for d in every} == {env.gids["stuck"], env.gids["compensating"]}
    assert [d["gid"] for d in mine] == [env.gids["stuck"]] * len(mine)
    assert [d["dead_at"] for d in every] == sorted((d["dead_at"] for d in every), reverse=True)
    assert len(await ops.dead_letters(transport, limit=1)) == 1
    async with DeadLetterReader(transport) as reader:
        await reader.refresh()
        assert len(reader.records()) == len(every)
        first = reader.records()[0]
        copy = OutgoingRecord(DLQ_TOPIC, first.key, first.value, first.headers)
        await transport.send(copy)  # one more dead letter
        await reader.refresh()
        assert len(reader.records()) == len(every) + 1


async def test_replay_resends_the_original_record(env: Seeded) -> None:
    transport = env.h.transport
    [dead, *_] = await ops.dead_letters(transport, env.gids["compensating"])
    partition, offset = parse_dead_letter_id(dead["id"])
    before = env.h.transport.broker.records(dead["topic"])  # type: ignore[attr-defined]
    topics = ops.replay_topics([env.travel.contract])
    [sent] = await ops.replay(transport, [dead["id"]], topics=topics)
    assert sent["id"] == dead["id"]
    assert sent["topic"] == dead["topic"] == "test.travel"
    after = env.h.transport.broker.records(dead["topic"])  # type: ignore[attr-defined]
    assert len(after) == len(before) + 1
    replayed = next(
        r for r in after if (r.partition, r.offset) == (sent["partition"], sent["offset"])
    )
    assert replayed.header(codec.H_ID) == dead["event_id"].encode()
    assert not any(name.startswith("choreo-dlq-") for name, _ in replayed.headers)
    with pytest.raises(LookupError, match="no dead letter with id 9:999"):
        await ops.replay(transport, ["9:999"], topics=topics)
    with pytest.raises(ValueError, match="partition:offset"):
        await ops.replay(transport, ["not-an-id"], topics=topics)
    with pytest.raises(ValueError, match="partition:offset"):
        await ops.replay(transport, ["1:" + "9" * 5000], topics=topics)
    assert (partition, offset) == parse_dead_letter_id(dead["id"])


async def test_command_lands_in_the_timeline(env: Seeded) -> None:
    env.clock.frozen = None  # let the tracker act on it
    gid = env.gids["stuck"]
    assert ops.refusal(state(env, "stuck"), "resolve") is None
    event_id = await ops.command(env.h.transport, gid, "trip", "resolve", "ana@ops", "refunded")
    limit = time.monotonic() + 20
    while not state(env, "stuck").resolved:
        assert time.monotonic() < limit
        await asyncio.sleep(0.02)
    resolved = state(env, "stuck")
    assert (resolved.resolved_by, resolved.resolved_note) == ("ana@ops", "refunded")
    assert any(
        e.event_id == event_id and "admin resolve by ana@ops: refunded" in e.note
        for e in resolved.timeline
    )
    await env.h.drain()
    [sent] = [m for m in env.h.published(AdminCommand) if m.envelope.event_id == event_id]
    assert sent.topic == SYSTEM_TOPIC
    assert sent.gid == gid
    assert sent.envelope.source == "operator"
    assert ops.refusal(resolved, "resolve") == "already resolved by ana@ops"


async def test_command_and_refusal_validate() -> None:
    transport = MemoryTransport()
    with pytest.raises(ValueError, match="unknown action 'delete'"):
        await ops.command(transport, "g", "trip", "delete", "ana")
    with pytest.raises(ValueError, match="needs an actor"):
        await ops.command(transport, "g", "trip", "retry", " ")
    done = SagaState.new("g", "trip", 0.0).model_copy(update={"status": SagaStatus.COMPLETED})
    assert ops.refusal(done, "compensate") == (
        "only a RUNNING saga can be compensated; this one is COMPLETED"
    )
    assert (
        ops.refusal(done, "resolve") == "only a STUCK saga can be resolved; this one is COMPLETED"
    )
    assert "no compensation is unconfirmed" in (ops.refusal(done, "retry") or "")
    running = SagaState.new("g", "trip", 0.0)
    assert (
        ops.refusal(running, "retry") == "no step is pending, so there is no trigger to re-publish"
    )
    assert ops.refusal(running, "compensate") is None


def dead_letter(
    topic: str = "test.travel",
    value: bytes = b'{"trip_id": "t"}',
    headers: tuple[tuple[str, bytes], ...] = (),
    offset: int = 3,
    service: str = "hotel",
    dlq: str = DLQ_TOPIC,
) -> OutgoingRecord:
    """A dead letter as choreo's dispatcher writes it, of a record read at
    ``topic``[0]@``offset``."""
    record = Record(topic, 0, offset, b"g-1", value, (("choreo-gid", b"g-1"), *headers))
    return dead_letter_record(record, DeadLetter("poison", "bad", service), dlq)


def replayed(transport: MemoryTransport, topic: str, sent: dict[str, object]) -> Record:
    return next(
        r
        for r in transport.broker.records(topic)
        if (r.partition, r.offset) == (sent["partition"], sent["offset"])
    )


async def test_replay_goes_only_to_a_known_contract_topic() -> None:
    """A forged dead letter naming choreo.system (an AdminCommand, say) or a topic no
    contract uses is refused, and so is one that does not say where it came from."""
    transport = MemoryTransport()
    topics = frozenset({"test.travel"})
    forged = await transport.send(dead_letter(SYSTEM_TOPIC))
    unknown = await transport.send(dead_letter("payments.secret"))
    bare = await transport.send(OutgoingRecord(DLQ_TOPIC, b"g-1", b"{}", ()))
    for sent, match in (
        (forged, "came from topic 'choreo.system', which no saga contract"),
        (unknown, "came from topic 'payments.secret', which no saga contract"),
        (bare, "does not name its original topic"),
    ):
        with pytest.raises(ValueError, match=match):
            await ops.replay(transport, [f"{sent.partition}:{sent.offset}"], topics=topics)
    assert transport.broker.records(SYSTEM_TOPIC) == []
    assert transport.broker.records("payments.secret") == []
    assert ops.replay_topics([]) == frozenset()


async def test_replay_keeps_the_event_id_it_was_read_with() -> None:
    """A dead letter without choreo-id is replayed with the id a consumer gave the
    record (topic/partition/offset where it was read), the same on every replay; one
    without those coordinates gets an id from its own place on the DLQ."""
    transport = MemoryTransport()
    topics = {"test.travel"}
    first = await transport.send(dead_letter(offset=41))
    ids = []
    for _ in range(2):
        [sent] = await ops.replay(transport, [f"{first.partition}:{first.offset}"], topics=topics)
        ids.append(replayed(transport, "test.travel", sent).header(codec.H_ID))
        assert sent["event_id"] == "test.travel/0/41"
    assert ids == [b"test.travel/0/41"] * 2
    headers = ((H_TOPIC, b"test.travel"),)  # no partition or offset recorded
    loose = await transport.send(OutgoingRecord(DLQ_TOPIC, b"g-1", b"{}", headers))
    [sent] = await ops.replay(transport, [f"{loose.partition}:{loose.offset}"], topics=topics)
    expected = f"{DLQ_TOPIC}/{loose.partition}/{loose.offset}".encode()
    assert replayed(transport, "test.travel", sent).header(codec.H_ID) == expected
    given = await transport.send(dead_letter(headers=((codec.H_ID, b"evt-7"),)))
    [sent] = await ops.replay(transport, [f"{given.partition}:{given.offset}"], topics=topics)
    assert replayed(transport, "test.travel", sent).header(codec.H_ID) == b"evt-7"


async def test_dead_letters_of_one_record_are_replayed_once() -> None:
    """Each consumer group that failed on a record on a shared topic dead-lettered it;
    replaying their dead letters together sends the record once, and says who failed."""
    transport = MemoryTransport()
    a = await transport.send(dead_letter(service="hotel"))
    b = await transport.send(dead_letter(service="rental"))
    ids = [f"{a.partition}:{a.offset}", f"{b.partition}:{b.offset}"]
    done = await ops.replay(transport, ids, topics={"test.travel"})
    assert [d["service"] for d in done] == ["hotel", "rental"]
    assert done[1]["same_as"] == ids[0]
    assert done[1]["offset"] == done[0]["offset"]
    assert len(transport.broker.records("test.travel")) == 1
    with pytest.raises(ValueError, match="at most 100"):
        await ops.replay(transport, [f"0:{n}" for n in range(101)], topics={"test.travel"})


async def test_reader_keeps_previews_and_replay_reads_the_whole_record() -> None:
    """The reader holds bounded previews (not 10,000 whole records); a replay of a dead
    letter larger than its preview reads it again and sends every byte."""
    transport = MemoryTransport()
    value = b'{"trip_id": "' + b"x" * 600_000 + b'"}'
    big_headers = tuple((f"x-extra-{n}", b"h" * 3000) for n in range(10))
    sent = await transport.send(dead_letter(value=value, headers=big_headers))
    dead_id = f"{sent.partition}:{sent.offset}"
    async with DeadLetterReader(transport) as reader:
        await reader.refresh()
        preview = reader.get(dead_id)
        assert preview is not None
        assert (len(preview.value), preview.size, preview.cut) == (VALUE_PREVIEW, len(value), True)
        kept = [(k, v) for k, v in preview.headers if not k.startswith("choreo-dlq-")]
        assert sum(len(k) + len(v) for k, v in kept) <= HEADERS_PREVIEW + 1024
        assert preview.header(H_SERVICE) == b"hotel"  # choreo's own headers always kept
        assert preview.header(H_TOPIC) == b"test.travel"
        [done] = await ops.replay(transport, [dead_id], topics={"test.travel"}, reader=reader)
    out = replayed(transport, "test.travel", done)
    assert out.value == value
    assert [(k, v) for k, v in out.headers if k.startswith("x-extra-")] == list(big_headers)
    assert not any(k in (H_TOPIC, H_PARTITION, H_OFFSET) for k, _ in out.headers)


async def test_replay_refuses_a_dead_letter_that_lost_its_value() -> None:
    transport = MemoryTransport()
    sent = await transport.send(dead_letter(value=b"x" * 1_200_000))  # value dropped
    with pytest.raises(ValueError, match="too large to keep whole"):
        await ops.replay(transport, [f"{sent.partition}:{sent.offset}"], topics={"test.travel"})
    assert transport.broker.records("test.travel") == []


async def test_command_text_is_bounded() -> None:
    transport = MemoryTransport()
    with pytest.raises(ValueError, match="at most 200 characters"):
        await ops.command(transport, "g", "trip", "retry", "a" * (MAX_ACTOR_CHARS + 1))
    with pytest.raises(ValueError, match="note at most 2000"):
        await ops.command(transport, "g", "trip", "retry", "ana", "n" * (MAX_NOTE_CHARS + 1))
    assert transport.broker.records(SYSTEM_TOPIC) == []


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_replay_on_kafka(kafka_bootstrap: str) -> None:
    """On a real DLQ topic: the reader keeps a preview of a 300 kB dead letter, a replay
    reads it again and sends it whole, twice with the same event id, to its own topic;
    a dead letter naming choreo.system is refused before anything is sent."""
    suffix = uuid.uuid4().hex[:8]
    dlq, origin = f"test.dlq.{suffix}", f"test.origin.{suffix}"
    value = b'{"trip_id": "' + b"x" * 300_000 + b'"}'
    async with KafkaTransport(f"kafka://{kafka_bootstrap}") as transport:
        await transport.ensure_topics([dlq, origin])
        big = await transport.send(dead_letter(origin, value, offset=41, dlq=dlq))
        forged = await transport.send(dead_letter(SYSTEM_TOPIC, offset=1, dlq=dlq))
        async with DeadLetterReader(transport, topic=dlq) as reader:
            await reader.refresh(timeout=30)
            big_id = f"{big.partition}:{big.offset}"
            preview = reader.get(big_id)
            assert preview is not None
            assert (len(preview.value), preview.size) == (VALUE_PREVIEW, len(value))
            for _ in range(2):
                await ops.replay(transport, [big_id], topics={origin}, reader=reader)
            forged_id = f"{forged.partition}:{forged.offset}"
            with pytest.raises(ValueError, match=r"came from topic 'choreo\.system'"):
                await ops.replay(transport, [forged_id], topics={origin}, reader=reader)
        consumer = transport.consumer(f"test.replayed.{suffix}", [origin])
        await consumer.start()
        try:
            got: list[Record] = []
            limit = time.monotonic() + 30
            while len(got) < 2 and time.monotonic() < limit:
                for records in (await consumer.getmany(timeout=0.5)).values():
                    got += records
        finally:
            await consumer.stop()
    assert [r.value == value for r in got] == [True, True]
    assert [r.header(codec.H_ID) for r in got] == [f"{origin}/0/41".encode()] * 2
