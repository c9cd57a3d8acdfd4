"""The inventory service: reserves stock for an order and releases it on compensation.

Stock levels live in the store; every change goes through the handler's transaction, so
it is applied exactly once, together with the step's barrier record.
"""

from __future__ import annotations

from collections.abc import Mapping

from choreo import BusinessFailure, Context, Put, Service, Store
from services_demo.contract import (
    OrderPlaced,
    ReleaseStock,
    StockRejected,
    StockReleased,
    StockReserved,
    order_saga,
)
from services_demo.knobs import Knobs, service_urls


def stock_key(sku: str) -> str:
    return f"stock:{sku}"


async def seed_stock(store: Store, levels: Mapping[str, int]) -> None:
    """Set stock levels outside any saga (a warehouse count, not a business event)."""
    refused = await store.apply([Put(stock_key(sku), str(qty)) for sku, qty in levels.items()])
    if refused:
        raise RuntimeError(f"seeding stock was refused: {refused}")


async def stock_levels(store: Store, skus: list[str]) -> dict[str, int]:
    return {sku: await store.get_int(stock_key(sku)) for sku in skus}


def build_app(knobs: Knobs, *, broker: str = "memory://", store: str = "memory://") -> Service:
    """The inventory service. It has no failure knobs; running out of stock is real."""
    app = Service("inventory", broker=broker, store=store, contracts=[order_saga])

    @app.on_event(OrderPlaced)
    async def reserve_stock(event: OrderPlaced, ctx: Context) -> StockReserved:
        available = await ctx.store.get_int(stock_key(event.sku))
        if available < event.qty:
            reason = f"only {available} of {event.sku} left, {event.qty} ordered"
            raise BusinessFailure(reason, StockRejected(order_id=event.order_id, reason=reason))
        # The read above gives the customer a clear reason. The guard is what protects the
        # stock when two orders race for the last units: it refuses atomically at commit,
        # and the step fails instead of selling stock that is not there.
        ctx.tx.incr(stock_key(event.sku), -event.qty, minimum=0)
        return StockReserved(order_id=event.order_id, customer=event.customer, amount=event.amount)

    @app.on_event(ReleaseStock)
    async def release_stock(event: ReleaseStock, ctx: Context) -> StockReleased:
        # Runs only if the reservation did (the barrier turns any other case into a
        # confirmed no-op), so releasing can never create stock.
        ctx.tx.incr(stock_key(event.sku), event.qty)
        return StockReleased(order_id=event.order_id)

    return app


app = build_app(Knobs.from_env(), **service_urls())
