"""Two faust tracker workers of one app id on real Kafka: they split the partitions, each
answers for every saga (forwarding to the owner, fanning out lists and counts), and when
one is SIGKILLed the other takes its partitions, fires its deadlines and serves its sagas;
its states then equal a replay of the topics.

The default run starts 200 sagas; the full run (1,000) is in
tests/faults/test_tracker_workers_full.py, run by scripts/faults.sh.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from choreo.testing import Harness
from choreo.tracker.core import TrackerCore
from choreo.transport.kafka import KafkaTransport
from choreo.transport.partitioner import partition_for
from tests.scenarios.trip import trip_contract
from tests.test_faust_tracker import (
    APP_PREFIX,
    TrackerProcess,
    drop_topics,
    services,
    settled,
    start,
    tracker_env,
)
from tests.test_tracker_kill_loop import compare

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(420)]

# A budget that outlasts the services' lag when 50 sagas compensate at once on a loaded
# machine (0.5 + 1 + 2 + 4 + 4 + 4 s).
RETRIES, BACKOFF, BACKOFF_MAX = 6, 0.5, 4.0
PARTITIONS = 4  # KafkaTransport's default for the topics it creates
# Sagas that end by themselves; a quarter more wait on a step that stays silent.
PLANS: list[dict[str, str | float]] = [{}, {}, {"fail": "flight"}]


def post(worker: TrackerProcess, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(worker.url + path, data=json.dumps(body).encode())
    request.add_header("Authorization", f"Bearer {worker.token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


async def status_of(worker: TrackerProcess, path: str) -> int:
    try:
        await worker.get(path)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    return 200


async def owners(worker: TrackerProcess, count: int, timeout: float = 90.0) -> dict[str, Any]:
    """Wait until ``worker``'s /workers shows ``count`` workers each owning a partition."""
    limit = time.monotonic() + timeout
    while True:
        found: dict[str, Any] = await worker.get("/workers")
        held = [p for p in found["workers"].values() if p]
        if len(held) == count and sum(map(len, held)) == PARTITIONS:
            return found
        assert time.monotonic() < limit, f"workers not assigned after {timeout}s: {found}"
        await asyncio.sleep(0.5)


async def listed_by(workers: list[TrackerProcess], count: int, timeout: float = 180) -> None:
    """Wait until each of ``workers`` lists ``count`` sagas (every worker's)."""
    limit = time.monotonic() + timeout
    while (seen := [len(await w.summaries()) for w in workers]) != [count] * len(workers):
        assert time.monotonic() < limit, f"the workers list {seen} of {count} sagas"
        await asyncio.sleep(0.3)


async def publish(h: Harness, plans: list[dict[str, str | float]]) -> list[str]:
    """Start a saga per plan, 50 at a time; their gids in order."""
    gids: list[str] = []
    for first in range(0, len(plans), 50):
        chunk = plans[first : first + 50]
        gids += [gid for gid, _ in await asyncio.gather(*(start(h, **p) for p in chunk))]
    return gids


