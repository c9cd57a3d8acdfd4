"""The fault suite's saga app: the demo's order saga (``services_demo.contract``'s events,
three steps) with 5 s deadlines (``contract``, for ``choreo tracker
tests.faults.app:contract``), served by three participants of our own, each run with
``choreo run tests.faults.app:<inventory|payment|shipping>`` (store URL in FAULTS_STORE).

What a saga does is written in its order id (``<run>-<n>-<mode>``), so every process and
the offline checker agree without sharing anything:

======== ===============================================================================
ok       every step succeeds: COMPLETED
reject   inventory refuses (business failure): COMPENSATED, nothing to undo
decline  payment declines (business failure): COMPENSATED, stock released
silent   shipping books but never confirms: the tracker times the step out, COMPENSATED
late     shipping confirms ``LATE_BY`` seconds after the deadline: COMPENSATED, the late
         success compensated, never applied
hanging  (reordering only) the start event and the payment step's compensation are
         written together, so payment reads the compensation before its action's
         trigger: a null compensation, then the hanging action refused; COMPENSATED
overtaken (reordering only) shipping books but never confirms; the fault writes the
         confirmation after the tracker's timeout compensation: COMPENSATED
======== ===============================================================================

Every effect also counts itself (``applied:<gid>:<step>:<op>``) in the handler's
transaction, so an effect applied twice shows in the store, whatever the topics say.

On a ``postgresql://`` store (the payment service in the suite's Postgres variant) the
handlers write plain SQL with ``ctx.db`` instead, in the transaction that records their
barrier row: the accounts and the revenue are the demo payment service's tables, the
effect counters the table of ``SQL_TABLES``.

Fault knobs (environment):

- ``FAULTS_KILL_AT`` = ``before-effect`` | ``after-effect`` | ``after-publish`` and
  ``FAULTS_KILL_COUNT`` = N: the process SIGKILLs itself the N-th time it reaches that
  point: inside a handler, nothing recorded (before-effect); after the batch's barrier
  commit, nothing sent (after-effect); after the outgoing events are acknowledged,
  before the offset commit (after-publish). The points of ``tests/procs/crashy.py``.
- ``FAULTS_SLOW`` = seconds every handler of this process sleeps (a slow participant).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence

from choreo import BusinessFailure, Context, Middleware, Service
from choreo.events import Message
from choreo.handlers import Handler
from choreo.saga import SagaContract, Step
from choreo.store.base import (
    BarrierKey,
    BarrierRecord,
    BarrierResult,
    Commit,
    Decision,
    Effect,
    Store,
    StoreSession,
    StoreTransaction,
)
from choreo.store.postgres import PostgresStore
from choreo.store.redis import RedisStore
from services_demo.contract import (
    CancelShipment,
    OrderPlaced,
    PaymentDeclined,
    PaymentDeducted,
    PaymentRefunded,
    RefundPayment,
    ReleaseStock,
    ShipmentCancelled,
    ShipmentScheduled,
    StockRejected,
    StockReleased,
    StockReserved,
)

# The demo's order saga with deadlines that a restarted participant can meet: the
# suite is about what faults break, not about every restart timing every saga out.
STEP_DEADLINE = 5.0
contract = SagaContract(
    "order",
    start=OrderPlaced,
    steps=[
        Step("stock", on=OrderPlaced, done=StockReserved, failed=StockRejected,
             compensation=ReleaseStock, compensated=StockReleased, deadline=STEP_DEADLINE,
             service="inventory"),
        Step("payment", on=StockReserved, done=PaymentDeducted, failed=PaymentDeclined,
             compensation=RefundPayment, compensated=PaymentRefunded,
             deadline=STEP_DEADLINE, service="payment",
             compensate_with=lambda reserved, deducted: RefundPayment(
                 order_id=reserved.order_id, customer=reserved.customer,
                 amount=deducted.amount if deducted else reserved.amount)),
        Step("shipping", on=PaymentDeducted, done=ShipmentScheduled,
             compensation=CancelShipment, compensated=ShipmentCancelled,
             deadline=STEP_DEADLINE, service="shipping"),
    ],
    compensation_retries=6,
    retry_backoff=1.0,
    retry_backoff_max=8.0,
)  # fmt: skip
order_saga = contract

MODES = ("ok", "reject", "decline", "silent", "late", "hanging", "overtaken")
KILL_POINTS = ("before-effect", "after-effect", "after-publish")
LATE_BY = STEP_DEADLINE + 2.0  # after the deadline, before the compensation budget ends
REVENUE = "revenue"


def mode_of(order_id: str) -> str:
    mode = order_id.rsplit("-", 1)[-1]
    return mode if mode in MODES else "ok"


def applied_key(gid: str, step: str, op: str) -> str:
    return f"applied:{gid}:{step}:{op}"


def stock_key(sku: str) -> str:
    return f"stock:{sku}"


def balance_key(customer: str) -> str:
    return f"balance:{customer}"


def shipment_key(order_id: str) -> str:
    return f"shipment:{order_id}"


# The accounts and the revenue are the demo payment service's tables
# (``services_demo.payment.SQL_TABLES``); the effect counters are the suite's own.
SQL_TABLES = """
CREATE TABLE IF NOT EXISTS faults_applied (
    gid  text NOT NULL,
    step text NOT NULL,
    op   text NOT NULL,
    n    int  NOT NULL,
    PRIMARY KEY (gid, step, op)
);
"""


class _Killer:
    """SIGKILLs this process the ``count``-th time ``point`` is reached."""

    def __init__(self) -> None:
        self.point = os.environ.get("FAULTS_KILL_AT", "")
        assert self.point in ("", *KILL_POINTS), self.point
        self.count = int(os.environ.get("FAULTS_KILL_COUNT", "1"))
        self.seen = 0

    def reached(self, point: str) -> None:
        if point != self.point:
            return
        self.seen += 1
        if self.seen >= self.count:
            print(f"faults: SIGKILL at {point} #{self.seen}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


KILLER = _Killer()


def _dump_tasks(signum: int, frame: object) -> None:
    """SIGUSR1: print every asyncio task's stack (the harness asks before a SIGKILL, so a
    participant that does not stop on SIGTERM says where it waits)."""
    loop = asyncio._get_running_loop()
    print(f"faults: SIGUSR1, {'no loop' if loop is None else 'tasks:'}", flush=True)
    if loop is not None:
        for task in asyncio.all_tasks(loop):
            task.print_stack(file=sys.stdout)
    sys.stdout.flush()


signal.signal(signal.SIGUSR1, _dump_tasks)
SLOW = float(os.environ.get("FAULTS_SLOW", "0") or 0)


class KillAfterPublish(Middleware):
    async def after_handle(self, message: Message, handler: Handler, decision: Decision) -> None:
        KILLER.reached("after-publish")


class KillingStore(Store):
    """A RedisStore whose batch commit can be the last thing this process does."""

    def __init__(self, url: str) -> None:
        self.inner = RedisStore(url)
        self.url = url
        self.retention_seconds = self.inner.retention_seconds

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def check_many(self, keys: Sequence[BarrierKey]) -> list[BarrierResult]:
        return await self.inner.check_many(keys)

    async def commit_many(self, commits: Sequence[Commit]) -> list[BarrierResult]:
        results = await self.inner.commit_many(commits)
        KILLER.reached("after-effect")
        return results

    async def records(self, gid: str) -> list[BarrierRecord]:
        return await self.inner.records(gid)

    async def get(self, key: str) -> str | None:
        return await self.inner.get(key)

    async def apply(self, effects: Sequence[Effect]) -> str:
        return await self.inner.apply(effects)


class _KillingSession(StoreSession):
    """A session whose every committed transaction may be the last thing this process
    does (the dispatcher runs a PostgreSQL store's handlers inside these)."""

    def __init__(self, inner: StoreSession) -> None:
        self.inner = inner

    async def check_many(self, keys: Sequence[BarrierKey]) -> list[BarrierResult]:
        return await self.inner.check_many(keys)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTransaction]:
        async with self.inner.transaction() as tx:
            yield tx
        KILLER.reached("after-effect")


