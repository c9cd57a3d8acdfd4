"""The payment service: deducts an order's amount from the customer and refunds it on
compensation.

Money moves between two kinds of accounts in the store: each customer's balance and the
shop's revenue. A deduction and a refund each move it in one transaction, applied with
the step's barrier record, so money is neither created nor lost by retries.

On a ``postgresql://`` store the accounts are tables of that database (``payment_accounts``,
``payment_revenue``) written with plain SQL through ``ctx.db``, in the transaction that
records the step's barrier row (docs/postgres.md); on memory and Redis they are store keys
changed through ``ctx.tx``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from choreo import PostgresStore

REVENUE_KEY = "revenue"


def balance_key(customer: str) -> str:
    return f"balance:{customer}"


SQL_TABLES = """
CREATE TABLE IF NOT EXISTS payment_accounts (
    customer text PRIMARY KEY,
    balance  bigint NOT NULL CHECK (balance >= 0)
);
CREATE TABLE IF NOT EXISTS payment_revenue (
    id     int PRIMARY KEY CHECK (id = 1),
    amount bigint NOT NULL
);
"""


def _sql(store: Store) -> PostgresStore | None:
    """The PostgreSQL store, when it is one."""
    from choreo import PostgresStore  # imported on use: it brings in asyncpg

    return store if isinstance(store, PostgresStore) else None


async def seed_balances(store: Store, balances: Mapping[str, int]) -> None:
    """Open the customers' accounts and zero the shop's revenue."""
    sql = _sql(store)
    if sql is not None:
        async with sql.pool.acquire() as conn, conn.transaction():
            await conn.execute(SQL_TABLES)
            await conn.executemany(
                "INSERT INTO payment_accounts (customer, balance) VALUES ($1, $2)"
                " ON CONFLICT (customer) DO UPDATE SET balance = EXCLUDED.balance",
                list(balances.items()),
            )
            await conn.execute(
                "INSERT INTO payment_revenue VALUES (1, 0)"
                " ON CONFLICT (id) DO UPDATE SET amount = 0"
            )
        return
    puts = [Put(balance_key(customer), str(amount)) for customer, amount in balances.items()]
    refused = await store.apply([*puts, Put(REVENUE_KEY, "0")])
    if refused:
        raise RuntimeError(f"seeding balances was refused: {refused}")


async def balances(store: Store, customers: list[str]) -> dict[str, int]:
    sql = _sql(store)
    if sql is not None:
        rows = await sql.pool.fetch(
            "SELECT customer, balance FROM payment_accounts WHERE customer = ANY($1)", customers
        )
        found = {row["customer"]: row["balance"] for row in rows}
        return {customer: found.get(customer, 0) for customer in customers}
    return {customer: await store.get_int(balance_key(customer)) for customer in customers}


async def revenue(store: Store) -> int:
    sql = _sql(store)
    if sql is not None:
        amount = await sql.pool.fetchval("SELECT amount FROM payment_revenue WHERE id = 1")
        return int(amount or 0)
    return await store.get_int(REVENUE_KEY)


def build_app(knobs: Knobs, *, broker: str = "memory://", store: str = "memory://") -> Service:
    """The payment service; ``knobs`` may decline payments above an amount or at random."""
    app = Service("payment", broker=broker, store=store, contracts=[order_saga])

    @app.on_event(StockReserved)
    async def deduct_payment(event: StockReserved, ctx: Context) -> PaymentDeducted:
        reason = knobs.decline_reason(event.order_id, event.amount)
        if reason is None and ctx.has_db:
            # The WHERE clause is the guard: the balance never goes below zero, even when
            # two orders of one customer are paid at once (the row lock serializes them).
            balance = await ctx.db.fetchval(
                "UPDATE payment_accounts SET balance = balance - $2"
                " WHERE customer = $1 AND balance >= $2 RETURNING balance",
                event.customer,
                event.amount,
            )
            if balance is not None:
                await ctx.db.execute(
                    "UPDATE payment_revenue SET amount = amount + $1 WHERE id = 1", event.amount
                )
                return PaymentDeducted(order_id=event.order_id, amount=event.amount)
            reason = f"insufficient funds for amount {event.amount}"
        elif reason is None:
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
        if ctx.has_db:  # the same order as a deduction: the account's row, then revenue
            await ctx.db.execute(
                "UPDATE payment_accounts SET balance = balance + $2 WHERE customer = $1",
                event.customer,
                event.amount,
            )
            await ctx.db.execute(
                "UPDATE payment_revenue SET amount = amount - $1 WHERE id = 1", event.amount
            )
            return PaymentRefunded(order_id=event.order_id)
        ctx.tx.incr(REVENUE_KEY, -event.amount)
        ctx.tx.incr(balance_key(event.customer), event.amount)
        return PaymentRefunded(order_id=event.order_id)

    return app


app = build_app(Knobs.from_env(), **service_urls())
