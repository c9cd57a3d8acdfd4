"""The faust tracker steps over a record the Kafka client cannot read (issue 12).

A record whose header key is not UTF-8 made aiokafka raise inside faust's consumer
thread: the tracker ended, and every restart ended again on the same record. Now it is
dead-lettered on choreo.dlq (its topic, partition and offset) and its partition keeps
flowing: the records before and after it, in its own batch too, are tracked, and the
tracker's group commits past it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from choreo.deadletter import DLQ_TOPIC, H_OFFSET, H_PARTITION, H_REASON, H_SERVICE, H_TOPIC
from choreo.transport.base import Record
from choreo.transport.kafka import KafkaTransport
from choreo.transport.partitioner import partition_for
from tests.scenarios.trip import TOPIC
from tests.test_faust_tracker import (
    APP_PREFIX,
    TrackerProcess,
    caught_up,
    drop_topics,
    settled,
    tracker_env,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def fresh_topics(kafka_bootstrap: str) -> Iterator[None]:
    """The trip topic is shared with other modules: none of them should meet the
    unreadable records written here."""
    asyncio.run(drop_topics(kafka_bootstrap))
    yield
    asyncio.run(drop_topics(kafka_bootstrap))


def gids_in(partition: int, partitions: int, count: int, prefix: str) -> list[str]:
    found: list[str] = []
    while len(found) < count:
        gid = f"{prefix}-{uuid.uuid4().hex[:12]}"
        if partition_for(gid.encode(), partitions) == partition:
            found.append(gid)
    return found


async def tracker_letters(transport: KafkaTransport, wanted: int) -> list[Record]:
    """The tracker's dead letters on choreo.dlq, once there are ``wanted`` of them."""
    consumer = transport.consumer(f"ft-unreadable-dlq-{uuid.uuid4().hex}", [DLQ_TOPIC])
    await consumer.start()
    letters: list[Record] = []
    limit = time.monotonic() + 60
    try:
        while len(letters) < wanted and time.monotonic() < limit:
            for records in (await consumer.getmany(timeout=0.5)).values():
                letters += [r for r in records if r.header(H_SERVICE) == b"tracker"]
    finally:
        await consumer.stop()
    return letters


async def test_an_unreadable_record_is_dead_lettered_and_its_partition_flows(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    began = time.monotonic()
    tracker = TrackerProcess(
        f"kafka://{kafka_bootstrap}",
        f"{APP_PREFIX}unreadable-{uuid.uuid4().hex[:8]}",
        tmp_path,
        tracker_env(),
    )
    tracker.start()
    try:
        await asyncio.to_thread(tracker.wait_ready)
        async with KafkaTransport(tracker.broker) as transport:
            partitions = await transport.partitions_for(TOPIC)  # the tracker created it
            p, other = 1, 2
            before = gids_in(p, partitions, 2, "before") + gids_in(other, partitions, 1, "before")
            a, b, c = gids_in(p, partitions, 3, "good")
            x, y = gids_in(other, partitions, 2, "good")
            bad = gids_in(p, partitions, 2, "bad")
            plan = [
                [["saga", gid] for gid in before],  # good events, each partition one batch
                # In one batch of partition p: a's events, the unreadable one, b's events.
                [["saga", a], ["bad", bad[0]], ["saga", b], ["saga", x]],
                # A batch of p that ends with an unreadable record.
                [["saga", c], ["saga", y], ["bad", bad[1]]],
            ]
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "tests.procs.unreadable_trip", kafka_bootstrap, TOPIC,
                 json.dumps(plan)],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            unreadable = {(TOPIC, part, offset) for part, offset in json.loads(done.stdout)}
            assert {part for _, part, _ in unreadable} == {p}
            assert len(unreadable) == 2

            good = [*before, a, b, c, x, y]
            states = await settled(tracker, good)
            assert {gid: s["status"] for gid, s in states.items()} == dict.fromkeys(
                good, "COMPLETED"
            )
            for gid in bad:
                assert await tracker.saga(gid) is None  # skipped, not folded

            letters = await tracker_letters(transport, 2)
            where = {
                (
                    (r.header(H_TOPIC) or b"").decode(),
                    int(r.header(H_PARTITION) or -1),
                    int(r.header(H_OFFSET) or -1),
                )
                for r in letters
            }
            assert where == unreadable, letters
            for letter in letters:
                reason = (letter.header(H_REASON) or b"").decode()
                offset = int(letter.header(H_OFFSET) or -1)
                assert f"record {TOPIC}[{p}]@{offset} has a header key that is not UTF-8" in (
                    reason
                )
                assert letter.key in {gid.encode() for gid in bad}
                assert all("\udcff" not in name for name, _ in letter.headers)

            # The group commits past the unreadable records, up to the end of the topic.
            await caught_up(transport, tracker.app_id, [TOPIC])
            metrics = await tracker.text("/metrics")
            gaps = [line for line in metrics.splitlines() if line.startswith("choreo_tracker_")]
            assert "choreo_tracker_read_gaps_total 0.0" in gaps, gaps  # read in order, no rewinds
            assert tracker.proc is not None
            assert tracker.proc.poll() is None, tracker.output()
    finally:
        code = tracker.stop()
    assert code == 0, f"tracker did not stop cleanly ({code})\n{tracker.output()}"
    print(f"\nunreadable records test: {time.monotonic() - began:.1f}s")
