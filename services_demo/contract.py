"""The order saga: its events and its contract, shared by every service and the tracker.

    OrderPlaced -stock-> StockReserved -payment-> PaymentDeducted -shipping-> ShipmentScheduled
       failed:   StockRejected        PaymentDeclined
    compensation: ReleaseStock -> StockReleased, RefundPayment -> PaymentRefunded,
                  CancelShipment -> ShipmentCancelled (run newest first by the tracker)

The tracker builds each compensation from its own step's trigger and done event only:
ReleaseStock and CancelShipment by copying fields by name (the contract is refused if one
cannot be filled), RefundPayment with ``compensate_with``, because both StockReserved and
PaymentDeducted carry an ``amount`` and the refund must say which it means.
"""

from __future__ import annotations

from pydantic import PositiveInt

from choreo import Event, SagaContract, Step

TOPIC = "demo.orders"

# Short on purpose: the demo's silent shipping step should time out within seconds. A
# real shop would give its steps minutes.
STEP_DEADLINE = 2.0


class OrderEvent(Event, topic=TOPIC):
    """Every event of the saga shares one topic, keyed by gid, so the events of one order
    stay in order for every reader."""


class OrderPlaced(OrderEvent):
    order_id: str
    customer: str
    sku: str
    qty: PositiveInt  # a negative quantity would add stock: refused as poison at decode
    amount: PositiveInt


class StockReserved(OrderEvent):
    order_id: str
    customer: str
    amount: int


class StockRejected(OrderEvent):
    order_id: str
    reason: str


class ReleaseStock(OrderEvent):
    order_id: str
    sku: str
    qty: PositiveInt


class StockReleased(OrderEvent):
    order_id: str


class PaymentDeducted(OrderEvent):
    order_id: str
    amount: int


class PaymentDeclined(OrderEvent):
    order_id: str
    reason: str


class RefundPayment(OrderEvent):
    order_id: str
    customer: str
    amount: int


class PaymentRefunded(OrderEvent):
    order_id: str


class ShipmentScheduled(OrderEvent):
    order_id: str
    shipment_id: str


class CancelShipment(OrderEvent):
    order_id: str


class ShipmentCancelled(OrderEvent):
    order_id: str


order_saga = SagaContract(
    "order",
    start=OrderPlaced,
    steps=[
        Step(
            "stock",
            on=OrderPlaced,
            done=StockReserved,
            failed=StockRejected,
            compensation=ReleaseStock,
            compensated=StockReleased,
            deadline=STEP_DEADLINE,
            service="inventory",
        ),
        Step(
            "payment",
            on=StockReserved,
            done=PaymentDeducted,
            failed=PaymentDeclined,
            compensation=RefundPayment,
            compensated=PaymentRefunded,
            deadline=STEP_DEADLINE,
            service="payment",
            # Refund what was deducted; after a timeout (no reply) what was asked for.
            compensate_with=lambda reserved, deducted: RefundPayment(
                order_id=reserved.order_id,
                customer=reserved.customer,
                amount=deducted.amount if deducted else reserved.amount,
            ),
        ),
        Step(
            "shipping",
            on=PaymentDeducted,
            done=ShipmentScheduled,
            compensation=CancelShipment,
            compensated=ShipmentCancelled,
            deadline=STEP_DEADLINE,
            service="shipping",
        ),
    ],
    # Compensations are re-issued until confirmed; short backoff keeps the demo brisk.
    compensation_retries=5,
    retry_backoff=1.0,
    retry_backoff_max=8.0,
)
