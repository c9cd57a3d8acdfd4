"""The faust tracker SIGKILLed and restarted again and again under load, on real Kafka.

After every restart the tracker's state is compared with a replay of the topics (the
pure fold over every record of the saga topics, read with read_committed): for every
saga, the tracker's state must be one the replay passes through (it folded a prefix of
the saga's records, in order, none skipped) and it must reach at least every record that
was in the log when the restarted tracker became ready. A restarted tracker that began
past its committed offsets (records never folded, sagas first folded mid-saga), or an
offset committed past records never folded, fails the check with the gids involved.

``CHOREO_KILL_LOOP_LONG=1`` runs the long variant (more kills, more sagas).
"""

from __future__ import annotations

import asyncio
import heapq
import os
import random
import signal
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from choreo import codec
from choreo.errors import PoisonEvent
from choreo.saga import SagaState
from choreo.testing import Harness
from choreo.tracker.core import TrackerCore
from choreo.transport.base import Record, TopicPartition, Transport
from choreo.transport.kafka import KafkaTransport
from tests.scenarios.trip import trip_contract
from tests.test_faust_tracker import (
    APP_PREFIX,
    TERMINAL,
    TrackerProcess,
    drop_topics,
    read_topics,
    services,
    start,
    tracker_env,
)

LONG = os.environ.get("CHOREO_KILL_LOOP_LONG") == "1"
KILLS = 10 if LONG else 4
SAGAS = 1000 if LONG else 240
DEADLINE, RETRIES, BACKOFF, BACKOFF_MAX = 3.0, 4, 1.0, 4.0
# Every plan keeps a saga's events on one topic: the hotel's bare BusinessFailure
# (choreo.StepFailed, on the system topic) is left out, since how the tracker interleaves
# two topics is its fetch order, which a replay by timestamp cannot know (a failure and a
# deadline check racing end FAILED one way, timed out the other).
PLANS: list[dict[str, str | float]] = [
    {}, {}, {}, {"fail": "flight"}, {"fail": "car"}, {"silent": "car"},
    {"silent": "hotel"}, {"late": "hotel", "late_by": DEADLINE + 1.0},
]  # fmt: skip

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.timeout(900 if LONG else 300),
]

Snapshot = tuple[str, dict[str, str], frozenset[str]]


def snapshot(state: SagaState | Mapping[str, Any]) -> Snapshot:
    """What must agree in the end: status, each step's status, the event ids folded."""
    if isinstance(state, SagaState):
        return (
            state.status.value,
            {name: step.status.value for name, step in state.steps.items()},
            frozenset(state.seen_ids),
        )
    return (
        state["status"],
        {name: step["status"] for name, step in state["steps"].items()},
        frozenset(state["seen_ids"]),
    )


@dataclass
class History:
    """Per gid: the ids the fold remembered, per topic in log order; which of them come
    from records below the ``before`` offsets; the final state."""

    ids: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    before: dict[str, set[str]] = field(default_factory=dict)
    final: dict[str, Snapshot] = field(default_factory=dict)


def replay(
    core: TrackerCore,
    log: Mapping[TopicPartition, list[Record]],
    before: Mapping[TopicPartition, int],
) -> History:
    """Fold the log as the tracker does (test_faust_tracker.replay)."""
    history = History()
    states: dict[str, SagaState] = {}
    for number in sorted({tp.partition for tp in log}):
        streams = [records for tp, records in sorted(log.items()) if tp.partition == number]
        for record in heapq.merge(*streams, key=lambda r: r.timestamp_ms):
            try:
                message = codec.decode(record, core.registry)
            except PoisonEvent:
                continue
            prior = states.get(message.gid)
            if core.ignores(prior, message):
                continue
            after, _ = core.fold(prior, message, record.timestamp_ms / 1000)
            if after is None:
                continue
            states[after.gid] = after
            event_id = message.envelope.event_id
            if after.has_seen(event_id) and (prior is None or not prior.has_seen(event_id)):
                history.ids.setdefault(after.gid, {}).setdefault(record.topic, []).append(event_id)
                if record.offset < before.get(record.tp, 0):
                    history.before.setdefault(after.gid, set()).add(event_id)
    history.final = {gid: snapshot(state) for gid, state in states.items()}
    return history


