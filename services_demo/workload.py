"""The batch of orders a demo run places, and the stock and money it starts from.

The mix is chosen so that every kind of ending shows up in a run of ~30 orders:

- most orders complete;
- ``gizmo`` has little stock, so some orders for it are rejected by inventory;
- some amounts are above the demo's card limit, and ``eve`` cannot afford much, so
  payment declines them and stock is released again;
- the demo's knobs leave some shipments unconfirmed, so the tracker times them out and
  compensates shipping, payment and stock in that order.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from services_demo.contract import OrderPlaced
from services_demo.knobs import Knobs

CARD_LIMIT = 500

_STOCK = {"widget": 1_000, "gadget": 1_000, "gizmo": 4}
_BALANCES = {"alice": 10_000, "bob": 10_000, "carol": 10_000, "dave": 10_000, "eve": 150}


def demo_knobs(seed: int = 0) -> Knobs:
    """The knobs of ``choreo demo``: a card limit, a few random declines, and a carrier
    that never confirms about one shipment in seven."""
    return Knobs(decline_above=CARD_LIMIT, failure_rate=0.05, stall_rate=0.15, seed=seed)


def namespace_for(store: str) -> str:
    """No namespace on a fresh in-memory store; a new one on a store that may hold an
    earlier run's orders (their gids and barrier records would collide with ours)."""
    return "" if store.startswith("memory://") else uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class Workload:
    orders: tuple[OrderPlaced, ...]
    stock: dict[str, int]
    balances: dict[str, int]

    @property
    def skus(self) -> list[str]:
        return sorted(self.stock)

    @property
    def customers(self) -> list[str]:
        return sorted(self.balances)


def build_workload(count: int = 30, seed: int = 0, namespace: str = "") -> Workload:
    """``count`` orders drawn with ``seed``. A ``namespace`` goes into the order ids (the
    gids), so runs that share a broker and a store keep their sagas apart. They share
    the shop's stock and accounts, which each run seeds afresh: run them one at a time."""
    if count < 1:
        raise ValueError("a demo needs at least one order")
    rng = random.Random(seed)
    prefix = f"{namespace}-" if namespace else ""
    stock, balances = dict(_STOCK), dict(_BALANCES)
    skus, customers = list(stock), list(balances)
    orders = []
    for number in range(1, count + 1):
        sku = rng.choices(skus, weights=[4, 4, 1])[0]
        customer = rng.choices(customers, weights=[3, 3, 3, 3, 1])[0]
        # One order in ten goes over the card limit.
        high = rng.random() < 0.1
        amount = rng.randint(CARD_LIMIT + 1, 2 * CARD_LIMIT) if high else rng.randint(20, 300)
        order = OrderPlaced(
            order_id=f"{prefix}order-{number:03d}",
            customer=customer,
            sku=sku,
            qty=rng.randint(1, 3),
            amount=amount,
        )
        orders.append(order)
    return Workload(tuple(orders), stock, balances)
