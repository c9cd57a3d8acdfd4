"""The payment service: deducts an order's amount from the customer and refunds it on
compensation.

Money moves between two kinds of accounts in the store: each customer's balance and the
shop's revenue. A deduction and a refund each move it in one transaction, applied with
the step's barrier record, so money is neither created nor lost by retries.
"""

from __future__ import annotations

from collections.abc import Mapping

from choreo import BusinessFailure, Context, Put, Service, Store
from services_demo.contract import (
    PaymentDeclined,
    PaymentDeducted,
    PaymentRefunded,
    RefundPayment,
    StockReserved,
    order_saga,
)
from services_demo.knobs import Knobs, service_urls

REVENUE_KEY = "revenue"


def balance_key(customer: str) -> str:
    return f"balance:{customer}"


async def seed_balances(store: Store, balances: Mapping[str, int]) -> None:
    """Open the customers' accounts and zero the shop's revenue."""
    puts = [Put(balance_key(customer), str(amount)) for customer, amount in balances.items()]
    refused = await store.apply([*puts, Put(REVENUE_KEY, "0")])
    if refused:
        raise RuntimeError(f"seeding balances was refused: {refused}")


async def balances(store: Store, customers: list[str]) -> dict[str, int]:
    return {customer: await store.get_int(balance_key(customer)) for customer in customers}


async def revenue(store: Store) -> int:
    return await store.get_int(REVENUE_KEY)


def build_app(knobs: Knobs, *, broker: str = "memory://", store: str = "memory://") -> Service:
    """The payment service; ``knobs`` may decline payments above an amount or at random."""
    app = Service("payment", broker=broker, store=store, contracts=[order_saga])

    @app.on_event(StockReserved)
    async def deduct_payment(event: StockReserved, ctx: Context) -> PaymentDeducted:
        reason = knobs.decline_reason(event.order_id, event.amount)
        if reason is None:
            balance = await ctx.store.get_int(balance_key(event.customer))
            if balance < event.amount:
                reason = f"insufficient funds: balance {balance}, amount {event.amount}"
        if reason is not None:
            raise BusinessFailure(reason, PaymentDeclined(order_id=event.order_id, reason=reason))
        # As in inventory, the guard (not the read) keeps a balance from going negative
        # when two orders of one customer are paid at once.
        ctx.tx.incr(balance_key(event.customer), -event.amount, minimum=0)
        ctx.tx.incr(REVENUE_KEY, event.amount)
        return PaymentDeducted(order_id=event.order_id, amount=event.amount)

    @app.on_event(RefundPayment)
    async def refund_payment(event: RefundPayment, ctx: Context) -> PaymentRefunded:
        ctx.tx.incr(REVENUE_KEY, -event.amount)
        ctx.tx.incr(balance_key(event.customer), event.amount)
        return PaymentRefunded(order_id=event.order_id)

    return app


app = build_app(Knobs.from_env(), **service_urls())
