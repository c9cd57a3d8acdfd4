"""One contract for every transport: the same assertions run on memory and on a real Kafka.

Each test uses its own topics and groups (uuid names), so tests share a broker without
seeing each other's records or offsets.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

import pytest
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
)
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from aiokafka.structs import TopicPartition as KafkaTopicPartition

from choreo.errors import ConfigurationError, TransportError
from choreo.transport.base import (
    Consumer,
    Delivered,
    OutgoingRecord,
    Record,
    TopicPartition,
    Transport,
)
from choreo.transport.kafka import KafkaTransport
from choreo.transport.kafka_config import parse_kafka_url
from choreo.transport.memory import MemoryBroker, MemoryTransport
from choreo.transport.partitioner import murmur2, partition_for

PARTITIONS = 4
WAIT = 40.0  # seconds a Kafka group may take to (re)balance before a test gives up


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def keys_covering(partitions: int, per_partition: int = 1) -> list[bytes]:
    """gids that together land in every partition, ``per_partition`` of each."""
    found: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    n = 0
    while any(len(keys) < per_partition for keys in found.values()):
        key = f"gid-{n}".encode()
        bucket = found[partition_for(key, partitions)]
        if len(bucket) < per_partition:
            bucket.append(key)
        n += 1
    return [key for keys in found.values() for key in keys]


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "kafka":
        return f"kafka://{request.getfixturevalue('kafka_bootstrap')}"
    return "memory://"


@pytest.fixture
async def transport(backend: str) -> AsyncIterator[Transport]:
    if backend.startswith("kafka://"):
        transport: Transport = KafkaTransport(backend, partitions=PARTITIONS, client_id=uid("t"))
    else:
        transport = MemoryTransport(MemoryBroker(default_partitions=PARTITIONS))
    await transport.start()
    try:
        yield transport
    finally:
        await transport.stop()


ConsumerFactory = Callable[..., Awaitable[Consumer]]


@pytest.fixture
async def make_consumer(transport: Transport) -> AsyncIterator[ConsumerFactory]:
    """Starts consumers and stops, at teardown, every one the test did not stop itself."""
    started: list[Consumer] = []

    async def make(group: str, topics: Sequence[str], **kwargs: object) -> Consumer:
        consumer = transport.consumer(group, topics, **kwargs)  # type: ignore[arg-type]
        await consumer.start()
        started.append(consumer)
        return consumer

    yield make
    for consumer in reversed(started):
        await consumer.stop()


# -- helpers ----------------------------------------------------------------------------


async def drain(consumer: Consumer, count: int, timeout: float = WAIT) -> list[Record]:
    """Poll until ``count`` records arrived; fail if more arrive within one more short poll."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(records) < count:
        assert time.monotonic() < deadline, f"got {len(records)} of {count} records"
        for batch in (await consumer.getmany(timeout=0.5)).values():
            records.extend(batch)
    for batch in (await consumer.getmany(timeout=0.3)).values():
        records.extend(batch)
    assert len(records) == count, f"expected {count} records, got {len(records)}"
    return records


async def assert_no_more(consumer: Consumer, wait: float = 1.0) -> None:
    batch = await consumer.getmany(timeout=wait)
    assert not any(batch.values()), f"unexpected records: {batch}"


async def poll_until(
    consumers: Iterable[Consumer],
    condition: Callable[[], bool],
    timeout: float = WAIT,
) -> dict[int, list[Record]]:
    """Keep polling ``consumers`` (so Kafka members take part in rebalances) until
    ``condition`` holds; returns whatever records each consumer got meanwhile."""
    members = list(consumers)
    got: dict[int, list[Record]] = {id(c): [] for c in members}
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        for consumer in members:
            for batch in (await consumer.getmany(timeout=0.1)).values():
                got[id(consumer)].extend(batch)
    return got


def all_tps(topic: str, partitions: int = PARTITIONS) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(topic, p) for p in range(partitions))


def positions(records: Iterable[Record]) -> set[tuple[int, int]]:
    return {(r.partition, r.offset) for r in records}


