"""A service's own HTTP endpoints (``choreo run --http HOST:PORT``):

- ``GET /healthz``: liveness, 200 while the worker runs, 503 once it has ended (the
  process is about to exit non-zero; an orchestrator restarts it).
- ``GET /readyz``: readiness, 200 when the worker holds partitions and the store and the
  broker answer, else 503 naming what is not ready.
- ``GET /metrics``: prometheus_client's exposition of ``choreo.metrics.ServiceMetrics``,
  the consumer lag read from the broker on each scrape.

The probes carry no data and are open (orchestrators' probes send no token); /metrics
needs the bearer token unless served open, which only a loopback address may be
(``choreo.http_guard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from choreo.errors import TransportError
from choreo.http_guard import (
    json_response,
    refuse_open_beyond_loopback,
    serve_app,
    token_guard,
)
from choreo.metrics import CONTENT_TYPE, ServiceMetrics

if TYPE_CHECKING:
    from choreo.app import Service

log = logging.getLogger("choreo.service_api")

PROBES = ("/healthz", "/readyz")
LAG_TIMEOUT = 5.0  # a scrape still answers (without fresh lag) when the broker does not


def build_service_api(
    service: Service, metrics: ServiceMetrics, token: str | None, *, open_access: bool = False
) -> web.Application:
    guard = token_guard("service's metrics", token, open_access=open_access, public=PROBES)

    async def healthz(request: web.Request) -> web.Response:
        alive = service.alive()
        return json_response({"ok": alive, "service": service.name}, 200 if alive else 503)

    async def readyz(request: web.Request) -> web.Response:
        problems = await service.readiness()
        return json_response(
            {"ready": not problems, "service": service.name, "problems": problems},
            503 if problems else 200,
        )

    async def scrape(request: web.Request) -> web.Response:
        metrics.refresh_breakers(service.breakers())
        if service.alive():
            try:
                async with asyncio.timeout(LAG_TIMEOUT):
                    await metrics.refresh_lag(
                        service.transport, service.group, service.subscribed_topics()
                    )
            except (TimeoutError, TransportError) as exc:
                log.warning("%s: consumer lag not refreshed: %s", service.name, exc)
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application(middlewares=[guard], client_max_size=1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", scrape)
    return app


@contextlib.asynccontextmanager
async def serve_service_api(
    service: Service,
    metrics: ServiceMetrics,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    *,
    open_access: bool = False,
) -> AsyncIterator[int]:
    """Serve the endpoints until the block exits; yields the bound port."""
    refuse_open_beyond_loopback("service's metrics", host, token, open_access)
    app = build_service_api(service, metrics, token, open_access=open_access)
    async with serve_app(app, host, port) as bound:
        yield bound
