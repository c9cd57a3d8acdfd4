"""``choreo demo``: the order saga's services and a tracker in this process, a batch of
orders, and a closing audit of every saga and every unit of stock and money.

With ``--serve HOST:PORT`` the services and the tracker keep running after the audit and
the tracker's state API (ops routes included) is served until SIGINT or SIGTERM, so
``choreo dashboard``, ``choreo sagas list``, ``choreo saga why`` work against the demo.
Like ``choreo tracker`` it needs a token (``--token``, ``CHOREO_TRACKER_TOKEN``, or a
generated one it prints); ``--no-auth`` serves it open on a loopback address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING

from choreo.cli.http_options import add_token_arguments, announce_token, api_token, parse_http
from choreo.cli.loading import load_object
from choreo.cli.tracker import TOKEN
from choreo.errors import UsageError

if TYPE_CHECKING:
    from choreo.tracker.memory import MemoryTracker
    from choreo.transport.base import Transport

# The demo is loaded by name when the command runs: the library never imports its example.
DEMO = "services_demo.demo:run_demo"
KNOBS = ("decline_above", "failure_rate", "stall_rate", "stall_seconds")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the demo order saga in this process",
        description="Runs services_demo's four services and a saga tracker on the in-memory "
        "transport, places a batch of orders that complete, fail and time out, and checks "
        "that every saga ended and no stock or money was lost. Exits 1 if not.",
    )
    parser.add_argument("--orders", type=int, default=30, help="orders to place (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the orders and failures")
    parser.add_argument("--decline-above", type=int, help="card limit (default 500)")
    parser.add_argument("--failure-rate", type=float, help="random declines (default 0.05)")
    parser.add_argument("--stall-rate", type=float, help="unconfirmed shipments (default 0.15)")
    parser.add_argument("--stall-seconds", type=float,
                        help="confirm stalled shipments this late; 0 never (default)")  # fmt: skip
    parser.add_argument("--broker", default="memory://", help="e.g. kafka://127.0.0.1:9092")
    parser.add_argument("--store", default="memory://", help="e.g. redis://127.0.0.1:6379/0")
    parser.add_argument("--timeout", type=float, default=45.0, help="give up after (seconds)")
    parser.add_argument("--no-table", action="store_true", help="omit the table of sagas")
    parser.add_argument(
        "--serve",
        metavar="HOST:PORT",
        help="after the batch, keep running and serve the tracker's state API there "
        "(port 0: any free one) until Ctrl-C, for `choreo dashboard`, `choreo sagas list`...",
    )
    add_token_arguments(parser, TOKEN)
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    if args.orders < 1:
        raise UsageError("--orders must be at least 1")
    serve = None if args.serve is None else parse_http(args.serve, "--serve")
    token, generated = (
        (None, False) if serve is None else api_token(args, serve[0], TOKEN, "--serve")
    )
    run_demo = load_object(DEMO, types.FunctionType, "demo")

    async def serving(
        tracker: MemoryTracker, transport: Transport, groups: Mapping[str, str]
    ) -> None:
        assert serve is not None
        await serve_until_signalled(tracker, transport, groups, *serve, token, generated)

    return int(
        run_demo(
            orders=args.orders,
            seed=args.seed,
            knobs={name: value for name in KNOBS if (value := getattr(args, name)) is not None},
            broker=args.broker,
            store=args.store,
            timeout=args.timeout,
            table=not args.no_table,
            serve=None if serve is None else serving,
        )
    )


async def serve_until_signalled(
    tracker: MemoryTracker,
    transport: Transport,
    groups: Mapping[str, str],
    host: str,
    port: int,
    token: str | None,
    generated: bool = False,
) -> None:
    """The embedded tracker's state API with the ops routes, until SIGINT or SIGTERM;
    ``token`` None serves it open (``--no-auth``: loopback only)."""
    from choreo.tracker.api import serve_api
    from choreo.tracker.api_ops import OpsContext

    view = tracker.view()
    contracts = list(tracker.core.contracts.values())
    ops = OpsContext(view, transport, contracts, groups)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        try:
            bound = await stack.enter_async_context(
                serve_api(view, host, port, token, ops, open_access=token is None)
            )
        except OSError as exc:
            raise UsageError(f"cannot serve the state API on {host}:{port} ({exc})") from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
            stack.callback(loop.remove_signal_handler, sig)
        shown = f"[{host}]" if ":" in host else host
        print(
            f"choreo: demo tracker's state API on http://{shown}:{bound} (Ctrl-C to stop)",
            flush=True,
        )
        announce_token(token, generated, TOKEN)
        await stopping.wait()
    print("choreo: demo stopped", flush=True)
