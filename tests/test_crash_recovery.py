"""A service process SIGKILLed in the middle of a batch loses nothing and applies nothing
twice (real Kafka, real Redis, a real subprocess).

Twenty orders wait on the topic before the service starts, so its partitions' records
arrive as batches of several. The service stalls at one point of a batch (see
tests/procs/crashy.py), is SIGKILLed there, and restarted without stalling:

- ``before-store-commit``: the handlers ran, nothing is recorded;
- ``after-store-commit``: effects and outboxes are recorded, nothing is sent;
- ``after-handle``: outgoing events are acknowledged, the offsets are not committed;
- ``acks-pending``: a batch is recorded and its send never starts, while the partition's
  next batch is prepared, recorded and sent (the worker awaits a batch's
  acknowledgements while it prepares the next one); no offset of the partition is
  committed.

Afterwards every order's effect is applied exactly once, every order's output is
published, a re-published output keeps its event id, and the offsets are committed.
"""

from __future__ import annotations

import asyncio
import json
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
from choreo.errors import TransportError
from choreo.events import Envelope, Message
from choreo.store.base import Put
from choreo.store.redis import RedisStore
from choreo.transport.base import TopicPartition, Transport
from choreo.transport.kafka import KafkaTransport
from choreo.transport.partitioner import partition_for
from tests.procs.crashy import CrashyOrder
from tests.topics import event_ids

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
PER_PARTITION = 5
ORDERS = PARTITIONS * PER_PARTITION
STOCK = 100


