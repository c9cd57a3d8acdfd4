"""What ``choreo demo`` runs: the embedded demo with a progress bar and a closing summary.

The ``choreo`` command parses the options and loads ``run_demo`` by name, so the library
never imports its example; ``serve``, when given, is how the command keeps the tracker's
state API up after the batch (``choreo demo --serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape

from choreo import Transport
from choreo.local import redact_url
from choreo.testing import MemoryTracker
from services_demo.embedded import DemoRun, Live, run_embedded
from services_demo.report import progress_bar, summary
from services_demo.workload import demo_knobs

Serve = Callable[[MemoryTracker, Transport, Mapping[str, str]], Awaitable[None]]


def run_demo(
    *,
    orders: int,
    seed: int,
    knobs: Mapping[str, Any],
    broker: str,
    store: str,
    timeout: float,
    table: bool,
    serve: Serve | None = None,
) -> int:
    """Place ``orders`` orders and print the summary; 0 if every saga ended and the books
    balance, else 1. ``knobs`` override the seed's demo knobs by name; ``serve(tracker,
    transport, groups)`` is awaited after the summary while everything still runs."""
    chosen = dataclasses.replace(demo_knobs(seed), **knobs)
    console = Console()
    console.print(
        f"[bold]choreo demo[/]: {orders} orders on {escape(redact_url(broker))} / "
        f"{escape(redact_url(store))}; "
        f"card limit {chosen.decline_above}, random declines {chosen.failure_rate:.0%}, "
        f"unconfirmed shipments {chosen.stall_rate:.0%}"
    )

    def report(run: DemoRun) -> None:
        console.print(summary(run.audit, run.elapsed, sagas=table, snapshot=run.dashboard))

    with contextlib.ExitStack() as bar:
        on_progress = bar.enter_context(progress_bar(console, orders))

        async def then(run: DemoRun, live: Live) -> None:
            assert serve is not None
            bar.close()  # the batch is over: its summary, then the API
            report(run)
            await serve(live.tracker, live.transport, live.groups)

        run = asyncio.run(
            run_embedded(
                count=orders,
                seed=seed,
                knobs=chosen,
                broker=broker,
                store=store,
                timeout=timeout,
                on_progress=on_progress,
                then=None if serve is None else then,
            )
        )
    if serve is None:
        report(run)
    return 0 if run.audit.ok else 1