async def run_two_workers(
    bootstrap: str, redis_url: str, tmp_path: Path, sagas: int, standby: int = 0
) -> None:
    """The scenario of this module with ``sagas`` sagas; ``standby``: faust's standby
    replicas (``--standby-replicas``), a warm copy of the other worker's partitions."""
    await drop_topics(bootstrap)
    broker = f"kafka://{bootstrap}"
    # Long enough that the silent steps' deadlines pass after the kill: publishing the
    # 250 silent sagas of the full run and seeing them folded took up to 10 s here.
    deadline = 12.0 if sagas <= 200 else 25.0
    settling = sagas * 3 // 4
    env = tracker_env(deadline, RETRIES, BACKOFF, BACKOFF_MAX, store="rocksdb")
    env["CHOREO_TRACKER_STANDBY_REPLICAS"] = str(standby)
    app_id = f"{APP_PREFIX}workers-{uuid.uuid4().hex[:8]}"
    a, b = (TrackerProcess(broker, app_id, tmp_path / n, env) for n in "ab")
    b.token = a.token  # one token for the workers of one app id
    for worker in (a, b):
        worker.workdir.mkdir()
        worker.env["CHOREO_TRACKER_URL"] = worker.url
    core = TrackerCore([trip_contract(deadline, RETRIES, BACKOFF, BACKOFF_MAX)])
    a.start()
    b.start()
    try:
        await asyncio.gather(asyncio.to_thread(a.wait_ready), asyncio.to_thread(b.wait_ready))
        assignment = await owners(a, 2)
        b_parts = set(assignment["workers"][b.url])
        assert assignment["me"] == a.url
        assert b_parts, assignment
        async with services(broker, redis_url) as h, KafkaTransport(broker) as transport:
            began = time.monotonic()
            started = await publish(h, [PLANS[n % len(PLANS)] for n in range(settling)])
            published = time.monotonic() - began
            # Every worker lists every saga (its own and the other's).
            await listed_by([a, b], settling)
            listed = time.monotonic() - began
            counts = [await w.get("/counts") for w in (a, b)]
            assert [c["total"] for c in counts] == [settling, settling]
            assert [(c["workers"], c["unanswered"]) for c in counts] == [(2, []), (2, [])]
            theirs = [g for g in started if partition_for(g.encode(), PARTITIONS) in b_parts]
            ours = [g for g in started if g not in set(theirs)]
            assert theirs
            assert ours
            # Any gid from either worker: A forwards B's sagas to B and the reverse (a
            # sample here; after the kill, every saga).
            for worker, gids in ((a, theirs[-30:]), (b, ours[-30:])):
                for gid in gids:
                    state = await worker.saga(gid)
                    assert state is not None
                    assert state["gid"] == gid
            # Then the sagas waiting on a silent step, whose deadlines must outlive B.
            silent = await publish(h, [{"silent": "car"}] * (sagas - settling))
            started += silent
            await listed_by([a], sagas)
            # An admin action on one of B's sagas, sent to A: forwarded with its body.
            silent = [g for g in silent if partition_for(g.encode(), PARTITIONS) in b_parts]
            forced = silent[0]
            body = {"action": "compensate", "actor": "workers-test", "note": "via worker a"}
            code, answer = await asyncio.to_thread(post, a, f"/sagas/{forced}/commands", body)
            assert code == 202, answer
            assert (answer["gid"], answer["action"]) == (forced, "compensate")
            checked = time.monotonic() - began
            print(f"\npublished {published:.1f}s, listed {listed:.1f}s, checked {checked:.1f}s")

            assert b.kill() == -signal.SIGKILL
            killed_at = time.time()
            # Until the group notices, B's sagas cannot be served and lists say who is missing.
            assert await status_of(a, f"/sagas/{theirs[0]}") == 503
            partial = await a.get("/counts")
            assert [u["worker"] for u in partial["unanswered"]] == [b.url], partial
            assert partial["total"] < sagas

            # A takes B's partitions, fires the deadlines B's sagas still had, and serves all.
            await owners(a, 1)
            owned_all = time.time() - killed_at
            await listed_by([a], sagas, timeout=120)
            serving_all = time.time() - killed_at
            await settled(a, started, timeout=180)
            took_over = time.time() - killed_at
            fired_by_a = 0
            for gid in silent:
                state = await a.saga(gid)
                assert state is not None
                assert state["status"] == "COMPENSATED", (gid, state["reason"], state["steps"])
                car = state["steps"]["car"]
                if gid != forced and car["deadline_at"] > killed_at:
                    assert state["reason"] == "step car timed out"
                    assert car["compensation_issued_at"] >= car["deadline_at"]
                    fired_by_a += 1
            assert fired_by_a > 0, "no deadline of B's sagas was left for A to fire"
            forced_state = await a.saga(forced)
            assert forced_state is not None
            assert any("workers-test" in str(e) for e in forced_state["timeline"])
            await h.drain(timeout=60)
            tps = await transport.topic_partitions(core.topics())
            ends = await transport.end_offsets(tps)
            compared = await compare(a, transport, core, ends, final=True)
        assert compared >= sagas
        print(
            f"\n{sagas} sagas on 2 workers ({standby} standby): published in {published:.1f}s, "
            f"listed by both after {listed:.1f}s, all read through both after {checked:.1f}s; "
            f"B SIGKILLed: "
            f"A owned every partition after {owned_all:.1f}s, listed every saga after "
            f"{serving_all:.1f}s, all terminal after {took_over:.1f}s, firing {fired_by_a} "
            f"of B's deadlines; "
            f"{compared} states equal the replay"
        )
    finally:
        codes = [w.stop() for w in (a, b)]
    assert codes[0] == 0, f"worker a did not stop cleanly ({codes[0]})\n{a.output()}"


async def test_two_workers_serve_every_saga_and_survive_a_sigkill(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    await run_two_workers(kafka_bootstrap, redis_url, tmp_path, 200)
