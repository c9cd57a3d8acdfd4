"""A service on the PostgreSQL barrier, SIGKILLed after its batch's database commit and
before the publish, or after the publish and before the offset commit, loses nothing and
applies nothing twice (real Kafka, real PostgreSQL, a real subprocess, 200 sagas): the
handler's rows exist once per order, every order's output is published, re-publications
carry the first event id."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import asyncpg
import pytest

from choreo import Event, codec
from choreo.events import Envelope, Message
from choreo.transport.base import TopicPartition
from choreo.transport.kafka import KafkaTransport

ROOT = Path(__file__).resolve().parent.parent
ORDERS = 200


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.procs.pg_crashy"], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


async def read_all(transport: KafkaTransport, topic: str) -> dict[str, list[str]]:
    tps = await transport.topic_partitions([topic])
    ends = await transport.end_offsets(tps)
    found: dict[str, list[str]] = defaultdict(list)
    consumer = transport.consumer(f"probe-{uuid.uuid4().hex[:8]}", [topic])
    await consumer.start()
    try:
        seen: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + 60
        while any(seen.get(tp, 0) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for tp, records in (await consumer.getmany(timeout=0.5)).items():
                for record in records:
                    envelope = codec.decode_envelope(record)
                    found[envelope.gid].append(envelope.event_id)
                    seen[tp] = record.offset + 1
    finally:
        await consumer.stop()
    return found


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kill", ["after-commit", "after-publish"])
async def test_sigkill_of_a_service_on_the_sql_barrier(
    kill: str, postgres_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    ns = uuid.uuid4().hex[:8]
    topic, table = f"test.pgcrashy.{ns}", f"pgc_rows_{ns}"
    broker = f"kafka://{kafka_bootstrap}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PGC_BROKER": broker, "PGC_URL": postgres_url,
           "PGC_PREFIX": f"c{ns}_", "PGC_TABLE": table, "PGC_TOPIC": topic,
           "PGC_GROUP": f"pgcrashy-{ns}", "PGC_KILL": kill}  # fmt: skip
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"CREATE TABLE {table} (order_id text NOT NULL)")

        class PgOrder(Event, topic=topic):  # the subprocess's event, on this test's topic
            order_id: str

        async with KafkaTransport(broker, partitions=4) as transport:
            await transport.ensure_topics([topic, f"{topic}.out", "choreo.dlq"], 4)
            gids = [f"{ns}-{n}" for n in range(ORDERS)]
            records = []
            for gid in gids:
                order = PgOrder(order_id=gid)
                envelope = Envelope.first(order, gid=gid, source="test")
                records.append(codec.encode(Message(envelope, order, topic)))
            await transport.send_many(records)

            first = start(env, tmp_path / "first.log")
            try:
                first.wait(120)
            finally:
                if first.poll() is None:
                    first.kill()
                    first.wait(10)
            log = (tmp_path / "first.log").read_text()
            assert first.returncode == -signal.SIGKILL, log
            assert ("dying before the publish" in log) == (kill == "after-commit"), log
            written = await conn.fetchval(f"SELECT count(*) FROM {table}")
            published_before = await read_all(transport, f"{topic}.out")
            assert written > 0, log  # a batch was committed in PostgreSQL
            if kill == "after-commit":
                assert published_before == {}
            else:
                assert published_before != {}

            second = start({**env, "PGC_KILL": "none"}, tmp_path / "second.log")
            try:
                deadline = time.monotonic() + 120
                while await conn.fetchval(f"SELECT count(DISTINCT order_id) FROM {table}") < ORDERS:
                    assert time.monotonic() < deadline, (tmp_path / "second.log").read_text()
                    assert second.poll() is None, (tmp_path / "second.log").read_text()
                    await asyncio.sleep(0.2)
                while len(await read_all(transport, f"{topic}.out")) < ORDERS:
                    assert time.monotonic() < deadline, "outputs missing"
                    await asyncio.sleep(0.5)
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(30)
            output = (tmp_path / "second.log").read_text()
            assert "stopped cleanly" in output, output

            rows = await conn.fetch(f"SELECT order_id, count(*) AS n FROM {table} GROUP BY 1")
            assert {row["order_id"]: row["n"] for row in rows} == {gid: 1 for gid in gids}
            published = await read_all(transport, f"{topic}.out")
            assert set(published) == set(gids)  # no output lost
            assert all(len(set(ids)) == 1 for ids in published.values())  # one id each
            again = [gid for gid in published_before if len(published[gid]) >= 2]
            if kill == "after-publish":
                assert again  # sent before the kill, then re-sent from the barrier's outbox
    finally:
        await conn.close()