# -- the contract ---------------------------------------------------------------------


async def test_send_returns_delivered_in_the_keys_murmur2_partition(transport: Transport) -> None:
    topic = uid("send")
    await transport.ensure_topics([topic], PARTITIONS)
    keys = [f"gid-{n}".encode() for n in range(12)] + [b"saga-42", b"\xff\x00binary"]
    last_offset: dict[int, int] = {}
    for round_ in range(2):
        for key in keys:
            delivered = await transport.send(OutgoingRecord(topic, key, f"v{round_}".encode()))
            assert isinstance(delivered, Delivered)
            assert delivered.topic == topic
            # Same gid, same partition, and the same number on memory and on Kafka.
            assert delivered.partition == partition_for(key, PARTITIONS)
            assert delivered.offset == last_offset.get(delivered.partition, -1) + 1
            last_offset[delivered.partition] = delivered.offset


async def test_send_many_keeps_per_key_order(
    transport: Transport, make_consumer: ConsumerFactory
) -> None:
    topic = uid("many")
    await transport.ensure_topics([topic], PARTITIONS)
    keys = keys_covering(PARTITIONS)
    out = [OutgoingRecord(topic, key, f"{i}".encode()) for i in range(5) for key in keys]
    delivered = await transport.send_many(out)
    assert [d.partition for d in delivered] == [partition_for(r.key, PARTITIONS) for r in out]
    consumer = await make_consumer(uid("g"), [topic])
    records = await drain(consumer, len(out))
    for key in keys:
        values = [r.value for r in records if r.key == key]
        assert values == [f"{i}".encode() for i in range(5)]


async def test_send_to_a_new_topic_creates_it_with_the_default_partition_count(
    transport: Transport,
) -> None:
    topic = uid("auto")
    assert await transport.partitions_for(topic) == 0
    delivered = await transport.send(OutgoingRecord(topic, b"gid-1", b"x"))
    assert await transport.partitions_for(topic) == PARTITIONS
    assert delivered.partition == partition_for(b"gid-1", PARTITIONS)


async def test_records_come_back_in_partition_order_with_headers(
    transport: Transport, make_consumer: ConsumerFactory
) -> None:
    topic = uid("order")
    await transport.ensure_topics([topic], PARTITIONS)
    keys = keys_covering(PARTITIONS, per_partition=2)
    sent: list[OutgoingRecord] = []
    for seq in range(6):
        for key in keys:
            headers = (
                ("type", b"OrderPlaced"),
                ("seq", str(seq).encode()),
                ("empty", b""),
                ("binary", bytes([0, 255, seq])),
            )
            sent.append(OutgoingRecord(topic, key, b'{"n":%d}' % seq, headers))
    await transport.send_many(sent)

    consumer = await make_consumer(uid("g"), [topic])
    records = await drain(consumer, len(sent))
    by_partition: dict[int, list[Record]] = {}
    for record in records:
        assert record.topic == topic
        assert record.tp == TopicPartition(topic, record.partition)
        by_partition.setdefault(record.partition, []).append(record)
    assert set(by_partition) == set(range(PARTITIONS))
    for partition, recs in by_partition.items():
        assert [r.offset for r in recs] == list(range(len(recs))), partition
    for key in keys:
        got = [r for r in records if r.key == key]
        want = [s for s in sent if s.key == key]
        assert [(r.value, r.headers) for r in got] == [(s.value, s.headers) for s in want]
        assert all(r.partition == partition_for(key, PARTITIONS) for r in got)
    assert got[0].header("type") == b"OrderPlaced"
    assert got[0].header("missing") is None
    assert all(r.timestamp_ms > 0 for r in records)


async def test_a_new_group_starts_at_the_earliest_offset(
    transport: Transport, make_consumer: ConsumerFactory
) -> None:
    topic = uid("earliest")
    await transport.ensure_topics([topic], PARTITIONS)
    for n in range(5):
        await transport.send(OutgoingRecord(topic, b"gid-early", str(n).encode()))
    first = await make_consumer(uid("g"), [topic])
    records = await drain(first, 5)
    assert [r.offset for r in records] == [0, 1, 2, 3, 4]
    await first.commit({records[-1].tp: 5})
    # Another group has its own offsets: it reads everything from the start as well.
    other = await make_consumer(uid("g"), [topic])
    assert [r.value for r in await drain(other, 5)] == [b"0", b"1", b"2", b"3", b"4"]


