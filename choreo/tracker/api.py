"""The tracker's state API: JSON over HTTP, plus /metrics for Prometheus.

    GET /sagas?status=&saga=&since=&limit=&offset=   a page of saga summaries
    GET /sagas/{gid}                                  one saga, timeline included
    GET /counts  /latencies  /metrics  /healthz

Safe by default: it binds 127.0.0.1 unless told otherwise (saga payloads are business
data), and every path but /healthz needs ``Authorization: Bearer <token>``. Serving
without a token takes ``open_access=True``, which is refused beyond the loopback
interface. The server bounds what a client may send: request line and each header
``MAX_LINE`` bytes, ``MAX_HEADERS`` headers, a body of ``MAX_BODY_BYTES``; a connection
that does not finish its request's headers within ``HEADER_TIMEOUT`` seconds (or idles
that long between requests) is closed, and a body must arrive within ``BODY_TIMEOUT``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from choreo.http_guard import (
    HEADER_TIMEOUT,
    check_token,
    is_loopback,
    json_response,
    new_token,
    refuse_open_beyond_loopback,
    serve_app,
    token_guard,
)
from choreo.metrics import CONTENT_TYPE
from choreo.saga.state import SagaStatus
from choreo.tracker.api_ops import OpsContext, add_ops_routes
from choreo.tracker.exposition import render_metrics
from choreo.tracker.http import (
    BODY_TIMEOUT,
    MAX_OFFSET,
    error,
    integer,
    known_gid,
    number,
    page_limit,
    summary,
    text,
)
from choreo.tracker.routing import Workers, add_routing
from choreo.tracker.view import QUANTILES, StateView

__all__ = [
    "BODY_TIMEOUT",
    "HEADER_TIMEOUT",
    "MAX_BODY_BYTES",
    "build_app",
    "check_token",
    "is_loopback",
    "new_token",
    "serve_api",
]

MAX_BODY_BYTES = 64 * 1024  # an admin command or a replay of ids needs a few kB


def build_app(
    view: StateView, token: str | None = None, *, open_access: bool = False
) -> web.Application:
    """The API's routes behind its token guard. Without ``token`` it needs
    ``open_access=True`` (ConfigurationError otherwise): nothing is served open by
    accident."""
    guard = token_guard("state API", token, open_access=open_access, public=("/healthz",))

    async def sagas(request: web.Request) -> web.Response:
        raw_status = text(request, "status", 32)
        if raw_status is not None and raw_status.upper() not in SagaStatus.__members__:
            return error(400, f"status must be one of {', '.join(SagaStatus)}")
        page = view.list(
            status=SagaStatus(raw_status.upper()) if raw_status else None,
            saga=text(request, "saga"),
            since=number(request, "since", None, 0),
            limit=page_limit(request),
            offset=integer(request, "offset", 0, 0, MAX_OFFSET),
        )
        items = [summary(s) for s in page.items]
        return json_response({"items": items, "total": page.total, "next": page.next_offset})

    async def saga(request: web.Request) -> web.Response:
        gid = known_gid(request)
        state = view.get(gid)
        if state is None:
            return error(404, f"no saga with gid {gid!r}")
        return json_response(state.model_dump(mode="json"))

    async def counts(request: web.Request) -> web.Response:
        return json_response(view.counts())

    async def latencies(request: web.Request) -> web.Response:
        return json_response({"quantiles": list(QUANTILES), "steps": view.step_latencies()})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render_metrics(view), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"ok": True})

    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/sagas", sagas)
    app.router.add_get("/sagas/{gid}", saga)
    app.router.add_get("/counts", counts)
    app.router.add_get("/latencies", latencies)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


@contextlib.asynccontextmanager
async def serve_api(
    view: StateView,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    ops: OpsContext | None = None,
    *,
    open_access: bool = False,
    header_timeout: float = HEADER_TIMEOUT,
    workers: Workers | None = None,
) -> AsyncIterator[int]:
    """Serve until the block exits; yields the bound port (``port=0`` picks a free one).
    With ``ops`` the operator routes (why, admin commands, dead letters) are served too;
    with ``workers`` (one of several tracker workers) every saga route answers for the
    sagas of every worker (``choreo.tracker.routing``). ``open_access`` (no token) is
    refused on an address beyond the loopback interface."""
    refuse_open_beyond_loopback("state API", host, token, open_access)
    app = build_app(view, token, open_access=open_access)
    if ops is not None:
        add_ops_routes(app, ops)  # before setup: aiohttp freezes the router there
    if workers is not None:
        add_routing(app, workers)
    async with serve_app(app, host, port, header_timeout) as bound:
        yield bound
