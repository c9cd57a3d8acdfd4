"""A small two-service saga used by the runtime scenario suite.

Behaviour knobs travel in the payload, so one set of services serves every scenario
and each test owns its gid and keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from choreo import BusinessFailure, Context, Event, RetryPolicy, Service
from choreo.codec import Limits


class ShopEvent(Event, topic="test.shop"):
    """All of the shop's events share one topic, so per-gid order holds across them."""


class OrderPlaced(ShopEvent):
    order_id: str
    sku: str
    qty: int
    amount: int
    flaky: int = 0  # inventory fails this many times with a retriable error first
    broken: bool = False  # inventory raises a non-retriable programming error


class StockReserved(ShopEvent):
    order_id: str
    sku: str
    qty: int
    amount: int


class PaymentCharged(ShopEvent):
    order_id: str
    amount: int


class PaymentDeclined(ShopEvent):
    order_id: str
    reason: str


class ReleaseStock(ShopEvent):
    order_id: str
    sku: str
    qty: int


class StockReleased(ShopEvent):
    order_id: str


SHOP_EVENTS = (OrderPlaced, StockReserved, PaymentCharged, PaymentDeclined, ReleaseStock,
               StockReleased)  # fmt: skip


@dataclass
class Shop:
    inventory: Service
    payment: Service
    attempts: dict[str, int] = field(default_factory=dict)
    card_limit: int = 100

    @property
    def services(self) -> tuple[Service, Service]:
        return (self.inventory, self.payment)


def build_shop(prefix: str) -> Shop:
    """Two services; ``prefix`` keeps consumer groups apart between tests on one broker."""
    # A small size limit, so the oversize poison test fits under Kafka's own 1 MB cap.
    limits = Limits(max_bytes=64_000)
    inventory = Service("inventory", group=f"{prefix}.inventory", limits=limits)
    payment = Service("payment", group=f"{prefix}.payment", limits=limits)
    shop = Shop(inventory, payment)
    for service in shop.services:
        # Both read the shared topic; events they do not handle are skipped, not poison.
        service.register_events(*SHOP_EVENTS)
    fast = RetryPolicy(max_attempts=3, backoff=0.01, backoff_max=0.05)

    @inventory.on_event(OrderPlaced, step="stock", retry=fast)
    async def reserve(event: OrderPlaced, ctx: Context) -> StockReserved:
        seen = shop.attempts.get(event.order_id, 0) + 1
        shop.attempts[event.order_id] = seen
        if event.broken:
            raise ValueError("bad data in the handler")
        if seen <= event.flaky:
            raise ConnectionError(f"warehouse API unavailable (attempt {seen})")
        ctx.tx.incr(f"stock:{event.sku}", -event.qty, minimum=0)
        ctx.tx.put(f"reservation:{event.order_id}", f"{event.sku}:{event.qty}")
        return StockReserved(
            order_id=event.order_id, sku=event.sku, qty=event.qty, amount=event.amount
        )

    @inventory.on_event(ReleaseStock, step="stock", op="compensate")
    async def release(event: ReleaseStock, ctx: Context) -> StockReleased:
        ctx.tx.incr(f"stock:{event.sku}", event.qty)
        return StockReleased(order_id=event.order_id)

    @inventory.on_event(PaymentDeclined)
    async def on_declined(event: PaymentDeclined, ctx: Context) -> ReleaseStock:
        # Choreography: the failure event of one step makes the previous one compensate.
        sku, qty = (await ctx.store.get(f"reservation:{event.order_id}") or "?:0").split(":")
        return ReleaseStock(order_id=event.order_id, sku=sku, qty=int(qty))

    @payment.on_event(StockReserved, step="payment")
    async def charge(event: StockReserved, ctx: Context) -> PaymentCharged:
        if event.amount > shop.card_limit:
            raise BusinessFailure(
                "card limit exceeded",
                PaymentDeclined(order_id=event.order_id, reason="card limit exceeded"),
            )
        ctx.tx.incr(f"balance:{event.order_id}", -event.amount)
        return PaymentCharged(order_id=event.order_id, amount=event.amount)

    return shop
