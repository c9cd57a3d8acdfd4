"""After a demo run: did every saga end, and is every unit of stock and money accounted
for?

The books balance when, for every SKU, the stock before the run equals the stock after
it plus what completed orders took; for every customer, the balance before equals the
balance after plus what their completed orders paid; the shop's revenue equals what
completed orders paid; and a shipment stays booked exactly for the completed orders.
Compensated orders must leave no trace at all, however their saga ended.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from choreo import SagaState, SagaStatus, Store
from services_demo import inventory, orders, payment, shipping
from services_demo.contract import OrderPlaced
from services_demo.workload import Workload

# How the orders service must have recorded each terminal saga state.
EXPECTED_ORDER_STATUS = {
    SagaStatus.COMPLETED: orders.COMPLETED,
    SagaStatus.COMPENSATED: orders.CANCELLED,
    SagaStatus.STUCK: orders.STUCK,
}


@dataclass(frozen=True)
class OrderOutcome:
    order: OrderPlaced
    saga: SagaState | None
    status: str  # as the orders service recorded it
    shipment: str | None

    @property
    def saga_status(self) -> str:
        return self.saga.status.value if self.saga else "MISSING"

    @property
    def cause(self) -> str:
        """Why a saga did not complete, in a few words ("step payment failed")."""
        if self.saga is None or self.saga.status == SagaStatus.COMPLETED:
            return ""
        return self.saga.reason.split(":", 1)[0]


@dataclass
class Audit:
    outcomes: list[OrderOutcome]
    stock: dict[str, tuple[int, int, int]]  # sku: before, after, taken by completed orders
    money: dict[str, tuple[int, int, int]]  # customer: before, after, paid by completed orders
    revenue: tuple[int, int]  # the shop's revenue, what completed orders paid
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def by_status(self) -> Counter[str]:
        return Counter(outcome.saga_status for outcome in self.outcomes)

    def by_cause(self) -> Counter[str]:
        return Counter(outcome.cause for outcome in self.outcomes if outcome.cause)

    def compensations_issued(self) -> int:
        """Compensation events the tracker published, retries included."""
        return sum(
            step.compensation_attempts
            for outcome in self.outcomes
            if outcome.saga is not None
            for step in outcome.saga.steps.values()
        )


async def audit(
    workload: Workload,
    states: Mapping[str, SagaState],
    store: Store,
    payment_store: Store | None = None,
) -> Audit:
    """Check a finished run; ``states`` are the tracker's saga states by gid.
    ``payment_store``: where the payment service keeps its ledger, when not in ``store``."""
    ledger = payment_store or store
    outcomes = []
    for order in workload.orders:
        outcomes.append(
            OrderOutcome(
                order=order,
                saga=states.get(order.order_id),
                status=await orders.order_status(store, order.order_id),
                shipment=await shipping.shipment(store, order.order_id),
            )
        )
    completed = [o.order for o in outcomes if o.saga and o.saga.status == SagaStatus.COMPLETED]
    taken, paid = Counter[str](), Counter[str]()
    for order in completed:
        taken[order.sku] += order.qty
        paid[order.customer] += order.amount
    stock_after = await inventory.stock_levels(store, workload.skus)
    money_after = await payment.balances(ledger, workload.customers)
    result = Audit(
        outcomes=outcomes,
        stock={s: (workload.stock[s], stock_after[s], taken[s]) for s in workload.skus},
        money={c: (workload.balances[c], money_after[c], paid[c]) for c in workload.customers},
        revenue=(await payment.revenue(ledger), sum(paid.values())),
    )
    result.problems = _problems(result)
    return result


def _problems(result: Audit) -> list[str]:
    problems = []
    for outcome in result.outcomes:
        gid, saga = outcome.order.order_id, outcome.saga
        if saga is None or not saga.is_terminal:
            problems.append(f"{gid}: saga is {outcome.saga_status}, not terminal")
            continue
        expected = EXPECTED_ORDER_STATUS[saga.status]
        if outcome.status != expected:
            problems.append(f"{gid}: saga {saga.status.value} but order is {outcome.status}")
        if (saga.status == SagaStatus.COMPLETED) != (outcome.shipment is not None):
            problems.append(f"{gid}: saga {saga.status.value}, shipment {outcome.shipment}")
    for sku, (before, after, taken) in result.stock.items():
        if before != after + taken:
            problems.append(f"stock of {sku}: {before} before != {after} after + {taken} sold")
    for customer, (before, after, paid) in result.money.items():
        if before != after + paid:
            problems.append(f"{customer}: {before} before != {after} after + {paid} paid")
    revenue, paid_total = result.revenue
    if revenue != paid_total:
        problems.append(f"revenue {revenue} != {paid_total} paid by completed orders")
    return problems