def judge(history: History, gid: str, state: Mapping[str, Any] | None, final: bool) -> str:
    """Why the tracker's state of ``gid`` is not one the log allows ('' when it is): the
    events it folded must be, on each topic, the saga's first ones (none skipped; how two
    topics interleave is the tracker's fetch order) and include every event below the
    ``before`` offsets; in the end, equal the replay's state."""
    needed = history.before.get(gid, set())
    if state is None:
        return f"never folded ({len(needed)} events before ready)" if needed else ""
    seen = set(state["seen_ids"])
    by_topic = history.ids.get(gid, {})
    if seen - {i for ids in by_topic.values() for i in ids}:
        return "folded events that the log does not hold"
    for topic, ids in by_topic.items():
        mine = [i for i in ids if i in seen]
        if mine != ids[: len(mine)]:
            skipped = [n for n, i in enumerate(ids[: ids.index(mine[-1])]) if i not in seen]
            return f"skipped events {skipped} of {len(ids)} on {topic} (folded mid-saga)"
    if needed - seen:
        return f"behind: {len(needed - seen)} events before ready not folded"
    if final and snapshot(state) != history.final.get(gid):
        return f"final state {snapshot(state)[:2]} != replay {history.final[gid][:2]}"
    return ""


async def compare(
    tracker: TrackerProcess,
    transport: Transport,
    core: TrackerCore,
    ready_ends: Mapping[TopicPartition, int],
    final: bool = False,
    timeout: float = 60.0,
) -> int:
    """Wait until the tracker has folded everything below ``ready_ends`` and check each
    saga's state against the replay (``judge``); returns how many sagas were compared."""
    limit = time.monotonic() + timeout
    while True:
        live = await tracker.summaries()
        states = {gid: await tracker.saga(gid) for gid in live}
        ends = await transport.end_offsets(list(ready_ends))
        history = replay(core, await read_topics(transport, core.topics(), ends), ready_ends)
        problems = {
            gid: why
            for gid in set(history.ids) | set(states)
            if (why := judge(history, gid, states.get(gid), final))
        }
        if not problems:
            return len(history.ids)
        lagging = all(p.startswith(("behind", "never")) for p in problems.values())
        if not lagging or time.monotonic() > limit:
            sample = dict(list(problems.items())[:10])
            raise AssertionError(
                f"{len(problems)} sagas differ from the replay: {sample}\n"
                f"{tracker.output()[-4000:]}"
            )
        await asyncio.sleep(1.0)


def read_gaps(metrics: str) -> int:
    line = next(x for x in metrics.splitlines() if x.startswith("choreo_tracker_read_gaps_total"))
    return int(float(line.split()[-1]))  # prometheus_client writes counters as floats


async def load(h: Harness, count: int, rate: float, started: list[str]) -> None:
    """Start ``count`` sagas at about ``rate`` per second, plans in rotation."""
    for n in range(count):
        gid, _trip = await start(h, **PLANS[n % len(PLANS)])
        started.append(gid)
        await asyncio.sleep(1 / rate)


# RocksDB is the deployments' store (its local state must never get ahead of the
# changelog across a SIGKILL); the long variant runs the memory store too.
STORES = ["rocksdb", "memory"] if LONG else ["rocksdb"]