async def test_a_fresh_member_resumes_after_the_committed_offset(
    transport: Transport, make_consumer: ConsumerFactory
) -> None:
    topic, group = uid("resume"), uid("g")
    await transport.ensure_topics([topic], PARTITIONS)
    for n in range(6):
        await transport.send(OutgoingRecord(topic, b"gid-resume", str(n).encode()))
    tp = TopicPartition(topic, partition_for(b"gid-resume", PARTITIONS))

    first = await make_consumer(group, [topic])
    assert [r.offset for r in await drain(first, 6)] == list(range(6))
    assert await first.committed(tp) is None
    await first.commit({tp: 4})  # records 0..3 are done, 4 and 5 are not
    assert await first.committed(tp) == 4
    await first.stop()

    second = await make_consumer(group, [topic])
    again = await drain(second, 2)
    assert [(r.offset, r.value) for r in again] == [(4, b"4"), (5, b"5")]
    assert await second.committed(tp) == 4


async def test_records_not_committed_are_redelivered_to_the_next_member(
    transport: Transport, make_consumer: ConsumerFactory
) -> None:
    topic, group = uid("redeliver"), uid("g")
    await transport.ensure_topics([topic], PARTITIONS)
    sent = await transport.send_many(
        [OutgoingRecord(topic, key, b"x") for key in keys_covering(PARTITIONS)]
    )
    first = await make_consumer(group, [topic])
    seen = await drain(first, len(sent))
    await first.stop()  # leaves without committing

    second = await make_consumer(group, [topic])
    again = await drain(second, len(sent))
    assert positions(again) == positions(seen) == {(d.partition, d.offset) for d in sent}
    for tp in all_tps(topic):
        assert await second.committed(tp) is None


async def test_members_split_partitions_and_a_survivor_takes_over_uncommitted_work(
    transport: Transport, make_consumer: ConsumerFactory
) -> None:
    topic, group = uid("split"), uid("g")
    await transport.ensure_topics([topic], PARTITIONS)
    a = await make_consumer(group, [topic])
    b = await make_consumer(group, [topic])

    def split() -> bool:
        mine, yours = a.assignment(), b.assignment()
        return bool(mine) and bool(yours) and not mine & yours and mine | yours == all_tps(topic)

    early = await poll_until([a, b], split)
    assert not any(early.values())

    sent = await transport.send_many(
        [OutgoingRecord(topic, key, b"x") for key in keys_covering(PARTITIONS, 2)]
    )
    expected = {(d.partition, d.offset) for d in sent}
    a_owned = {tp.partition for tp in a.assignment()}
    a_expected = {pos for pos in expected if pos[0] in a_owned}
    got_a: list[Record] = []
    got_b: list[Record] = []
    deadline = time.monotonic() + WAIT
    while len(got_a) + len(got_b) < len(expected):
        assert time.monotonic() < deadline
        for consumer, sink in ((a, got_a), (b, got_b)):
            for batch in (await consumer.getmany(timeout=0.2)).values():
                sink.extend(batch)
    assert positions(got_a) == a_expected
    assert positions(got_b) == expected - a_expected
    assert all(r.tp in a.assignment() for r in got_a)
    assert all(r.tp in b.assignment() for r in got_b)

    # b finishes and commits its work; a dies before committing anything.
    await b.commit({r.tp: r.offset + 1 for r in got_b})
    await a.stop()

    taken_over = await poll_until([b], lambda: b.assignment() == all_tps(topic))
    redelivered = taken_over[id(b)] + await drain(b, len(a_expected) - len(taken_over[id(b)]))
    assert positions(redelivered) == a_expected
    await assert_no_more(b, 0.5)


