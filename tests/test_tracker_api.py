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
from prometheus_client.parser import text_string_to_metric_families

from choreo.errors import ConfigurationError, UsageError
from choreo.testing import Harness
from choreo.tracker.api import MAX_BODY_BYTES, build_app, is_loopback, serve_api
from choreo.tracker.memory import MemoryTracker
from choreo.tracker.view import StateView
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
    assert samples['choreo_deadline_to_compensation_seconds_bucket{le="+Inf"}'] == 1
    assert samples["choreo_deadline_to_compensation_max_seconds"] >= 0
    assert samples["choreo_tracker_folds_total"] >= len(PLANS)
    # Every plan's flight answered (three completed, three compensated after it).
    flights = samples['choreo_step_seconds_count{saga="trip",step="flight"}']
    assert flights == len(PLANS)
    # prometheus_client's own parser reads it all, histograms with their buckets.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["choreo_step_seconds"].type == "histogram"
    assert families["choreo_sagas"].type == "gauge"
    assert families["choreo_compensations_issued"].type == "counter"
    assert not [name for name in families if "gid" in name]


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


@pytest.mark.parametrize(
    "path",
    [
        "/sagas?limit=" + "9" * 3000,
        "/sagas?offset=" + "9" * 3000,
        "/sagas?since=" + "1" * 3000,
        "/sagas?limit=%C2%B2",  # a superscript two: a digit to str.isdigit, not to int()
        "/sagas?saga=" + "s" * 300,
        "/sagas?status=" + "x" * 300,
        "/sagas/" + "g" * 300,
    ],
)
async def test_huge_and_odd_parameters_are_400_not_500(api: Api, path: str) -> None:
    status, body = await api.get(path)
    assert status == 400, body
    assert set(body) == {"error"}
    assert len(body["error"]) < 200  # the input is not echoed back


async def test_a_large_limit_is_capped(api: Api) -> None:
    status, page = await api.get("/sagas?limit=100000&offset=999999999")
    assert (status, page["items"], page["total"]) == (200, [], len(PLANS))
    status, _ = await api.get("/sagas?limit=" + "9" * 5000)  # past the request line's limit
    assert status == 400


async def raw_request(port: int, request: bytes, wait: float = 5.0) -> bytes:
    """Send ``request`` as is on a new connection; everything the server answers until
    it closes the connection (or ``wait`` seconds pass)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(wait):
            return await reader.read()
    finally:
        writer.close()


async def test_non_utf8_authorization_header_is_400(api: Api) -> None:
    port = int(api.base.rsplit(":", 1)[1])
    request = (
        b"GET /sagas HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Connection: close\r\n\r\n"
    )
    answer = await raw_request(port, request)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"not UTF-8" in answer


@pytest.fixture
def idle_view() -> StateView:
    travel = build_travel(f"t{uuid.uuid4().hex[:8]}")
    return MemoryTracker([travel.contract]).view()


async def test_the_api_needs_a_token_unless_opened_on_loopback(idle_view: StateView) -> None:
    with pytest.raises(ConfigurationError, match="needs a bearer token"):
        build_app(idle_view)
    with pytest.raises(ConfigurationError, match="only a loopback address"):
        async with serve_api(idle_view, "0.0.0.0", 0, None, open_access=True):
            pass
    with pytest.raises(ConfigurationError, match="visible ASCII"):
        build_app(idle_view, "two words")
    assert all(map(is_loopback, ["127.0.0.2", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.1", "example.com"]))
    async with (
        serve_api(idle_view, "127.0.0.1", 0, None, open_access=True) as port,
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/counts") as response,
    ):
        assert response.status == 200


async def test_slow_and_oversized_requests_are_cut_off(idle_view: StateView) -> None:
    async with serve_api(idle_view, "127.0.0.1", 0, TOKEN, header_timeout=0.5) as port:
        began = time.monotonic()
        answer = await raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", wait=10)
        assert answer == b""  # the headers never ended: closed without an answer
        assert time.monotonic() - began < 5
        huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
        assert b" 400 " in (await raw_request(port, huge)).split(b"\r\n")[0]
        body = b"{" + b" " * (MAX_BODY_BYTES + 10) + b"}"
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/sagas", data=body, headers=headers) as resp,
        ):
            assert resp.status in (405, 413)  # no POST route here; the size is checked first
