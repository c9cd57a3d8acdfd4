"""A one-step saga and a choreo service that plays it, for tests/test_conformance.py.

The ``hold`` step holds an amount on an account (a counter in the store, so the test can
count how often it really ran) and releases it on compensation; an amount over 1000 is
refused (a business failure). ``choreo run tests.procs.conformance_app:app`` runs it;
``tests.procs.conformance_rogue`` plays the same step breaking rules on purpose.
"""

from __future__ import annotations

import os

from pydantic import PositiveInt

from choreo import BusinessFailure, Context, Event, SagaContract, Service, Step

TOPIC = "test.conformance"
SERVICE = "conformance-py"
LIMIT = 1000


class HoldEvent(Event, topic=TOPIC):
    """Every event of the saga on one topic."""


class HoldRequested(HoldEvent):
    account: str
    amount: PositiveInt


class FundsHeld(HoldEvent):
    account: str
    amount: int


class HoldRefused(HoldEvent):
    account: str
    reason: str


class ReleaseHold(HoldEvent):
    account: str
    amount: int


class HoldReleased(HoldEvent):
    account: str


hold_saga = SagaContract(
    "hold",
    start=HoldRequested,
    steps=[
        Step(
            "hold",
            on=HoldRequested,
            done=FundsHeld,
            failed=HoldRefused,
            compensation=ReleaseHold,
            compensated=HoldReleased,
            service=SERVICE,
        )
    ],
)


def held_key(account: str) -> str:
    return f"held:{account}"


def runs_key(account: str) -> str:
    return f"runs:{account}"


def build_app(broker: str = "memory://", store: str = "memory://") -> Service:
    app = Service(SERVICE, broker=broker, store=store, contracts=[hold_saga])

    @app.on_event(HoldRequested)
    async def hold(event: HoldRequested, ctx: Context) -> FundsHeld:
        if event.amount > LIMIT:
            reason = f"{event.amount} is over the limit {LIMIT}"
            raise BusinessFailure(reason, HoldRefused(account=event.account, reason=reason))
        ctx.tx.incr(held_key(event.account), event.amount)
        ctx.tx.incr(runs_key(event.account), 1)
        return FundsHeld(account=event.account, amount=event.amount)

    @app.on_event(ReleaseHold)
    async def release(event: ReleaseHold, ctx: Context) -> HoldReleased:
        ctx.tx.incr(held_key(event.account), -event.amount)
        ctx.tx.incr(runs_key(event.account), 1)
        return HoldReleased(account=event.account)

    return app


app = build_app(
    broker=os.environ.get("CHOREO_BROKER") or "memory://",
    store=os.environ.get("CHOREO_STORE") or "memory://",
)