async def test_commit_for_a_partition_lost_in_a_rebalance_is_ignored(
    transport: Transport, make_consumer: ConsumerFactory
) -> None:
    topic, group = uid("lost"), uid("g")
    await transport.ensure_topics([topic], PARTITIONS)
    await transport.send_many(
        [OutgoingRecord(topic, key, b"x") for key in keys_covering(PARTITIONS)]
    )
    a = await make_consumer(group, [topic])
    records = await drain(a, PARTITIONS)
    before = {r.tp: r.offset + 1 for r in records}
    b = await make_consumer(group, [topic])
    await poll_until([a, b], lambda: len(a.assignment()) == len(b.assignment()) == 2)
    await a.commit(before)  # half of these now belong to b: no error, not committed
    for tp in all_tps(topic):
        assert await a.committed(tp) == (1 if tp in a.assignment() else None)


async def test_end_offsets_and_committed(
    transport: Transport, make_consumer: ConsumerFactory
) -> None:
    topic, group = uid("offsets"), uid("g")
    await transport.ensure_topics([topic], PARTITIONS)
    keys = keys_covering(PARTITIONS)
    counts = {partition_for(key, PARTITIONS): n + 1 for n, key in enumerate(keys)}
    await transport.send_many(
        [OutgoingRecord(topic, key, b"x") for n, key in enumerate(keys) for _ in range(n + 1)]
    )
    consumer = await make_consumer(group, [topic])
    tps = sorted(all_tps(topic))
    assert await consumer.end_offsets(tps) == {tp: counts[tp.partition] for tp in tps}
    assert await consumer.end_offsets([]) == {}
    for tp in tps:
        assert await consumer.committed(tp) is None
    await drain(consumer, sum(counts.values()))
    await consumer.commit({tps[0]: 1, tps[1]: counts[1]})
    assert await consumer.committed(tps[0]) == 1
    assert await consumer.committed(tps[1]) == counts[1]
    assert await consumer.committed(tps[2]) is None
    await consumer.commit({tps[0]: counts[0]})
    assert await consumer.committed(tps[0]) == counts[0]


async def test_ensure_topics_creates_missing_topics_with_the_requested_partitions(
    transport: Transport, make_consumer: ConsumerFactory
) -> None:
    three, other, default = uid("three"), uid("three"), uid("default")
    assert await transport.partitions_for(three) == 0
    await transport.ensure_topics([three, other], partitions=3)
    assert await transport.partitions_for(three) == 3
    assert await transport.partitions_for(other) == 3
    await transport.ensure_topics([three], partitions=6)  # existing topics are left alone
    assert await transport.partitions_for(three) == 3
    await transport.ensure_topics([default])
    assert await transport.partitions_for(default) == PARTITIONS
    await transport.ensure_topics([])
    # Subscribing to a missing topic creates it too.
    subscribed = uid("subscribed")
    consumer = await make_consumer(uid("g"), [subscribed])
    assert await transport.partitions_for(subscribed) == PARTITIONS
    await poll_until([consumer], lambda: consumer.assignment() == all_tps(subscribed))


async def test_a_consumer_that_is_not_started_raises_transport_error(
    transport: Transport,
) -> None:
    consumer = transport.consumer(uid("g"), [uid("idle")])
    with pytest.raises(TransportError):
        await consumer.getmany(timeout=0)


# -- Kafka only -------------------------------------------------------------------------