@pytest.mark.parametrize("store", STORES)
async def test_tracker_killed_repeatedly_under_load_matches_the_replay(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, store: str
) -> None:
    await drop_topics(kafka_bootstrap)
    broker = f"kafka://{kafka_bootstrap}"
    env = tracker_env(DEADLINE, RETRIES, BACKOFF, BACKOFF_MAX, store=store)
    tracker = TrackerProcess(broker, f"{APP_PREFIX}loop-{uuid.uuid4().hex[:8]}", tmp_path, env)
    core = TrackerCore([trip_contract(DEADLINE, RETRIES, BACKOFF, BACKOFF_MAX)])
    rng = random.Random(11)
    compared: list[int] = []
    restarts: list[float] = []
    tracker.start()
    try:
        await asyncio.to_thread(tracker.wait_ready)
        gaps = 0
        async with services(broker, redis_url) as h, KafkaTransport(broker) as transport:
            started: list[str] = []
            rate = SAGAS / (KILLS * 6.0)
            producer = asyncio.create_task(load(h, SAGAS, rate, started))
            try:
                for _ in range(KILLS):
                    await asyncio.sleep(rng.uniform(1.5, 4.0))
                    assert tracker.kill() == -signal.SIGKILL
                    await asyncio.sleep(rng.uniform(0.0, 1.5))  # the load goes on meanwhile
                    tracker.start()
                    restarts.append(await asyncio.to_thread(tracker.wait_ready))
                    tps = await transport.topic_partitions(core.topics())
                    ready_ends = await transport.end_offsets(tps)
                    compared.append(await compare(tracker, transport, core, ready_ends))
                    gaps += read_gaps(await tracker.text("/metrics"))
                await producer
            finally:
                producer.cancel()
            # Everything settles; the final states equal the replay's last states.
            limit = time.monotonic() + 120
            while True:
                known = await tracker.summaries()
                if all(known.get(g, {}).get("status") in TERMINAL for g in started):
                    break
                assert time.monotonic() < limit, "sagas not terminal after 120 s"
                await asyncio.sleep(0.5)
            await h.drain(timeout=60)
            tps = await transport.topic_partitions(core.topics())
            ends = await transport.end_offsets(tps)
            final = await compare(tracker, transport, core, ends, final=True)
        print(
            f"\n{store}: {KILLS} SIGKILLs, {len(started)} sagas; restarts ready in "
            f"{', '.join(f'{t:.1f}' for t in restarts)} s; sagas compared after each "
            f"restart {compared}, at the end {final}"
        )
        assert len(started) == SAGAS
        assert final >= SAGAS
        output = tracker.output()
        # The local databases were never ahead of the changelog (none had to be rebuilt).
        assert "rebuilding it from the changelog" not in output
        print(f"deliveries past records never folded, sought back: {gaps}")
    finally:
        code = tracker.stop()
    assert code == 0, f"tracker did not stop cleanly ({code})\n{tracker.output()}"


async def commit_past(bootstrap: str, group: str, ends: Mapping[TopicPartition, int]) -> None:
    """Commit ``group``'s offsets at ``ends``: what faust does when it commits past records
    the tracker never folded (the group must be empty: the tracker stopped)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import OffsetAndMetadata
    from aiokafka.structs import TopicPartition as KafkaTP

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        tps = {KafkaTP(tp.topic, tp.partition): end for tp, end in ends.items()}
        consumer.assign(list(tps))
        await consumer.commit({tp: OffsetAndMetadata(end, "") for tp, end in tps.items()})
    finally:
        await consumer.stop()


async def test_group_offsets_past_unfolded_records_are_not_trusted(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    """The tracker's group is committed past records it never folded (as faust did), then
    the tracker starts: it seeks back to its folded markers and folds them all."""
    await drop_topics(kafka_bootstrap)
    broker = f"kafka://{kafka_bootstrap}"
    env = tracker_env(DEADLINE, RETRIES, BACKOFF, BACKOFF_MAX, store="rocksdb")
    tracker = TrackerProcess(broker, f"{APP_PREFIX}past-{uuid.uuid4().hex[:8]}", tmp_path, env)
    core = TrackerCore([trip_contract(DEADLINE, RETRIES, BACKOFF, BACKOFF_MAX)])
    tracker.start()
    try:
        await asyncio.to_thread(tracker.wait_ready)
        async with services(broker, redis_url) as h, KafkaTransport(broker) as transport:
            before = [(await start(h))[0] for _ in range(10)]
            limit = time.monotonic() + 60
            while True:
                known = await tracker.summaries()
                if all(known.get(g, {}).get("status") == "COMPLETED" for g in before):
                    break
                assert time.monotonic() < limit, "first sagas not completed"
                await asyncio.sleep(0.3)
            assert tracker.stop() == 0  # a clean stop: the group is empty
            unseen = [(await start(h))[0] for _ in range(30)]  # the tracker is down
            await h.drain(timeout=60)
            tps = await transport.topic_partitions(core.topics())
            ends = await transport.end_offsets(tps)
            await commit_past(kafka_bootstrap, tracker.app_id, ends)
            committed = await transport.group_offsets(tracker.app_id)
            assert all(committed.get(tp, 0) >= end for tp, end in ends.items())
            tracker.start()
            await asyncio.to_thread(tracker.wait_ready)
            compared = await compare(tracker, transport, core, ends)
            gaps = read_gaps(await tracker.text("/metrics"))
        known = await tracker.summaries()
        assert {known[g]["status"] for g in unseen} == {"COMPLETED"}
        assert compared == len(before) + len(unseen)
        assert gaps > 0  # it did seek back
        print(f"\n{len(unseen)} sagas behind a group committed past them; {gaps} partitions "
              "sought back to the folded markers; all match the replay")  # fmt: skip
    finally:
        code = tracker.stop()
    assert code == 0, f"tracker did not stop cleanly ({code})\n{tracker.output()}"
