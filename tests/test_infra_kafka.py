"""The test suite's real Kafka broker takes the producer and consumer settings choreo relies on."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.kafka


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])
        # The controller has committed the topic, but the broker's metadata cache catches up
        # a moment later; clients must not assume the topic is visible straight away.
        async with asyncio.timeout(10):
            while topic not in await admin.list_topics():
                await asyncio.sleep(0.05)
    finally:
        await admin.close()


async def _consume(consumer: AIOKafkaConsumer, count: int) -> list[ConsumerRecord]:
    records: list[ConsumerRecord] = []
    async with asyncio.timeout(30):
        while len(records) < count:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
    return records


async def test_aiokafka_acks_all_idempotent_round_trip_on_real_broker(kafka_bootstrap: str) -> None:
    topic = f"infra-{uuid.uuid4().hex[:8]}"
    group = f"group-{topic}"
    await _create_topic(kafka_bootstrap, topic, partitions=3)

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for seq in range(5):
            headers = [("event-type", b"OrderPlaced"), ("seq", str(seq).encode())]
            await producer.send_and_wait(
                topic, key=b"gid-1", value=f"payload-{seq}".encode(), headers=headers
            )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        records = await _consume(consumer, 5)
        await consumer.commit()
        partition = TopicPartition(topic, records[0].partition)
        committed = await consumer.committed(partition)
    finally:
        await consumer.stop()

    # One key, so one partition, in send order.
    assert {r.partition for r in records} == {partition.partition}
    assert [r.key for r in records] == [b"gid-1"] * 5
    assert [r.value for r in records] == [f"payload-{seq}".encode() for seq in range(5)]
    assert [dict(r.headers) for r in records] == [
        {"event-type": b"OrderPlaced", "seq": str(seq).encode()} for seq in range(5)
    ]
    assert committed == records[-1].offset + 1


async def test_committed_group_resumes_after_last_commit(kafka_bootstrap: str) -> None:
    topic = f"infra-{uuid.uuid4().hex[:8]}"
    group = f"group-{topic}"
    await _create_topic(kafka_bootstrap, topic, partitions=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for value in (b"a", b"b", b"c"):
            await producer.send_and_wait(topic, key=b"gid", value=value)
    finally:
        await producer.stop()

    def new_consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    first = new_consumer()
    await first.start()
    try:
        record_a = (await _consume(first, 1))[0]
        await first.commit({TopicPartition(topic, 0): record_a.offset + 1})
    finally:
        await first.stop()

    second = new_consumer()
    await second.start()
    try:
        resumed = await _consume(second, 2)
    finally:
        await second.stop()
    assert [r.value for r in resumed] == [b"b", b"c"]
