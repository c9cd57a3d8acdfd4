"""Hypothesis over the state API's parameters: whatever a client puts in a query string, a
path segment or a header, every read route answers 200, 400, 401, 404 or 413 (JSON where
the app answers), never a 500 (issue: hostile input, item 7). Read routes only: they
change nothing, so one seeded tracker serves every example. ``CHOREO_FUZZ_EXAMPLES`` sets
the examples (``scripts/fuzz.sh`` runs many)."""

from __future__ import annotations

import asyncio
import os
import urllib.parse
from typing import Any

from aiohttp import test_utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from choreo.tracker.api import build_app
from choreo.tracker.api_ops import OpsContext, add_ops_routes
from tests.procs.tracker_api import seeded

EXAMPLES = int(os.environ.get("CHOREO_FUZZ_EXAMPLES", "60"))
TOKEN = "s3cret"
ALLOWED = {200, 400, 401, 404, 413}

ROUTES = ["/sagas", "/counts", "/latencies", "/metrics", "/healthz", "/stalled", "/dlq"]
PARAMS = ["status", "state", "saga", "since", "limit", "offset", "gid", "x"]
text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789-+.eE", max_size=30),
    st.sampled_from(["", "-1", "0", "1e308", "nan", "inf", "9" * 5000, "COMPLETED", "stuck"]),
)
query = st.dictionaries(st.sampled_from(PARAMS), text, max_size=4)
segment = st.one_of(st.text(min_size=1, max_size=60), st.sampled_from(["x" * 500, "%00", ".."]))
route = st.one_of(
    st.builds(lambda r, q: (r, q), st.sampled_from(ROUTES), query),
    st.builds(lambda g, q: (f"/sagas/{urllib.parse.quote(g, safe='')}", q), segment, query),
    st.builds(lambda g, q: (f"/sagas/{urllib.parse.quote(g, safe='')}/why", q), segment, query),
)
VALID = st.just(f"Bearer {TOKEN}")  # most examples get past the guard, to reach the routes
authorization = st.one_of(
    VALID, VALID, VALID, VALID, st.text(max_size=60), st.just("Bearer " + "x" * 5000)
)


def test_read_routes_never_answer_500() -> None:
    asyncio.run(_run())


async def _run() -> None:
    async with seeded() as env:
        app = build_app(env.tracker.view(), token=TOKEN)
        add_ops_routes(
            app, OpsContext(env.tracker.view(), env.h.transport, [env.travel.contract], env.groups)
        )
        async with test_utils.TestClient(test_utils.TestServer(app)) as client:
            loop = asyncio.get_running_loop()
            seen: set[int] = set()

            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(route=route, auth=authorization)
            def example(route: tuple[str, dict[str, str]], auth: str) -> None:
                path, params = route
                future = asyncio.run_coroutine_threadsafe(_get(client, path, params, auth), loop)
                status, body = future.result(60)
                seen.add(status)
                assert status in ALLOWED, (path, params, status, body)
                if status == 200 and path != "/metrics":
                    assert isinstance(body, dict), (path, status, body)
                # (a 400 may come from aiohttp's HTTP parser itself, as text: a request
                # line over its limit never reaches the app)

            await loop.run_in_executor(None, example)
            assert 200 in seen  # the examples reach real answers, not only refusals
            assert 400 in seen


async def _get(
    client: test_utils.TestClient[Any, Any], path: str, params: dict[str, str], auth: str
) -> tuple[int, Any]:
    try:
        headers = {"Authorization": auth}
        response = await client.get(path, params=params, headers=headers)
    except ValueError:  # aiohttp refuses to send the header (a newline in it): not a reply
        return 401, {"skipped": "unsendable header"}
    if response.content_type == "application/json":
        return response.status, await response.json()
    return response.status, await response.text()
