"""``choreo new NAME [--dir DIR]``: a starting point, a package with a two-step saga (a
contract, two services with an action and a compensation each) and its test, which runs
as written (``pytest DIR/NAME``) on the in-memory transport and on real Kafka by a switch.
"""

from __future__ import annotations

import argparse
import keyword
import re
from pathlib import Path

from choreo.errors import UsageError

_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")

CONTRACT = '''"""The {name} saga: what happens, in which order, and how each step is undone.

Services and the tracker import this module; `choreo graph {name}.services:reserve
{name}.services:charge --contract {name}.contract:saga --lint` draws and checks it.
"""

from __future__ import annotations

from choreo import Event, SagaContract, Step


class {Name}Event(Event, topic="{name}.events"):
    """Every event of this saga travels on one topic, keyed by the saga's gid."""


class OrderPlaced({Name}Event):
    order_id: str
    sku: str
    qty: int
    amount: int


class StockReserved({Name}Event):
    order_id: str
    sku: str
    qty: int
    amount: int


class StockRejected({Name}Event):
    order_id: str
    reason: str


class ReleaseStock({Name}Event):
    order_id: str
    sku: str
    qty: int


class StockReleased({Name}Event):
    order_id: str


class PaymentCharged({Name}Event):
    order_id: str
    amount: int


class PaymentDeclined({Name}Event):
    order_id: str
    reason: str


class RefundPayment({Name}Event):
    order_id: str
    amount: int


class PaymentRefunded({Name}Event):
    order_id: str


saga = SagaContract(
    "{name}",
    start=OrderPlaced,
    steps=[
        Step(
            "stock",
            on=OrderPlaced,
            done=StockReserved,
            failed=(StockRejected,),
            compensation=ReleaseStock,
            compensated=(StockReleased,),
            deadline=5.0,
            service="stock",
        ),
        Step(
            "payment",
            on=StockReserved,
            done=PaymentCharged,
            failed=(PaymentDeclined,),
            compensation=RefundPayment,
            compensated=(PaymentRefunded,),
            deadline=5.0,
            service="payment",
        ),
    ],
)
'''

SERVICES = '''"""The {name} saga's two services. Run one with
`choreo run {name}.services:reserve --broker kafka://HOST:PORT --store redis://HOST:PORT/0`.
"""

from __future__ import annotations

import os

from choreo import BusinessFailure, Context, Service

from {name}.contract import (
    OrderPlaced,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
    ReleaseStock,
    StockReleased,
    StockReserved,
    saga,
)

BROKER = os.environ.get("CHOREO_BROKER", "memory://")
STORE = os.environ.get("CHOREO_STORE", "memory://")

reserve = Service("stock", broker=BROKER, store=STORE, contracts=[saga])
charge = Service("payment", broker=BROKER, store=STORE, contracts=[saga])

CREDIT_LIMIT = 500  # payments above it are declined


@reserve.on_event(OrderPlaced)
async def reserve_stock(event: OrderPlaced, ctx: Context) -> StockReserved:
    # Applied exactly once, atomically with the step's barrier record; refused (and the
    # step failed, compensating the saga) when the stock would go below zero.
    ctx.tx.incr(f"stock:{{event.sku}}", -event.qty, minimum=0)
    return StockReserved(
        order_id=event.order_id, sku=event.sku, qty=event.qty, amount=event.amount
    )


@reserve.on_event(ReleaseStock)
async def release_stock(event: ReleaseStock, ctx: Context) -> StockReleased:
    ctx.tx.incr(f"stock:{{event.sku}}", event.qty)
    return StockReleased(order_id=event.order_id)


@charge.on_event(StockReserved)
async def charge_payment(event: StockReserved, ctx: Context) -> PaymentCharged:
    if event.amount > CREDIT_LIMIT:
        raise BusinessFailure(
            "over the credit limit",
            event=PaymentDeclined(order_id=event.order_id, reason="over the credit limit"),
        )
    ctx.tx.incr("revenue", event.amount)
    return PaymentCharged(order_id=event.order_id, amount=event.amount)


@charge.on_event(RefundPayment)
async def refund_payment(event: RefundPayment, ctx: Context) -> PaymentRefunded:
    ctx.tx.incr("revenue", -event.amount)
    return PaymentRefunded(order_id=event.order_id)
'''

