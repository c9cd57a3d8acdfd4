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
import math
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
from choreo.saga.state import SagaStatus
from choreo.tracker.api_ops import OpsContext, add_ops_routes
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
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


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
        "# HELP choreo_tracker_read_gaps_total Records delivered past one never folded "
        "(the tracker sought back to it).",
        "# TYPE choreo_tracker_read_gaps_total counter",
        f"choreo_tracker_read_gaps_total {metrics.read_gaps}",
        "# HELP choreo_tracker_log_gaps_total Offsets without records in the log itself.",
        "# TYPE choreo_tracker_log_gaps_total counter",
        f"choreo_tracker_log_gaps_total {metrics.log_gaps}",
        "# HELP choreo_sagas_expired_total Settled sagas removed after their retention.",
        "# TYPE choreo_sagas_expired_total counter",
        f"choreo_sagas_expired_total {metrics.expired}",
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
        body = render_metrics(view).encode()
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TEXT})

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
