"""The local runners restart in place, as the fault suite's broker and Redis restarts need:
same data, same cluster, same port, after a clean stop and after SIGKILL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from choreo.local import KafkaBroker, RedisServer
from choreo.local._process import LocalServerUnavailable
from choreo.transport.base import OutgoingRecord
from choreo.transport.kafka import KafkaTransport


async def _count(bootstrap: str, topic: str) -> int:
    async with KafkaTransport(f"kafka://{bootstrap}") as transport:
        tps = await transport.topic_partitions([topic])
        return sum((await transport.end_offsets(tps)).values())


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_kafka_broker_restarts_in_place(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", die_with_parent=True, in_place=True)
    try:
        first = broker.start()
    except LocalServerUnavailable as exc:
        pytest.skip(str(exc))
    topic = f"in-place-{uuid.uuid4().hex[:6]}"
    try:
        cluster = (broker.data_dir / "meta.properties").read_text()
        async with KafkaTransport(f"kafka://{first}") as transport:
            await transport.ensure_topics([topic], 1)
            await transport.send(OutgoingRecord(topic=topic, key=b"k", value=b"before"))
        for how in ("stop", "kill"):
            broker.stop() if how == "stop" else broker.kill()
            assert broker.start() == first, how  # same port
            assert (broker.data_dir / "meta.properties").read_text() == cluster, how
            assert await _count(first, topic) == 1, how  # same data
        fresh = KafkaBroker(tmp_path / "kafka", die_with_parent=True)
        broker.stop()
        fresh.start()  # without in_place: a new cluster, as before
        assert (fresh.data_dir / "meta.properties").read_text() != cluster
        fresh.stop()
    finally:
        broker.stop()


@pytest.mark.redis
async def test_persistent_redis_restarts_on_its_port_with_its_data(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", die_with_parent=True, persist=True)
    try:
        url = server.start()
    except LocalServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        client = aioredis.from_url(url)
        await client.set("kept", "yes")
        await client.aclose()
        server.stop()
        assert server.start() == url
        client = aioredis.from_url(url)
        assert await client.get("kept") == b"yes"
        await client.aclose()
        server.stop()
        client = aioredis.from_url(server.start(fresh=True))
        assert await client.get("kept") is None  # fresh: the data is gone
        await client.aclose()
    finally:
        server.stop()
