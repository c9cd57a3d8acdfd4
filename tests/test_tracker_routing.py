"""The state API over several tracker workers, in-process: two real state API servers, each
holding the sagas of its own partitions (split from a memory tracker that followed them),
routed by a fixed partition map (what faust's assignment gives the faust workers; the
faust side is tested on real Kafka in tests/test_tracker_workers.py). Every answer is
compared with what one tracker holding every saga answers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from choreo.cli.tracker import check_worker_url, worker_url
from choreo.errors import UsageError
from choreo.local._process import free_port
from choreo.saga import SagaState, SagaStatus
from choreo.testing import Harness
from choreo.tracker import merge
from choreo.tracker.api import serve_api
from choreo.tracker.http import LOCAL_HEADER, MAX_WINDOW
from choreo.tracker.memory import MemoryTracker
from choreo.tracker.routing import WORKER_HEADER
from choreo.tracker.view import StatesView, TrackerMetrics
from choreo.transport.partitioner import partition_for
from tests.cli_support import choreo
from tests.scenarios.trip import Plan, TripBooked, build_travel

TOKEN = "routing-token"
PARTITIONS = 4
PLANS = [Plan()] * 4 + [Plan(fail="hotel")] * 2 + [Plan(lost="car")] * 2


@dataclass
class FixedWorkers:
    """``routing.Workers`` over a fixed map of URL -> partitions."""

    url: str
    partitions: dict[str, list[int]]

    def me(self) -> str:
        return self.url

    def owner(self, gid: str) -> str | None:
        partition = partition_for(gid.encode(), PARTITIONS)
        return next((u for u, ps in self.partitions.items() if partition in ps), None)

    def others(self) -> list[str]:
        return [u for u in self.partitions if u != self.url]

    def distribution(self) -> dict[str, list[int]]:
        return self.partitions


@dataclass
class Cluster:
    session: aiohttp.ClientSession
    a: str
    b: str
    states: dict[str, SagaState]
    b_stop: asyncio.Event

    async def get(self, url: str, path: str, **headers: str) -> tuple[int, Any, str]:
        headers["Authorization"] = f"Bearer {TOKEN}"
        async with self.session.get(url + path, headers=headers) as response:
            return response.status, await response.json(), response.headers.get(WORKER_HEADER, "")


async def followed_states() -> dict[str, SagaState]:
    prefix = f"r{uuid.uuid4().hex[:8]}"
    travel = build_travel(prefix, deadline=0.3)
    tracker = MemoryTracker([travel.contract], group=f"{prefix}.tracker")
    async with Harness(*travel.services, tracker) as h:
        gids = [await h.publish(TripBooked(trip_id=uuid.uuid4().hex, plan=p)) for p in PLANS * 3]
        limit = time.monotonic() + 20
        while not all((s := tracker.get(g)) is not None and s.is_terminal for g in gids):
            assert time.monotonic() < limit
            await asyncio.sleep(0.05)
    found = {g: tracker.get(g) for g in gids}
    return {g: s for g, s in found.items() if s is not None}


async def worker(
    states: dict[str, SagaState], url: str, parts: dict[str, list[int]], stop: asyncio.Event
) -> None:
    """Serve the state API of the worker at ``url`` (its partitions' sagas) until ``stop``."""
    mine = parts[url]
    own = {g: s for g, s in states.items() if partition_for(g.encode(), PARTITIONS) in mine}
    port = int(url.rsplit(":", 1)[1])
    view = StatesView(own, TrackerMetrics())
    async with serve_api(view, "127.0.0.1", port, TOKEN, workers=FixedWorkers(url, parts)):
        await stop.wait()


@contextlib.asynccontextmanager
async def serving(states: dict[str, SagaState]) -> AsyncIterator[Cluster]:
    """Workers a (partitions 0, 1) and b (2, 3) serving ``states``."""
    a, b = (f"http://127.0.0.1:{free_port()}" for _ in "ab")
    parts = {a: [0, 1], b: [2, 3]}
    a_stop, b_stop = asyncio.Event(), asyncio.Event()
    runs = [
        asyncio.create_task(worker(states, url, parts, stop))
        for url, stop in ((a, a_stop), (b, b_stop))
    ]
    async with aiohttp.ClientSession() as session:
        for url in (a, b):
            await _ready(session, url)
        try:
            yield Cluster(session, a, b, states, b_stop)
        finally:
            a_stop.set()
            b_stop.set()
            await asyncio.gather(*runs)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with serving(await followed_states()) as found:
        yield found


async def _ready(session: aiohttp.ClientSession, url: str) -> None:
    limit = time.monotonic() + 10
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url + "/healthz") as response:
                if response.status == 200:
                    return
        assert time.monotonic() < limit, f"{url} did not start"
        await asyncio.sleep(0.05)


