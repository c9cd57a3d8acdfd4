"""``choreo demo``: the order saga's services and a tracker in this process, a batch of
orders, and a closing audit of every saga and every unit of stock and money."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses

from rich.console import Console

from choreo.errors import UsageError


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
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    # The demo package is imported only here: the library never depends on its example.
    from services_demo.embedded import run_embedded
    from services_demo.report import progress_bar, summary
    from services_demo.workload import demo_knobs

    if args.orders < 1:
        raise UsageError("--orders must be at least 1")
    overrides = {
        name: value
        for name in ("decline_above", "failure_rate", "stall_rate", "stall_seconds")
        if (value := getattr(args, name)) is not None
    }
    knobs = dataclasses.replace(demo_knobs(args.seed), **overrides)
    console = Console()
    console.print(
        f"[bold]choreo demo[/]: {args.orders} orders on {args.broker} / {args.store}; "
        f"card limit {knobs.decline_above}, random declines {knobs.failure_rate:.0%}, "
        f"unconfirmed shipments {knobs.stall_rate:.0%}"
    )
    with progress_bar(console, args.orders) as on_progress:
        run = asyncio.run(
            run_embedded(
                count=args.orders,
                seed=args.seed,
                knobs=knobs,
                broker=args.broker,
                store=args.store,
                timeout=args.timeout,
                on_progress=on_progress,
            )
        )
    console.print(summary(run.audit, run.elapsed, sagas=not args.no_table, snapshot=run.dashboard))
    return 0 if run.audit.ok else 1