@pytest.mark.kafka
async def test_kafka_on_revoke_runs_before_partitions_move_and_can_commit(
    kafka_bootstrap: str,
) -> None:
    """The rebalance hook (memory rebalances synchronously and never calls it)."""
    topic, group = uid("revoke"), uid("g")
    async with KafkaTransport(f"kafka://{kafka_bootstrap}", partitions=PARTITIONS) as transport:
        await transport.send_many(
            [OutgoingRecord(topic, key, b"x") for key in keys_covering(PARTITIONS)]
        )
        revoked: list[frozenset[TopicPartition]] = []
        done: dict[TopicPartition, int] = {}
        a: Consumer | None = None

        async def on_revoke(lost: frozenset[TopicPartition]) -> None:
            revoked.append(lost)
            assert a is not None
            await a.commit({tp: done[tp] for tp in lost if tp in done})

        a = transport.consumer(group, [topic], on_revoke=on_revoke)
        b = transport.consumer(group, [topic])
        await a.start()
        try:
            for record in await drain(a, PARTITIONS):
                done[record.tp] = record.offset + 1
            await b.start()
            try:
                await poll_until([a, b], lambda: bool(a.assignment()) and bool(b.assignment()))
                assert revoked
                assert revoked[0] == all_tps(topic)
                for tp in all_tps(topic):
                    assert await b.committed(tp) == 1
                await assert_no_more(b)  # a's commits in the hook stuck: nothing to redo
            finally:
                await b.stop()
        finally:
            await a.stop()


async def fails_then_goes_through_the_new_producer(
    transport: KafkaTransport, pending: asyncio.Task[list[Delivered]], records: list[OutgoingRecord]
) -> None:
    """``pending`` (a send on the replaced producer) fails, retriable, within 20 s, and
    the same records sent again are delivered."""
    with pytest.raises(TransportError) as caught:
        async with asyncio.timeout(20):
            await pending
    assert caught.value.retriable
    delivered = await transport.send_many(records)
    assert [d.topic for d in delivered] == [record.topic for record in records]


@pytest.mark.kafka
async def test_kafka_a_send_on_a_replaced_producer_fails_instead_of_hanging(
    kafka_bootstrap: str,
) -> None:
    """A send that took the producer before it was replaced (it lost its sequence state
    after a broker restart) and hands its records over afterwards fails with a retriable
    error (the stopped producer refuses them); sent again, they go through the new one."""
    topic = uid("replaced")
    records = [OutgoingRecord(topic, key, b"x") for key in keys_covering(PARTITIONS)]
    async with KafkaTransport(f"kafka://{kafka_bootstrap}", partitions=PARTITIONS) as transport:
        await transport.send_many(records)  # the topic exists; metadata is known
        old = transport._producer
        held, release = asyncio.Event(), asyncio.Event()
        ensure = transport._ensure_known

        async def slow_ensure(topics: Sequence[str]) -> None:
            held.set()
            await release.wait()
            await ensure(topics)

        transport._ensure_known = slow_ensure  # type: ignore[method-assign]
        pending = asyncio.create_task(transport.send_many(records))
        await held.wait()  # it holds the old producer now
        transport._ensure_known = ensure  # type: ignore[method-assign]
        await transport._replace_producer(old, OutOfOrderSequenceNumber())
        assert transport._producer is not old
        release.set()
        await fails_then_goes_through_the_new_producer(transport, pending, records)


@pytest.mark.kafka
async def test_kafka_a_send_waiting_on_a_replaced_producer_fails_instead_of_hanging(
    kafka_bootstrap: str,
) -> None:
    """aiokafka can strand a batch while a producer stops (appended after the stop's flush
    took stock, then its sender task is cancelled without failing it): its future never
    resolves. A fault run found a partition waiting on one for good after a broker
    restart. A send waiting on a producer that is replaced must fail, retriable, so the
    worker sends its records again through the new producer. The stranded batch is
    played by a future that never resolves, handed out by the old producer."""
    topic = uid("stranded")
    records = [OutgoingRecord(topic, key, b"x") for key in keys_covering(PARTITIONS)]
    async with KafkaTransport(f"kafka://{kafka_bootstrap}", partitions=PARTITIONS) as transport:
        await transport.send_many(records)
        old = transport._producer
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def stranded(builder: object, topic: str, *, partition: int) -> object:
            return never

        old.send_batch = stranded
        pending = asyncio.create_task(transport.send_many(records))
        await asyncio.sleep(0.5)
        assert not pending.done()  # handed over, waiting for acknowledgements
        await transport._replace_producer(old, OutOfOrderSequenceNumber())
        await fails_then_goes_through_the_new_producer(transport, pending, records)
        never.cancel()