def one_tracker(states: dict[str, SagaState]) -> StatesView:
    return StatesView(states, TrackerMetrics())


async def test_each_worker_answers_for_every_saga(cluster: Cluster) -> None:
    for gid, state in cluster.states.items():
        owner = cluster.a if partition_for(gid.encode(), PARTITIONS) < 2 else cluster.b
        for url in (cluster.a, cluster.b):
            status, body, answered_by = await cluster.get(url, f"/sagas/{gid}")
            assert status == 200
            assert body == state.model_dump(mode="json")
            assert answered_by == ("" if url == owner else owner)
    status, body, _ = await cluster.get(cluster.a, f"/sagas/{uuid.uuid4()}")
    assert status == 404


async def test_lists_and_counts_are_those_of_one_tracker(cluster: Cluster) -> None:
    whole = one_tracker(cluster.states)
    total = len(cluster.states)
    for offset, limit in ((0, 5), (3, 7), (total - 2, 5), (total + 1, 3), (0, 1000)):
        page = whole.list(limit=limit, offset=offset)
        for url in (cluster.a, cluster.b):
            status, body, _ = await cluster.get(url, f"/sagas?offset={offset}&limit={limit}")
            assert status == 200
            assert [i["gid"] for i in body["items"]] == [s.gid for s in page.items]
            assert (body["total"], body["next"]) == (page.total, page.next_offset)
            assert (body["workers"], body["unanswered"]) == (2, [])
    status, body, _ = await cluster.get(cluster.b, "/sagas?status=compensated&limit=1000")
    compensated = whole.list(status=SagaStatus.COMPENSATED, limit=1000)
    assert [i["gid"] for i in body["items"]] == [s.gid for s in compensated.items]
    assert compensated.total > 0
    status, counts, _ = await cluster.get(cluster.a, "/counts")
    assert {k: counts[k] for k in whole.counts()} == whole.counts()
    status, latencies, _ = await cluster.get(cluster.b, "/latencies")
    assert [r["count"] for r in latencies["steps"]] == [r["count"] for r in whole.step_latencies()]
    # One worker only, when asked so: its own partitions.
    status, own, _ = await cluster.get(cluster.a, "/counts", **{LOCAL_HEADER: "1"})
    mine = sum(partition_for(g.encode(), PARTITIONS) < 2 for g in cluster.states)
    assert (own["total"], "unanswered" in own) == (mine, False)


async def test_pages_deeper_than_one_workers_page_limit() -> None:
    """Pages past the first 1,000 sagas (each worker is then asked for more than a
    client may ask in one page) are still the ones a single tracker gives."""
    first = next(iter((await followed_states()).values()))
    states = {}
    for n in range(2400):
        gid = str(uuid.uuid4())
        states[gid] = first.model_copy(update={"gid": gid, "started_at": 1e9 + n % 700})
    whole = one_tracker(states)
    async with serving(states) as cluster:
        for offset, limit in ((1000, 1000), (1999, 1000), (2390, 50)):
            page = whole.list(limit=limit, offset=offset)
            status, body, _ = await cluster.get(cluster.a, f"/sagas?offset={offset}&limit={limit}")
            assert (status, body["unanswered"]) == (200, [])
            assert [i["gid"] for i in body["items"]] == [s.gid for s in page.items]
            assert (body["total"], body["next"]) == (page.total, page.next_offset)


