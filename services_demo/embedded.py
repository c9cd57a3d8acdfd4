"""Every demo service and a saga tracker in one process: what ``choreo demo`` runs.

All participants share one transport and one store, opened here and handed to each
``running(broker=..., store=...)``. On ``memory://`` that is one in-process log and one
dict, so the demo needs nothing installed; pass ``kafka://`` and ``redis://`` URLs to run
the very same wiring against real servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from choreo import Store, Transport, open_store, open_transport
from choreo.dashboard import Snapshot, snapshot_of
from choreo.testing import MemoryTracker
from services_demo import inventory, orders, payment, shipping
from services_demo.audit import Audit, audit
from services_demo.contract import order_saga
from services_demo.knobs import Knobs
from services_demo.workload import Workload, build_workload, demo_knobs, namespace_for

SERVICES = (orders, inventory, payment, shipping)

OnProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Live:
    """The run's tracker and the transport its services share, still running."""

    tracker: MemoryTracker
    transport: Transport
    groups: dict[str, str]  # service name -> consumer group


AfterRun = Callable[["DemoRun", Live], Awaitable[None]]


@dataclass(frozen=True)
class DemoRun:
    workload: Workload
    knobs: Knobs
    audit: Audit
    elapsed: float
    dashboard: Snapshot | None = None  # the tracker as ``choreo dashboard`` shows it


async def run_embedded(
    *,
    count: int = 30,
    seed: int = 0,
    knobs: Knobs | None = None,
    broker: str = "memory://",
    store: str = "memory://",
    namespace: str | None = None,
    timeout: float = 45.0,
    on_progress: OnProgress | None = None,
    then: AfterRun | None = None,
) -> DemoRun:
    """Place ``count`` orders and wait until every saga has ended and the orders service
    has recorded it (or ``timeout`` passes); then audit the books.

    ``on_progress(finished, total)`` is called as sagas finish. ``namespace`` keeps the
    run's orders, stock, balances and consumer groups apart on a shared broker and store
    (by default: none in memory, a fresh one elsewhere). ``then(run, live)`` is awaited
    after the audit, while the services and the tracker still run (``choreo demo --serve``
    serves the tracker's state API there).
    """
    knobs = knobs or demo_knobs(seed)
    if namespace is None:
        namespace = namespace_for(store)
    workload = build_workload(count, seed, namespace)
    apps = {app.name: app for app in (module.build_app(knobs) for module in SERVICES)}
    tracker = MemoryTracker([order_saga])
    if namespace:
        # Groups of its own: the services of a deployment on the same broker must not
        # share (and split) this run's partitions.
        for participant in (*apps.values(), tracker):
            participant.group += f".{namespace}"
    started = time.monotonic()
    async with (
        open_transport(broker) as transport,
        open_store(store) as kv,
        contextlib.AsyncExitStack() as stack,
    ):
        # The tracker first, so it is folding before the first order arrives.
        await stack.enter_async_context(tracker.running(broker=transport))
        for app in apps.values():
            await stack.enter_async_context(app.running(broker=transport, store=kv))
        await inventory.seed_stock(kv, workload.stock)
        await payment.seed_balances(kv, workload.balances)
        for order in workload.orders:
            await orders.place_order(apps["orders"], order)

        async def ended() -> set[str]:
            return {gid for gid, saga in tracker.states().items() if saga.is_terminal}

        await wait_until_settled(workload, kv, ended, timeout, on_progress)
        result = await audit(workload, tracker.states(), kv)
        run = DemoRun(workload, knobs, result, time.monotonic() - started, snapshot_of(tracker))
        if then is not None:
            groups = {app.name: app.group for app in apps.values()}
            await then(run, Live(tracker, transport, groups))
    return run


async def wait_until_settled(
    workload: Workload,
    store: Store,
    ended: Callable[[], Awaitable[set[str]]],
    timeout: float,
    on_progress: OnProgress | None,
    poll: float = 0.05,
) -> bool:
    """True once every order's saga has ended (its gid is in ``ended()``, the tracker's
    terminal sagas) and the orders service has recorded how; False after ``timeout``."""
    total = len(workload.orders)
    deadline = time.monotonic() + timeout
    while True:
        finished, terminal = 0, await ended()
        for order in workload.orders:
            if order.order_id in terminal:
                finished += await orders.order_status(store, order.order_id) != orders.PENDING
        if on_progress is not None:
            on_progress(finished, total)
        if finished == total:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll)
