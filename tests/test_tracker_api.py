"""The state API over HTTP, against a memory tracker that has followed a few sagas."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from choreo.errors import UsageError
from choreo.testing import Harness
from choreo.tracker.api import serve_api
from choreo.tracker.memory import MemoryTracker
from choreo.tracker.view import Summary
from tests.scenarios.trip import Plan, TripBooked, build_travel

TOKEN = "s3cret"
PLANS = [Plan()] * 3 + [Plan(fail="hotel")] * 2 + [Plan(lost="car")]


@dataclass
class Api:
    base: str
    session: aiohttp.ClientSession
    tracker: MemoryTracker
    gids: list[str]

    async def get(self, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.get(self.base + path, headers=headers) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    travel = build_travel(prefix, deadline=0.3)
    tracker = MemoryTracker([travel.contract], group=f"{prefix}.tracker")
    async with Harness(*travel.services, tracker) as h:
        gids = [await h.publish(TripBooked(trip_id=uuid.uuid4().hex, plan=p)) for p in PLANS]
        limit = time.monotonic() + 20
        while not all((s := tracker.get(g)) is not None and s.is_terminal for g in gids):
            assert time.monotonic() < limit
            await asyncio.sleep(0.05)
        await h.drain()
        async with (
            serve_api(tracker.view(), "127.0.0.1", 0, TOKEN) as port,
            aiohttp.ClientSession() as session,
        ):
            yield Api(f"http://127.0.0.1:{port}", session, tracker, gids)


async def test_paging_walks_every_saga_once(api: Api) -> None:
    seen: list[str] = []
    path: str | None = "/sagas?limit=4"
    while path is not None:
        status, page = await api.get(path)
        assert status == 200
        assert page["total"] == len(PLANS)
        assert len(page["items"]) <= 4
        seen += [item["gid"] for item in page["items"]]
        path = None if page["next"] is None else f"/sagas?limit=4&offset={page['next']}"
    assert sorted(seen) == sorted(api.gids)
    _, first = await api.get("/sagas?limit=1")
    assert set(first["items"][0]) >= {"gid", "saga", "status", "steps", "started_at"}
    assert "timeline" not in first["items"][0]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=COMPLETED", 3),
        ("status=compensated", 3),
        ("status=STUCK", 0),
        ("saga=trip", len(PLANS)),
        ("saga=nope", 0),
        ("since=0", len(PLANS)),
        (f"since={time.time() + 3600}", 0),
    ],
)
async def test_filters(api: Api, query: str, expected: int) -> None:
    status, page = await api.get(f"/sagas?{query}")
    assert status == 200
    assert page["total"] == len(page["items"]) == expected


@pytest.mark.parametrize("query", ["status=LOST", "limit=0", "limit=x", "offset=-1", "since=nan"])
async def test_bad_queries_are_400_json(api: Api, query: str) -> None:
    status, body = await api.get(f"/sagas?{query}")
    assert status == 400
    assert set(body) == {"error"}


async def test_one_saga_with_its_timeline_or_404(api: Api) -> None:
    gid = api.gids[-1]
    status, saga = await api.get(f"/sagas/{gid}")
    assert status == 200
    assert saga["gid"] == gid
    assert saga["status"] == "COMPENSATED"
    assert saga["steps"]["car"]["outcome_note"] == "timed out"
    assert any("timed out" in entry["note"] for entry in saga["timeline"])
    status, body = await api.get("/sagas/no-such-gid")
    assert (status, body) == (404, {"error": "no saga with gid 'no-such-gid'"})


async def test_token_is_required_except_for_healthz(api: Api) -> None:
    for token in (None, "wrong"):
        status, body = await api.get("/sagas", token=token)
        assert status == 401
        assert "error" in body
    assert (await api.get("/healthz", token=None)) == (200, {"ok": True})


async def test_counts_and_latencies(api: Api) -> None:
    _, counts = await api.get("/counts")
    assert counts["total"] == len(PLANS)
    assert counts["by_status"]["COMPLETED"] == 3
    assert counts["by_saga"] == {"trip": {"COMPLETED": 3, "COMPENSATED": 3}}
    _, latencies = await api.get("/latencies")
    rows = {row["step"]: row for row in latencies["steps"]}
    assert set(rows) == {"flight", "hotel", "car"}
    assert rows["car"]["count"] == 3
    assert 0 <= rows["flight"]["p50"] <= rows["flight"]["p90"] <= rows["flight"]["p99"] < 5


SAMPLE = re.compile(
    r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-z_]+=\"[^\"]*\"(,[a-z_]+=\"[^\"]*\")*\})? (\S+)$"
)


async def test_metrics_are_prometheus_text(api: Api) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with api.session.get(api.base + "/metrics", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) choreo_\w+ .+$", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        samples[match[1] + (match[2] or "")] = float(match[4])
    assert samples['choreo_sagas{state="COMPLETED"}'] == 3
    assert samples['choreo_sagas{state="COMPENSATED"}'] == 3
    assert samples['choreo_sagas{state="RUNNING"}'] == 0
    # Two failed hotels undo their flight; the lost car undoes car, hotel and flight.
    assert samples["choreo_compensations_issued_total"] == 5
    assert samples["choreo_stalls_detected_total"] == 1
    assert samples["choreo_deadline_to_compensation_seconds_count"] == 1
    assert 0 <= samples['choreo_deadline_to_compensation_seconds{quantile="0.99"}'] < 1


def test_summary_keeps_a_bounded_sample() -> None:
    summary = Summary(size=10)
    for value in range(1000):
        summary.observe(float(value))
    assert (summary.count, summary.total, summary.max) == (1000, 499500.0, 999.0)
    assert len(summary.sample) == 10
    assert 0 <= summary.quantiles()[0.5] <= 999


def test_cli_http_address_and_engine_checks() -> None:
    from choreo.cli.main import main
    from choreo.cli.tracker import parse_http

    assert parse_http("127.0.0.1:8088") == ("127.0.0.1", 8088)
    assert parse_http("[::1]:0") == ("::1", 0)
    for bad in ("8088", ":8088", "host:", "host:99999"):
        with pytest.raises(UsageError):
            parse_http(bad)
    contract = "tests.scenarios.trip:TOPIC"  # not a contract: refused before anything runs
    assert main(["tracker", contract]) == 2
    assert main(["tracker", "services_demo.contract:order_saga", "--engine", "faust"]) == 2