async def test_kafka_unreachable_broker_is_a_retriable_transport_error() -> None:
    transport = KafkaTransport("kafka://127.0.0.1:1", request_timeout_ms=2000)
    with pytest.raises(TransportError) as caught:
        await transport.start()
    assert caught.value.retriable
    assert caught.value.__cause__ is not None
    with pytest.raises(TransportError):
        await transport.send(OutgoingRecord("t", b"k", b"v"))
    await transport.stop()


# -- configuration (no broker) ----------------------------------------------------------


def test_memory_and_kafka_clients_agree_on_murmur2() -> None:
    # Vectors from Kafka's own UtilsTest.testMurmur2.
    vectors = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, signed in vectors.items():
        assert murmur2(key) == signed & 0xFFFFFFFF
    for n in range(500):
        key = f"gid-{n}-{'x' * (n % 7)}".encode()
        assert murmur2(key) & 0x7FFFFFFF == aiokafka_murmur2(key) & 0x7FFFFFFF
    # Every tail length and every byte value (the words are read as unsigned).
    for n in range(256):
        key = bytes((n + i * 37) % 256 for i in range(n % 67))
        assert murmur2(key) == aiokafka_murmur2(key) & 0xFFFFFFFF


def test_kafka_url_parsing() -> None:
    assert parse_kafka_url("kafka://127.0.0.1:9093") == ["127.0.0.1:9093"]
    assert parse_kafka_url("kafka://a:1,b:2/") == ["a:1", "b:2"]
    assert parse_kafka_url("kafka://broker") == ["broker:9092"]
    assert parse_kafka_url("KAFKA://[::1]:9094") == ["[::1]:9094"]
    for bad in [
        "memory://",
        "redis://x:1",
        "localhost:9092",
        "kafka://",
        "kafka://a:b",
        "kafka://a:0",
    ]:
        with pytest.raises(ConfigurationError):
            parse_kafka_url(bad)
    with pytest.raises(ConfigurationError, match="kafka://"):
        KafkaTransport("http://localhost:9092")


def test_kafka_security_options_reach_every_client() -> None:
    context = ssl.create_default_context()
    transport = KafkaTransport(
        "kafka://b:9093",
        security={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "u",
            "sasl_plain_password": "p",
            "ssl_context": context,
        },
        consumer_options={"fetch_max_wait_ms": 100},
    )
    consumer = transport.consumer_kwargs("g")
    producer = transport.producer_kwargs()
    for kwargs in (consumer, producer):
        assert kwargs["security_protocol"] == "SASL_SSL"
        assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
        assert kwargs["sasl_plain_username"] == "u"
        assert kwargs["ssl_context"] is context
        assert kwargs["bootstrap_servers"] == ["b:9093"]
    assert producer["acks"] == "all"
    assert producer["enable_idempotence"] is True
    assert consumer["enable_auto_commit"] is False
    assert consumer["auto_offset_reset"] == "earliest"
    assert consumer["fetch_max_wait_ms"] == 100
    with pytest.raises(ConfigurationError, match="unknown"):
        KafkaTransport("kafka://b:9093", security={"sasl_password": "typo"})
    with pytest.raises(ConfigurationError, match="SSL context"):
        KafkaTransport("kafka://b:9093", security={"cafile": "/nonexistent/ca.pem"})
    with pytest.raises(ConfigurationError, match="not both"):
        KafkaTransport("kafka://b:9093", security={"cafile": "/x.pem", "ssl_context": context})


def test_every_transport_accepts_the_revoke_hook(transport: Transport) -> None:
    async def hook(lost: frozenset[TopicPartition]) -> None:
        return None

    assert transport.consumer("g", ["t"], on_revoke=hook) is not None


class _StubKafkaConsumer:
    """Stands in for AIOKafkaConsumer to force the errors a real broker gives rarely."""

    def __init__(self, error: Exception, owned: Sequence[TopicPartition]) -> None:
        self.error = error
        self.owned = [KafkaTopicPartition(tp.topic, tp.partition) for tp in owned]
        self.commits: list[object] = []

    def assignment(self) -> set[KafkaTopicPartition]:
        return set(self.owned)

    async def commit(self, offsets: object) -> None:
        self.commits.append(offsets)
        raise self.error


