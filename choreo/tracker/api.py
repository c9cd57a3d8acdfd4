"""The tracker's state API: JSON over HTTP, plus /metrics for Prometheus.

    GET /sagas?status=&saga=&since=&limit=&offset=   a page of saga summaries
    GET /sagas/{gid}                                  one saga, timeline included
    GET /counts  /latencies  /metrics  /healthz

It binds 127.0.0.1 unless told otherwise: saga payloads are business data. With a token
every path but /healthz needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import contextlib
import hmac
import math
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from choreo.saga.state import SagaStatus
from choreo.tracker.api_ops import OpsContext, add_ops_routes
from choreo.tracker.http import error, json_response, number, summary
from choreo.tracker.view import QUANTILES, StateView

MAX_LIMIT = 1000
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _value(number: float) -> str:
    return "NaN" if math.isnan(number) else repr(float(number))


def render_metrics(view: StateView) -> str:
    """Prometheus text exposition format 0.0.4, written by hand (no client library)."""
    by_status = view.counts()["by_status"]
    metrics = view.metrics()
    delay = metrics.deadline_to_compensation
    name = "choreo_deadline_to_compensation_seconds"
    lines = [
        "# HELP choreo_sagas Sagas the tracker knows, by state.",
        "# TYPE choreo_sagas gauge",
        *(f'choreo_sagas{{state="{s.value}"}} {by_status.get(s.value, 0)}' for s in SagaStatus),
        "# HELP choreo_compensations_issued_total Compensation events the tracker published.",
        "# TYPE choreo_compensations_issued_total counter",
        f"choreo_compensations_issued_total {metrics.compensations_issued}",
        "# HELP choreo_stalls_detected_total Sagas sent to compensation by a step's deadline.",
        "# TYPE choreo_stalls_detected_total counter",
        f"choreo_stalls_detected_total {metrics.stalls_detected}",
        f"# HELP {name} From a step's deadline to the tracker publishing its compensation.",
        f"# TYPE {name} summary",
        *(f'{name}{{quantile="{q:g}"}} {_value(v)}' for q, v in delay.quantiles().items()),
        f"{name}_sum {_value(delay.total)}",
        f"{name}_count {delay.count}",
        "# HELP choreo_deadline_to_compensation_max_seconds The longest such delay seen.",
        "# TYPE choreo_deadline_to_compensation_max_seconds gauge",
        f"choreo_deadline_to_compensation_max_seconds {_value(delay.max)}",
    ]
    return "\n".join(lines) + "\n"


def build_app(view: StateView, token: str | None = None) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and request.path != "/healthz":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error(401, "missing or wrong bearer token")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error(exc.status, exc.reason)

    async def sagas(request: web.Request) -> web.Response:
        raw_status = request.query.get("status") or None
        if raw_status is not None and raw_status.upper() not in SagaStatus.__members__:
            return error(400, f"status must be one of {', '.join(SagaStatus)}")
        limit = number(request, "limit", 50, 1)
        page = view.list(
            status=SagaStatus(raw_status.upper()) if raw_status else None,
            saga=request.query.get("saga") or None,
            since=number(request, "since", None, 0),
            limit=min(int(limit or 50), MAX_LIMIT),
            offset=int(number(request, "offset", 0, 0) or 0),
        )
        items = [summary(s) for s in page.items]
        return json_response({"items": items, "total": page.total, "next": page.next_offset})

    async def saga(request: web.Request) -> web.Response:
        gid = request.match_info["gid"]
        state = view.get(gid)
        if state is None:
            return error(404, f"no saga with gid {gid!r}")
        return json_response(state.model_dump(mode="json"))

    async def counts(request: web.Request) -> web.Response:
        return json_response(view.counts())

    async def latencies(request: web.Request) -> web.Response:
        return json_response({"quantiles": list(QUANTILES), "steps": view.step_latencies()})

    async def metrics(request: web.Request) -> web.Response:
        body = render_metrics(view).encode()
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TEXT})

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"ok": True})

    app = web.Application(middlewares=[guard])
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
) -> AsyncIterator[int]:
    """Serve until the block exits; yields the bound port (``port=0`` picks a free one).
    With ``ops`` the operator routes (why, admin commands, dead letters) are served too."""
    app = build_app(view, token)
    if ops is not None:
        add_ops_routes(app, ops)  # before setup: aiohttp freezes the router there
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
