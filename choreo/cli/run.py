"""``choreo run module:app``: run one service until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from choreo.app import Service
from choreo.cli.loading import load_object
from choreo.redact import redact_url
from choreo.runtime import tune_gc
from choreo.transport.kafka_config import security_from_env


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("run", help="run a service (module:attribute)")
    parser.add_argument("app", help="the Service, e.g. services_demo.inventory:app")
    parser.add_argument("--broker", default=os.environ.get("CHOREO_BROKER"),
                        help="override the broker URL (env CHOREO_BROKER)")  # fmt: skip
    parser.add_argument("--store", default=os.environ.get("CHOREO_STORE"),
                        help="override the store URL (env CHOREO_STORE)")  # fmt: skip
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    app = load_object(args.app, Service, "service")
    security = security_from_env(os.environ)
    if security:  # the deployment's settings win over the code's
        app.transport_options["security"] = {
            **app.transport_options.get("security", {}),
            **security,
        }
    asyncio.run(serve(app, args.broker, args.store))
    return 0


async def serve(app: Service, broker: str | None, store: str | None) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log = logging.getLogger("choreo.run")
    async with app.running(broker=broker, store=store):
        tune_gc()  # this process is the service's: see choreo.runtime
        given = broker or app.broker
        shown = redact_url(given if isinstance(given, str) else given.url)
        log.info("%s is running (broker %s); Ctrl-C stops it", app.name, shown)
        print(f"choreo: {app.name} running; consuming {', '.join(app.subscribed_topics())}",
              flush=True)  # fmt: skip
        await app.until_stopped(stopping)
    print(f"choreo: {app.name} stopped cleanly", flush=True)