def start_service(
    broker: str,
    redis_url: str,
    *,
    group: str,
    topic: str,
    stall: str,
    pause_file: Path | None,
    log: Path,
) -> subprocess.Popen[bytes]:
    """``choreo run tests.procs.crashy:app``. The store stalls of crashy are in its own
    store (CRASHY_STORE_URL, no --store); the after-handle stall runs on --store."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CRASHY_GROUP": group,
           "CRASHY_TOPIC": topic, "CRASHY_STALL": stall}  # fmt: skip
    for name in ("CRASHY_PAUSE_FILE", "CRASHY_STORE_URL", "CHOREO_STORE", "CHOREO_BROKER"):
        env.pop(name, None)
    if pause_file is not None:
        env["CRASHY_PAUSE_FILE"] = str(pause_file)
    command = [sys.executable, "-m", "choreo.cli.main", "run", "tests.procs.crashy:app",
               "--broker", broker]  # fmt: skip
    if stall == "acks-pending":  # the process's own stalling transport, 2 records a batch
        command = [sys.executable, "-m", "tests.procs.crashy"]
        env.update(CRASHY_BROKER=broker, CRASHY_STORE_URL=redis_url, CRASHY_BATCH="2")
    elif stall == "after-handle":
        command += ["--store", redis_url]
    else:
        env["CRASHY_STORE_URL"] = redis_url
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


async def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def balanced_gids() -> list[str]:
    """Fresh gids, PER_PARTITION of them landing on each partition (Kafka's default
    partitioner, which ``partition_for`` mirrors), so every partition has a batch."""
    by_partition: dict[int, list[str]] = defaultdict(list)
    while min((len(by_partition[p]) for p in range(PARTITIONS)), default=0) < PER_PARTITION:
        gid = str(uuid.uuid4())
        bucket = by_partition[partition_for(gid.encode(), PARTITIONS)]
        if len(bucket) < PER_PARTITION:
            bucket.append(gid)
    return [gid for p in range(PARTITIONS) for gid in by_partition[p]]


async def committed(transport: Transport, group: str) -> dict[TopicPartition, int]:
    try:
        return await transport.group_offsets(group)
    except TransportError:  # the group coordinator is not there yet
        return {}


async def outputs(transport: Transport, topic: str) -> dict[str, list[str]]:
    """Every output on ``topic`` so far: event ids by gid, in the order read."""
    return await event_ids(transport, topic, event_type="CrashyReserved")


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "stall", ["before-store-commit", "after-store-commit", "after-handle", "acks-pending"]
)
async def test_sigkill_inside_a_batch(
    stall: str, kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    broker = f"kafka://{kafka_bootstrap}"
    run = uuid.uuid4().hex[:8]
    group, topic, sku = f"crashy-{run}", f"test.crashy.{run}", f"sku-{run}"
    out_topic = f"{topic}.out"
    stock = f"stock:{sku}"
    pause = tmp_path / "paused"
    gids = balanced_gids()

    async with KafkaTransport(broker) as transport, RedisStore(redis_url) as store:
        await transport.ensure_topics([topic, out_topic, "choreo.dlq"], PARTITIONS)
        in_tps = await transport.topic_partitions([topic])
        out_tps = await transport.topic_partitions([out_topic])
        assert len(in_tps) == PARTITIONS
        assert await store.apply([Put(stock, str(STOCK))]) == ""
        for n, gid in enumerate(gids):
            order = CrashyOrder(order_id=f"o{n}", sku=sku, qty=1)
            envelope = Envelope.first(order, gid=gid, source="test")
            delivered = await transport.send(codec.encode(Message(envelope, order, topic)))
            assert delivered.partition == partition_for(gid.encode(), PARTITIONS)

        first = start_service(broker, redis_url, group=group, topic=topic, stall=stall,
                              pause_file=pause, log=tmp_path / "first.log")  # fmt: skip
        try:
            await wait_for(lambda: _exists(pause), 60, f"the {stall} stall")
            stalled = json.loads(pause.read_text())["gids"]
            assert set(stalled) <= set(gids)
            if stall == "acks-pending":
                # The stalled batch's partition: its next batch goes out meanwhile.
                ours = partition_for(stalled[0].encode(), PARTITIONS)
                mine = [g for g in gids if partition_for(g.encode(), PARTITIONS) == ours]
                following = [g for g in mine if g not in stalled][: len(stalled)]

                async def next_batch_sent() -> bool:
                    found = await outputs(transport, out_topic)
                    return all(gid in found for gid in following)

                await wait_for(next_batch_sent, 30, "the next batch's outputs")
            # What the process did up to the stall, seen from outside before the kill.
            left = await store.get_int(stock)
            sent = sum((await transport.end_offsets(out_tps)).values())
            done = await committed(transport, group)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(10)
        assert first.returncode == -signal.SIGKILL
        log = (tmp_path / "first.log").read_text()

        if stall == "before-store-commit":
            # A batch of several records, its handlers run; no batch got to its commit.
            assert len(stalled) > 1, log
            assert left == STOCK
            assert sent == 0
            assert not any(done.values())
            assert [await store.records(gid) for gid in gids] == [[] for _ in gids]
        elif stall == "after-store-commit":
            # The stalled batch's effects and outboxes are recorded; nothing was sent.
            assert len(stalled) > 1, log
            assert left <= STOCK - len(stalled)
            assert sent == 0
            assert not any(done.values())
            for gid in stalled:
                assert [(r.key.op, r.status) for r in await store.records(gid)] == [
                    ("action", "done")
                ]
        elif stall == "acks-pending":
            # Two batches of one partition recorded: the stalled one never sent, the next
            # one sent; nothing of the partition committed (its first batch never landed).
            assert len(stalled) == 2, log
            stalled_tp = TopicPartition(topic, ours)
            assert left <= STOCK - 4
            before = await outputs(transport, out_topic)
            assert not any(gid in before for gid in stalled)
            assert all(len(before[gid]) == 1 for gid in following)
            assert done.get(stalled_tp, 0) == 0
            for gid in stalled:
                assert [(r.key.op, r.status) for r in await store.records(gid)] == [
                    ("action", "done")
                ]
        else:
            # The stalled batch's outputs are acknowledged; its offsets are not committed.
            (killed,) = stalled
            stalled_tp = TopicPartition(topic, partition_for(killed.encode(), PARTITIONS))
            assert left <= STOCK - 1
            assert sent >= 1
            assert done.get(stalled_tp, 0) == 0

        second = start_service(broker, redis_url, group=group, topic=topic, stall=stall,
                               pause_file=None, log=tmp_path / "second.log")  # fmt: skip
        try:

            async def all_committed() -> bool:
                ends = await transport.end_offsets(in_tps)
                offsets = await committed(transport, group)
                return all(offsets.get(tp, 0) >= end for tp, end in ends.items())

            await wait_for(all_committed, 60, "the restarted service to commit everything")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(20)
            output = (tmp_path / "second.log").read_text()
        assert second.returncode == 0, output
        assert "stopped cleanly" in output

        assert await store.get_int(stock) == STOCK - ORDERS  # each order applied once
        for gid in gids:
            assert [(r.key.op, r.status) for r in await store.records(gid)] == [("action", "done")]
        published = await outputs(transport, out_topic)
        assert set(published) == set(gids)  # no output lost
        # One outcome per order, one event id: re-publications repeat the first id.
        assert all(len(set(ids)) == 1 for ids in published.values()), published
        if stall == "after-handle":
            # Sent before the kill, then re-sent from the outbox when redelivered.
            assert len(published[killed]) >= 2
        elif stall == "after-store-commit":
            # Recorded before the kill; the restart sent the stored outbox, once.
            assert all(len(published[gid]) == 1 for gid in stalled)
        elif stall == "acks-pending":
            # The stalled batch sent once, from its stored outbox after the restart; the
            # next batch again after the restart (its offsets were never committed).
            assert all(len(published[gid]) == 1 for gid in stalled)
            assert all(len(published[gid]) >= 2 for gid in following)


async def _exists(path: Path) -> bool:
    return path.exists()