class KillingPostgresStore(PostgresStore):
    """A PostgresStore killed after a committed transaction: the handler's SQL, its
    barrier row and its outgoing events are in the database, nothing is sent."""

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[StoreSession]:
        async with super().session() as session:
            yield _KillingSession(session)


def _service(name: str) -> Service:
    # Not CHOREO_STORE: ``choreo run`` would pass it over the store given here.
    store_url = os.environ.get("FAULTS_STORE", "memory://")
    if KILLER.point == "after-effect":
        sql = store_url.startswith(("postgresql://", "postgres://"))
        wrapped = KillingPostgresStore(store_url) if sql else KillingStore(store_url)

        @contextlib.asynccontextmanager
        async def lifespan(app: Service) -> AsyncIterator[None]:
            async with wrapped:
                yield

        return Service(name, contracts=[order_saga], store=wrapped, lifespan=lifespan,
                       broker=os.environ.get("CHOREO_BROKER", "memory://"))  # fmt: skip
    return Service(
        name,
        contracts=[order_saga],
        broker=os.environ.get("CHOREO_BROKER", "memory://"),
        store=store_url,
        middleware=[KillAfterPublish()],
    )


async def _work(ctx: Context, step: str, op: str) -> None:
    """What every handler does first: maybe be slow, maybe die, count the effect."""
    if SLOW:
        await asyncio.sleep(SLOW)
    KILLER.reached("before-effect")
    if ctx.has_db:
        await ctx.db.execute(
            "INSERT INTO faults_applied (gid, step, op, n) VALUES ($1, $2, $3, 1)"
            " ON CONFLICT (gid, step, op) DO UPDATE SET n = faults_applied.n + 1",
            ctx.gid,
            step,
            op,
        )
    else:
        ctx.tx.incr(applied_key(ctx.gid, step, op), 1)


