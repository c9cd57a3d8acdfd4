"""``choreo alerts --webhook URL``: deliver the tracker's SagaStuck alerts to a webhook
until SIGTERM or SIGINT (``choreo.alerts``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from choreo.alerts import DEFAULT_GROUP, StuckWebhook, shown
from choreo.cli.loading import open_broker
from choreo.errors import UsageError
from choreo.redact import redact_url

TOKEN_ENV = "CHOREO_WEBHOOK_TOKEN"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "alerts", help="POST the tracker's SagaStuck alerts to a webhook (until stopped)"
    )
    parser.add_argument("--webhook", default=os.environ.get("CHOREO_WEBHOOK_URL"),
                        help="http(s) URL the alerts are POSTed to as JSON "
                        "(env CHOREO_WEBHOOK_URL)")  # fmt: skip
    parser.add_argument("--broker", default=os.environ.get("CHOREO_BROKER"),
                        help="the broker URL (env CHOREO_BROKER)")  # fmt: skip
    parser.add_argument("--group", default=DEFAULT_GROUP,
                        help=f"consumer group (default {DEFAULT_GROUP}); alerts are "
                        "delivered once per group")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds one POST may take (default 10)")  # fmt: skip
    parser.epilog = (
        f"A bearer token for the webhook is read from {TOKEN_ENV} (never from the command "
        "line, where other users of the machine could read it)."
    )
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    if not args.webhook:
        raise UsageError("no webhook: pass --webhook URL (or set CHOREO_WEBHOOK_URL)")
    if not args.broker:
        raise UsageError("no broker: pass --broker kafka://HOST:PORT (or set CHOREO_BROKER)")
    transport = open_broker(args.broker)
    webhook = StuckWebhook(
        args.webhook,
        transport=transport,
        group=args.group,
        token=os.environ.get(TOKEN_ENV) or None,
        timeout=args.timeout,
    )
    print(f"choreo: alerts from {redact_url(args.broker)} to {shown(args.webhook)}", flush=True)
    asyncio.run(_run(webhook))
    print(f"choreo: alerts stopped ({webhook.delivered} delivered, "
          f"{webhook.dead_lettered} refused and dead-lettered)", flush=True)  # fmt: skip
    return 0


async def _run(webhook: StuckWebhook) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with webhook.transport:
        await webhook.run(stopping)
