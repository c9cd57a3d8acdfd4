"""SIGKILL of a process holding outbox rows loses nothing (real PostgreSQL, real Kafka, a
real subprocess): killed after the commit and before any publish, the rows are published
by the next relay; killed after the broker acknowledged a batch and before the rows were
marked sent, they are published again with the same event ids (which a consumer's barrier
drops), in order per gid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from choreo import codec
from choreo.events import derived_event_id
from choreo.outbox import OutboxRelay
from choreo.store.postgres import PostgresStore
from choreo.transport.base import TopicPartition
from choreo.transport.kafka import KafkaTransport

ROOT = Path(__file__).resolve().parent.parent
GIDS = 40
PER_GID = 6  # 240 rows per run


async def read_all(transport: KafkaTransport, topic: str) -> dict[str, list[str]]:
    """Every record on ``topic``: event ids by gid, in the order read."""
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
@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["after-commit", "after-publish"])
async def test_sigkill_loses_no_outbox_row(
    mode: str, postgres_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    ns = uuid.uuid4().hex[:8]
    topic, prefix = f"test.outbox.{ns}", f"k{ns}_"
    gids = [f"{ns}-{i}" for i in range(GIDS)]
    broker = f"kafka://{kafka_bootstrap}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OUTBOX_URL": postgres_url,
           "OUTBOX_BROKER": broker, "OUTBOX_PREFIX": prefix, "OUTBOX_TOPIC": topic,
           "OUTBOX_GIDS": ",".join(gids), "OUTBOX_PER_GID": str(PER_GID),
           "OUTBOX_MODE": mode}  # fmt: skip
    log = tmp_path / "crashy.log"
    command = [sys.executable, "-m", "tests.procs.outbox_crashy"]
    with log.open("wb") as out:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=120)  # fmt: skip
    output = log.read_text()
    assert done.returncode == -signal.SIGKILL, output
    expected_published = "published" in output
    assert expected_published == (mode == "after-publish"), output

    transport = KafkaTransport(broker, partitions=4)
    await transport.start()
    try:
        await transport.ensure_topics([topic], 4)
        before = await read_all(transport, topic)
        async with PostgresStore(postgres_url, table_prefix=prefix) as store:
            assert isinstance(store, PostgresStore)
            unsent = f"SELECT count(*) FROM {store.tables.outbox} WHERE sent_at IS NULL"
            assert await store.pool.fetchval(unsent) == GIDS * PER_GID  # nothing marked
            await OutboxRelay(store, transport).drain()
            assert await store.pool.fetchval(unsent) == 0
        found = await read_all(transport, topic)
    finally:
        await transport.stop()

    expected = {gid: [derived_event_id(gid, str(n)) for n in range(PER_GID)] for gid in gids}
    if mode == "after-commit":
        assert sum(map(len, before.values())) == 0
        assert dict(found) == expected  # each once, in order
    else:
        assert sum(map(len, before.values())) == 50  # the batch acknowledged before the kill
        for gid in gids:
            ids = found[gid]
            # Re-published with the same ids; the first copies in order, then all again.
            assert set(ids) == set(expected[gid])
            assert list(dict.fromkeys(ids)) == expected[gid]
            again = ids[len(before.get(gid, [])) :]
            assert again == expected[gid]