inventory = _service("inventory")
payment = _service("payment")
shipping = _service("shipping")


@inventory.on_event(OrderPlaced)
async def reserve_stock(event: OrderPlaced, ctx: Context) -> StockReserved:
    await _work(ctx, "stock", "action")
    if mode_of(event.order_id) == "reject":
        reason = f"{event.sku} is not sold to {event.customer}"
        raise BusinessFailure(reason, StockRejected(order_id=event.order_id, reason=reason))
    ctx.tx.incr(stock_key(event.sku), -event.qty, minimum=0)
    return StockReserved(order_id=event.order_id, customer=event.customer, amount=event.amount)


@inventory.on_event(ReleaseStock)
async def release_stock(event: ReleaseStock, ctx: Context) -> StockReleased:
    await _work(ctx, "stock", "compensate")
    ctx.tx.incr(stock_key(event.sku), event.qty)
    return StockReleased(order_id=event.order_id)


@payment.on_event(StockReserved)
async def deduct(event: StockReserved, ctx: Context) -> PaymentDeducted:
    await _work(ctx, "payment", "action")
    if mode_of(event.order_id) == "decline":
        reason = "declined by the card issuer"
        raise BusinessFailure(reason, PaymentDeclined(order_id=event.order_id, reason=reason))
    if ctx.has_db:
        # The balances are far above any order, so the guard never refuses here.
        await ctx.db.execute(
            "UPDATE payment_accounts SET balance = balance - $2"
            " WHERE customer = $1 AND balance >= $2",
            event.customer,
            event.amount,
        )
        await ctx.db.execute(
            "UPDATE payment_revenue SET amount = amount + $1 WHERE id = 1", event.amount
        )
    else:
        ctx.tx.incr(balance_key(event.customer), -event.amount, minimum=0)
        ctx.tx.incr(REVENUE, event.amount)
    return PaymentDeducted(order_id=event.order_id, amount=event.amount)


@payment.on_event(RefundPayment)
async def refund(event: RefundPayment, ctx: Context) -> PaymentRefunded:
    await _work(ctx, "payment", "compensate")
    if ctx.has_db:
        await ctx.db.execute(
            "UPDATE payment_revenue SET amount = amount - $1 WHERE id = 1", event.amount
        )
        await ctx.db.execute(
            "UPDATE payment_accounts SET balance = balance + $2 WHERE customer = $1",
            event.customer,
            event.amount,
        )
    else:
        ctx.tx.incr(REVENUE, -event.amount)
        ctx.tx.incr(balance_key(event.customer), event.amount)
    return PaymentRefunded(order_id=event.order_id)


_late: set[asyncio.Task[None]] = set()


async def _confirm_late(order_id: str, gid: str) -> None:
    await asyncio.sleep(LATE_BY)
    shipment = ShipmentScheduled(order_id=order_id, shipment_id=f"shp-{order_id}")
    await shipping.publish(shipment, gid=gid)


@shipping.on_event(PaymentDeducted)
async def schedule(event: PaymentDeducted, ctx: Context) -> ShipmentScheduled | None:
    await _work(ctx, "shipping", "action")
    ctx.tx.put(shipment_key(event.order_id), f"shp-{event.order_id}")
    mode = mode_of(event.order_id)
    if mode in ("silent", "overtaken"):  # overtaken: the reordering fault confirms it
        return None
    if mode == "late":
        # The carrier confirms later, from outside the handler (a webhook, say): the
        # partition is not held, and the confirmation arrives after the deadline.
        task = asyncio.create_task(_confirm_late(event.order_id, ctx.gid))
        _late.add(task)
        task.add_done_callback(_late.discard)
        return None
    return ShipmentScheduled(order_id=event.order_id, shipment_id=f"shp-{event.order_id}")


@shipping.on_event(CancelShipment)
async def cancel(event: CancelShipment, ctx: Context) -> ShipmentCancelled:
    await _work(ctx, "shipping", "compensate")
    ctx.tx.delete(shipment_key(event.order_id))
    return ShipmentCancelled(order_id=event.order_id)