TEST = '''"""The {name} saga end to end: both services and the tracker in one process.

    pytest {name}                      # on the in-memory transport
    CHOREO_TEST_BROKER=kafka://HOST:PORT CHOREO_TEST_STORE=redis://HOST:PORT/0 pytest {name}
"""

from __future__ import annotations

import os
import uuid

import pytest
from choreo import Put, SagaStatus
from choreo.testing import Harness, MemoryTracker

from {name}.contract import OrderPlaced, saga
from {name}.services import charge, reserve

BROKER = os.environ.get("CHOREO_TEST_BROKER", "memory://")
STORE = os.environ.get("CHOREO_TEST_STORE", "memory://")


async def run_order(amount: int, stock: int) -> tuple[SagaStatus, int, int]:
    """(final status, stock left, revenue) of one order of 2 units."""
    sku = f"sku-{{uuid.uuid4().hex[:8]}}"
    tracker = MemoryTracker([saga])
    async with Harness(reserve, charge, tracker, broker=BROKER, store=STORE) as h:
        await h.store.apply([Put(f"stock:{{sku}}", str(stock)), Put("revenue", "0")])
        order = OrderPlaced(order_id=uuid.uuid4().hex, sku=sku, qty=2, amount=amount)
        gid = await h.publish(order)
        state = await h.wait(gid)  # the tracker's final state: COMPLETED, COMPENSATED, STUCK
        await h.drain()  # and every participant done with what the saga published
        return (
            state.status,
            await h.store.get_int(f"stock:{{sku}}"),
            await h.store.get_int("revenue"),
        )


@pytest.mark.asyncio
async def test_an_order_completes() -> None:
    assert await run_order(amount=100, stock=10) == (SagaStatus.COMPLETED, 8, 100)


@pytest.mark.asyncio
async def test_a_declined_payment_gives_the_stock_back() -> None:
    assert await run_order(amount=900, stock=10) == (SagaStatus.COMPENSATED, 10, 0)


@pytest.mark.asyncio
async def test_missing_stock_fails_the_saga() -> None:
    assert await run_order(amount=100, stock=1) == (SagaStatus.COMPENSATED, 1, 0)
'''

FILES = {
    "__init__.py": '"""The {name} saga (made by `choreo new`)."""\n',
    "contract.py": CONTRACT,
    "services.py": SERVICES,
    "test_saga.py": TEST,
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "new", help="write a starting point: a saga contract, two services and their test"
    )
    parser.add_argument("name", help="the package to create (lowercase, e.g. shop)")
    parser.add_argument("--dir", type=Path, default=Path("."), help="where (default: here)")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    written = scaffold(args.name, args.dir)
    print(f"choreo: wrote {', '.join(str(p) for p in written)}")
    print(f"  next: cd {args.dir} && pytest {args.name}")
    return 0


def scaffold(name: str, where: Path) -> list[Path]:
    if not _NAME.fullmatch(name) or keyword.iskeyword(name):
        raise UsageError(
            f"{name!r} is not a package name choreo new can use",
            hint="lowercase letters, digits and _, starting with a letter, e.g. shop",
        )
    package = where / name
    if package.exists():
        raise UsageError(f"{package} exists", hint="pick another name or --dir")
    package.mkdir(parents=True)
    camel = "".join(part.capitalize() for part in name.split("_"))
    written = []
    for filename, template in FILES.items():
        path = package / filename
        path.write_text(template.format(name=name, Name=camel))
        written.append(path)
    return written
