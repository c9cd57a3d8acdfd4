"""The demo with its payment service on PostgreSQL: balances and revenue in tables written
with ``ctx.db`` in the barrier's transaction, the other services on the same store's
key-value table; 200 sagas conserve stock and money. (How many complete depends on the
machine: the demo's steps have 2-second deadlines, and on a loaded machine many time out
and are compensated, late replies included; the books must balance either way.)"""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from services_demo.embedded import run_embedded

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.mark.timeout(180)
async def test_the_payment_ledger_in_postgres_conserves_money(postgres_url: str) -> None:
    run = await run_embedded(count=200, seed=7, store=postgres_url,
                             namespace=f"pg{uuid.uuid4().hex[:6]}", timeout=150)  # fmt: skip

    assert run.audit.problems == []
    conn = await asyncpg.connect(postgres_url)
    try:
        accounts = await conn.fetch("SELECT customer, balance FROM payment_accounts")
        demo_keys = [f"balance:{customer}" for customer in run.workload.customers]
        kv_balances = await conn.fetchval(
            "SELECT count(*) FROM choreo_kv WHERE key = ANY($1)", [*demo_keys, "revenue"]
        )
    finally:
        await conn.close()
    # The money lives in the payment tables, not in choreo's key-value table.
    assert {row["customer"] for row in accounts} == set(run.workload.customers)
    assert kv_balances == 0
    spent = sum(before - after for before, after, _ in run.audit.money.values())
    assert spent == run.audit.revenue[0]
