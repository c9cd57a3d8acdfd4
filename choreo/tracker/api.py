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
import hmac
import ipaddress
import math
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from choreo.errors import ConfigurationError
from choreo.saga.state import SagaStatus
from choreo.tracker.api_ops import OpsContext, add_ops_routes
from choreo.tracker.http import (
    BODY_TIMEOUT,
    MAX_OFFSET,
    error,
    integer,
    json_response,
    known_gid,
    number,
    summary,
    text,
)
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

MAX_LIMIT = 1000
MAX_BODY_BYTES = 64 * 1024  # an admin command or a replay of ids needs a few kB
MAX_LINE = 4096  # the request line, and any one header
MAX_HEADERS = 64
HEADER_TIMEOUT = 15.0
_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")  # visible ASCII: it travels in a header
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


def new_token() -> str:
    """A random bearer token (32 URL-safe characters, 192 bits)."""
    return secrets.token_urlsafe(24)


def check_token(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise ConfigurationError(
            "the state API's token must be 1 to 512 visible ASCII characters (no spaces)"
        )
    return token


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_app(
    view: StateView, token: str | None = None, *, open_access: bool = False
) -> web.Application:
    """The API's routes behind its token guard. Without ``token`` it needs
    ``open_access=True`` (ConfigurationError otherwise): nothing is served open by
    accident."""
    if token is not None:
        expected: bytes | None = f"Bearer {check_token(token)}".encode()
    elif open_access:
        expected = None
    else:
        raise ConfigurationError(
            "the state API needs a bearer token; pass open_access=True to serve it without"
        )

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None and request.path != "/healthz":
            try:
                given = request.headers.get("Authorization", "").encode()
            except UnicodeError:
                return error(400, "the Authorization header is not UTF-8")
            if not hmac.compare_digest(given, expected):
                return error(401, "missing or wrong bearer token")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error(exc.status, exc.reason)

    async def sagas(request: web.Request) -> web.Response:
        raw_status = text(request, "status", 32)
        if raw_status is not None and raw_status.upper() not in SagaStatus.__members__:
            return error(400, f"status must be one of {', '.join(SagaStatus)}")
        page = view.list(
            status=SagaStatus(raw_status.upper()) if raw_status else None,
            saga=text(request, "saga"),
            since=number(request, "since", None, 0),
            limit=integer(request, "limit", 50, 1, MAX_LIMIT),
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
) -> AsyncIterator[int]:
    """Serve until the block exits; yields the bound port (``port=0`` picks a free one).
    With ``ops`` the operator routes (why, admin commands, dead letters) are served too.
    ``open_access`` (no token) is refused on an address beyond the loopback interface."""
    if open_access and token is None and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the state API without a token on {host}: only a loopback "
            "address (127.0.0.1, ::1, localhost) may be served open"
        )
    app = build_app(view, token, open_access=open_access)
    if ops is not None:
        add_ops_routes(app, ops)  # before setup: aiohttp freezes the router there
    runner = web.AppRunner(
        app,
        access_log=None,
        # aiohttp arms this timer when a connection opens, and closes a connection whose
        # request headers are not complete when it fires: the header read timeout.
        keepalive_timeout=header_timeout,
        max_line_size=MAX_LINE,
        max_field_size=MAX_LINE,
        max_headers=MAX_HEADERS,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
