"""Orders placed against a running deployment, and the audit read back from it.

The front desk is a ``Service`` without handlers (it only publishes) plus a client of
the tracker's state API. It knows nothing of how the services run: the multi-process
demo uses it on the processes it started, ``docker compose run shop`` on the containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from choreo import ChoreoError, SagaState, SagaStatus, Service, UsageError, dashboard, open_store
from choreo.client import TrackerClient
from services_demo import inventory, orders, payment
from services_demo.audit import audit
from services_demo.contract import order_saga
from services_demo.embedded import DemoRun, OnProgress, wait_until_settled
from services_demo.knobs import Knobs
from services_demo.workload import Workload

log = logging.getLogger("services_demo.frontdesk")


async def place_and_audit(
    workload: Workload,
    knobs: Knobs,
    broker: str,
    store: str,
    tracker: TrackerClient,
    *,
    timeout: float = 90.0,
    on_progress: OnProgress | None = None,
    payment_store: str | None = None,
) -> DemoRun:
    """Seed the books, place the orders, wait until every saga has ended and its order's
    status is recorded (or ``timeout`` passes), then audit. ``knobs`` are the ones the
    deployment's services run with; they are only reported. ``payment_store``: the
    payment service's own store (its PostgreSQL in docker-compose.yml), else ``store``."""
    desk = Service("front-desk", contracts=[order_saga])
    # The tracker filters by update time; a minute of slack covers clocks a bit apart.
    started, since = time.monotonic(), time.time() - 60
    async with contextlib.AsyncExitStack() as stack:
        kv = await stack.enter_async_context(open_store(store))
        ledger = await stack.enter_async_context(open_store(payment_store)) if payment_store else kv
        await stack.enter_async_context(desk.running(broker=broker, store=kv))
        await inventory.seed_stock(kv, workload.stock)
        await payment.seed_balances(ledger, workload.balances)
        for order in workload.orders:
            await orders.place_order(desk, order)

        async def ended() -> set[str]:
            # The client is synchronous; a thread keeps this loop (and the producer) free.
            return await asyncio.to_thread(ended_sagas, tracker, since)

        await wait_until_settled(workload, kv, ended, timeout, on_progress, poll=0.25)
        states = await asyncio.to_thread(saga_states, tracker, workload)
        result = await audit(workload, states, kv, ledger)
        snapshot = await asyncio.to_thread(dashboard_snapshot, tracker)
    return DemoRun(workload, knobs, result, time.monotonic() - started, snapshot)


def dashboard_snapshot(tracker: TrackerClient) -> dashboard.Snapshot | None:
    """The tracker as ``choreo dashboard`` shows it; None from a tracker that cannot say
    (the audit stands without it)."""
    try:
        return dashboard.fetch(tracker)
    except ChoreoError as exc:
        log.warning("no dashboard view from %s: %s", tracker.url, exc)
        return None


def ended_sagas(tracker: TrackerClient, since: float) -> set[str]:
    """Gids of the order sagas in a terminal state, updated since ``since``."""
    ended: set[str] = set()
    offset: int | None = 0
    while offset is not None:
        page = tracker.get("/sagas", saga=order_saga.name, since=since, limit=1000, offset=offset)
        ended.update(i["gid"] for i in page["items"] if SagaStatus(i["status"]).is_terminal)
        offset = page["next"]
    return ended


def saga_states(tracker: TrackerClient, workload: Workload) -> dict[str, SagaState]:
    """The full state of each order's saga that the tracker knows."""
    states = {}
    for order in workload.orders:
        try:
            data = tracker.get(tracker.saga_path(order.order_id))
        except UsageError:  # the tracker never saw this saga; the audit reports it
            continue
        states[order.order_id] = SagaState.model_validate(data)
    return states
