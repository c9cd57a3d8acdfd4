"""The orders service: starts an order saga and records how it ended.

The order id doubles as the saga's gid, so the order, its saga in the tracker and its
barrier records are found under one id. An order's status lives in the store and is
written only through the barrier, so a redelivered SagaCompleted cannot write twice.
An order without a status is still in flight.
"""

from __future__ import annotations

from choreo import Context, SagaCompensated, SagaCompleted, SagaStuck, Service, Store
from services_demo.contract import OrderPlaced, order_saga
from services_demo.knobs import Knobs, service_urls

PENDING = "pending"
COMPLETED = "completed"
CANCELLED = "cancelled"
STUCK = "stuck"


def status_key(order_id: str) -> str:
    return f"order:{order_id}:status"


def reason_key(order_id: str) -> str:
    return f"order:{order_id}:reason"


async def place_order(app: Service, order: OrderPlaced) -> str:
    """Start the saga of ``order`` through a running service; returns its gid."""
    envelope = await app.publish(order, gid=order.order_id)
    return envelope.gid


async def order_status(store: Store, order_id: str) -> str:
    return await store.get(status_key(order_id)) or PENDING


def build_app(knobs: Knobs, *, broker: str = "memory://", store: str = "memory://") -> Service:
    """The orders service. It has no failure knobs; ``knobs`` keeps every demo service's
    factory alike."""
    app = Service("orders", broker=broker, store=store, contracts=[order_saga])

    # The tracker announces how each saga ended on the system topic, which every saga
    # shares: these handlers look only at order sagas.

    @app.on_event(SagaCompleted)
    async def order_completed(event: SagaCompleted, ctx: Context) -> None:
        if event.saga == order_saga.name:
            ctx.tx.put(status_key(ctx.gid), COMPLETED)

    @app.on_event(SagaCompensated)
    async def order_cancelled(event: SagaCompensated, ctx: Context) -> None:
        if event.saga == order_saga.name:
            ctx.tx.put(status_key(ctx.gid), CANCELLED)
            ctx.tx.put(reason_key(ctx.gid), event.reason)

    @app.on_event(SagaStuck)
    async def order_stuck(event: SagaStuck, ctx: Context) -> None:
        # An operator must look; the customer is told the order is on hold.
        if event.saga == order_saga.name:
            ctx.tx.put(status_key(ctx.gid), STUCK)
            ctx.tx.put(reason_key(ctx.gid), event.reason)

    return app


app = build_app(Knobs.from_env(), **service_urls())
