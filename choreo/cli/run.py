"""``choreo run module:app``: run one service until SIGTERM or SIGINT.

``--http HOST:PORT`` also serves the service's /healthz, /readyz and /metrics
(``choreo.service_api``); /metrics needs the bearer token (``--token`` or
``CHOREO_SERVICE_TOKEN``, else one is generated and printed) unless ``--no-auth``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from choreo.app import Service
from choreo.cli.http_options import (
    TokenSource,
    add_token_arguments,
    announce_token,
    api_token,
    parse_http,
)
from choreo.cli.loading import load_object
from choreo.redact import redact_url
from choreo.runtime import tune_gc
from choreo.telemetry import exporting
from choreo.transport.kafka_config import security_from_env

if TYPE_CHECKING:
    from choreo.metrics import ServiceMetrics

TOKEN = TokenSource(
    "CHOREO_SERVICE_TOKEN", "service's metrics endpoint", "read the service's metrics"
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("run", help="run a service (module:attribute)")
    parser.add_argument("app", help="the Service, e.g. services_demo.inventory:app")
    parser.add_argument("--broker", default=os.environ.get("CHOREO_BROKER"),
                        help="override the broker URL (env CHOREO_BROKER)")  # fmt: skip
    parser.add_argument("--store", default=os.environ.get("CHOREO_STORE"),
                        help="override the store URL (env CHOREO_STORE)")  # fmt: skip
    parser.add_argument("--http", default=os.environ.get("CHOREO_SERVICE_HTTP"),
                        help="serve /healthz, /readyz and /metrics on HOST:PORT "
                        "(env CHOREO_SERVICE_HTTP)")  # fmt: skip
    add_token_arguments(parser, TOKEN)
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    app = load_object(args.app, Service, "service")
    security = security_from_env(os.environ)
    if security:  # the deployment's settings win over the code's
        app.transport_options["security"] = {
            **app.transport_options.get("security", {}),
            **security,
        }
    given = args.broker or app.broker
    if isinstance(given, str) and given.startswith("memory://"):
        print(
            f"choreo: warning: {app.name} runs on memory://, a broker only this process sees: "
            "nothing outside it can publish to the service or read what it publishes. "
            "Pass --broker kafka://HOST:PORT (or CHOREO_BROKER), or run several services "
            "in one process with choreo.testing.Harness or `choreo demo`.",
            file=sys.stderr,
            flush=True,
        )
    http: tuple[str, int] | None = None
    token: str | None = None
    if args.http:
        http = parse_http(args.http)
        token, generated = api_token(args, http[0], TOKEN)
        announce_token(token, generated, TOKEN)
    with exporting(app.name):  # OTLP traces when OTEL_* asks (choreo.telemetry)
        asyncio.run(serve(app, args.broker, args.store, http, token))
    return 0


async def serve(
    app: Service,
    broker: str | None,
    store: str | None,
    http: tuple[str, int] | None = None,
    token: str | None = None,
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log = logging.getLogger("choreo.run")
    metrics: ServiceMetrics | None = None
    if http is not None:
        from choreo.metrics import ServiceMetrics

        metrics = ServiceMetrics(app.name)
        app.middleware.append(metrics)  # before running(): the worker takes the list then
    async with app.running(broker=broker, store=store), _endpoints(app, metrics, http, token):
        tune_gc()  # this process is the service's: see choreo.runtime
        given = broker or app.broker
        shown = redact_url(given if isinstance(given, str) else given.url)
        log.info("%s is running (broker %s); Ctrl-C stops it", app.name, shown)
        print(f"choreo: {app.name} running; consuming {', '.join(app.subscribed_topics())}",
              flush=True)  # fmt: skip
        await app.until_stopped(stopping)
    print(f"choreo: {app.name} stopped cleanly", flush=True)


@contextlib.asynccontextmanager
async def _endpoints(
    app: Service, metrics: ServiceMetrics | None, http: tuple[str, int] | None, token: str | None
) -> AsyncIterator[None]:
    if http is None or metrics is None:
        yield
        return
    from choreo.service_api import serve_service_api

    host, port = http
    async with serve_service_api(
        app, metrics, host, port, token, open_access=token is None
    ) as bound:
        print(f"choreo: {app.name} endpoints on http://{host}:{bound} "
              "(/healthz /readyz /metrics)", flush=True)  # fmt: skip
        yield