class _StubProducer:
    async def send(self, *args: object, **kwargs: object) -> object:
        raise KafkaTimeoutError("no broker")

    async def partitions_for(self, topic: str) -> object:
        raise KafkaTimeoutError("no broker")  # the metadata wait with no broker


async def test_kafka_commit_refused_by_a_rebalance_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = KafkaTransport("kafka://b:9092")
    tp = TopicPartition("t", 0)
    for error in (CommitFailedError(), IllegalStateError("Partition t-0 is not assigned")):
        consumer = transport.consumer("g", ["t"])
        stub = _StubKafkaConsumer(error, [tp])
        consumer._consumer = stub  # type: ignore[attr-defined]
        with caplog.at_level("WARNING", logger="choreo.transport.kafka"):
            await consumer.commit({tp: 3, TopicPartition("t", 1): 5})
        assert stub.commits == [{KafkaTopicPartition("t", 0): 3}]  # the unowned one is skipped
        assert "rebalance" in caplog.text
    stub = _StubKafkaConsumer(KafkaTimeoutError("slow"), [tp])
    consumer = transport.consumer("g", ["t"])
    consumer._consumer = stub  # type: ignore[attr-defined]
    with pytest.raises(TransportError) as caught:
        await consumer.commit({tp: 3})
    assert isinstance(caught.value.__cause__, KafkaTimeoutError)


async def test_kafka_send_errors_are_wrapped_in_transport_error() -> None:
    transport = KafkaTransport("kafka://b:9092")
    transport._producer = _StubProducer()
    transport._known_topics.add("t")
    with pytest.raises(TransportError) as caught:
        await transport.send(OutgoingRecord("t", b"k", b"v"))
    assert caught.value.retriable
    assert isinstance(caught.value.__cause__, KafkaTimeoutError)


@pytest.mark.kafka
@pytest.mark.parametrize("padding", [0, 3000], ids=["small", "spanning-batches"])
async def test_kafka_concurrent_senders_to_one_partition_all_get_through(
    kafka_bootstrap: str, padding: int
) -> None:
    """Many tasks sending to one partition at once (a client starting sagas together),
    alone and in batches: every record is acknowledged, none times out, each task's
    records keep their order, and each offset reported is the record's. One sender per
    partition builds what the tasks queue into batches (aiokafka's ready-built batch path
    times out concurrent waiters); with 3 kB values a task's records span several
    batches, and the offsets of each part come from its own batch."""
    topic = f"concurrent.{uuid.uuid4().hex[:8]}"
    async with KafkaTransport(f"kafka://{kafka_bootstrap}", partitions=1) as transport:
        await transport.ensure_topics([topic], 1)

        async def sender(n: int) -> list[Delivered]:
            size = 1 + n % 7
            return await transport.send_many(
                [
                    OutgoingRecord(topic, b"one-key", b"%d-%d" % (n, i) + b"." * padding)
                    for i in range(size)
                ]
            )

        results = await asyncio.wait_for(asyncio.gather(*(sender(n) for n in range(200))), 60)
        for delivered in results:
            offsets = [d.offset for d in delivered]
            assert offsets == sorted(offsets)
            assert len(set(offsets)) == len(offsets)
        every = [d.offset for delivered in results for d in delivered]
        assert len(set(every)) == len(every) == sum(1 + n % 7 for n in range(200))
        consumer = transport.consumer(f"g-{topic}", [topic])
        await consumer.start()
        try:
            got: dict[int, bytes] = {}
            while len(got) < len(every):
                for records in (await consumer.getmany(timeout=1.0)).values():
                    got.update({r.offset: r.value for r in records})
        finally:
            await consumer.stop()
        for delivered, n in zip(results, range(200), strict=True):
            assert [got[d.offset] for d in delivered] == [
                b"%d-%d" % (n, i) + b"." * padding for i in range(len(delivered))
            ]