async def test_a_page_too_deep_for_a_fan_out_is_refused(cluster: Cluster) -> None:
    status, body, _ = await cluster.get(cluster.a, f"/sagas?offset={MAX_WINDOW}&limit=1")
    assert status == 400
    assert "narrow it" in body["error"]


async def test_a_worker_that_does_not_answer_is_reported(cluster: Cluster) -> None:
    cluster.b_stop.set()
    limit = time.monotonic() + 10
    while True:
        status, counts, _ = await cluster.get(cluster.a, "/counts")
        if counts["unanswered"]:
            break
        assert time.monotonic() < limit, "worker b still answers"
        await asyncio.sleep(0.05)
    assert [u["worker"] for u in counts["unanswered"]] == [cluster.b]
    assert counts["workers"] == 1
    assert counts["total"] == sum(partition_for(g.encode(), PARTITIONS) < 2 for g in cluster.states)
    theirs = next(g for g in cluster.states if partition_for(g.encode(), PARTITIONS) >= 2)
    status, body, _ = await cluster.get(cluster.a, f"/sagas/{theirs}")
    assert status == 503
    assert cluster.b in body["error"]
    status, workers, _ = await cluster.get(cluster.a, "/workers")
    assert workers == {"me": cluster.a, "workers": {cluster.a: [0, 1], cluster.b: [2, 3]}}


async def test_the_cli_names_a_worker_that_does_not_answer(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """``choreo sagas list`` through worker a: every saga; once b is stopped, a's only and
    a warning naming b; ``saga show`` of b's saga then says the tracker cannot answer."""
    args = ["--tracker", cluster.a, "--token", TOKEN]
    listing = ["sagas", "list", "--limit", "500", *args]
    ours = sum(partition_for(g.encode(), PARTITIONS) < 2 for g in cluster.states)
    code, out, err = await asyncio.to_thread(choreo, capsys, *listing)
    assert (code, err) == (0, "")
    assert f"{len(cluster.states)} of {len(cluster.states)} saga(s)" in out
    cluster.b_stop.set()
    await asyncio.sleep(0.2)  # b's server closes
    code, out, err = await asyncio.to_thread(choreo, capsys, *listing)
    assert code == 0
    assert f"{ours} of {ours} saga(s)" in out
    assert f"tracker worker {cluster.b} did not answer" in err
    theirs = next(g for g in cluster.states if partition_for(g.encode(), PARTITIONS) >= 2)
    code, out, err = await asyncio.to_thread(choreo, capsys, "saga", "show", theirs, *args)
    assert code == 2
    assert "the tracker cannot answer now (503)" in err
    assert cluster.b in err


def test_latencies_merge_counts_and_keeps_the_largest_quantile() -> None:
    row = {"saga": "trip", "step": "car"}
    bodies = [
        {"quantiles": [0.5], "steps": [{**row, "count": 2, "p50": 0.1, "p99": None}]},
        {"quantiles": [0.5], "steps": [{**row, "count": 3, "p50": 0.3, "p99": 0.5}]},
    ]
    assert merge.latencies(bodies)["steps"] == [{**row, "count": 5, "p50": 0.3, "p99": 0.5}]


def test_a_workers_url_defaults_to_its_http_address() -> None:
    assert worker_url("127.0.0.1", 8088) == "http://127.0.0.1:8088"
    assert worker_url("0.0.0.0", 8088) == f"http://{socket.gethostname()}:8088"
    assert worker_url("::1", 8088) == "http://[::1]:8088"
    assert worker_url("127.0.0.1", 0) is None  # picked at start: faust's default
    assert check_worker_url("http://tracker-1:8088/") == "http://tracker-1:8088"
    for bad in ("tracker-1:8088", "ftp://tracker-1:8088", "http://tracker-1:8088/api"):
        with pytest.raises(UsageError, match="--worker-url"):
            check_worker_url(bad)
