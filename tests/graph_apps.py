"""Services and contracts for ``choreo graph`` tests: a clean choreography, and a broken
one with one problem of each kind the lint knows."""

from __future__ import annotations

from choreo import Event, Service
from choreo.saga import SagaContract, Step


class OrderEvent(Event, topic="graph.orders"):
    order_id: str


class Placed(OrderEvent): ...


class Reserved(OrderEvent): ...


class Rejected(OrderEvent): ...


class Release(OrderEvent): ...


class Released(OrderEvent): ...


class Charged(OrderEvent): ...


class Declined(OrderEvent): ...


class Refund(OrderEvent): ...


class Refunded(OrderEvent): ...


order = SagaContract(
    "order",
    start=Placed,
    steps=[
        Step("stock", on=Placed, done=Reserved, failed=Rejected, compensation=Release,
             compensated=Released, service="inventory"),
        Step("payment", on=Reserved, done=Charged, failed=Declined, compensation=Refund,
             compensated=Refunded, service="payment"),
    ],
)  # fmt: skip

inventory = Service("inventory", contracts=[order])
payment = Service("payment", contracts=[order])


@inventory.on_event(Placed)
async def reserve(event: Placed) -> Reserved | Rejected:
    return Reserved(order_id=event.order_id)


@inventory.on_event(Release)
async def release(event: Release) -> Released:
    return Released(order_id=event.order_id)


@payment.on_event(Reserved)
async def charge(event: Reserved) -> Charged | Declined:
    return Charged(order_id=event.order_id)


@payment.on_event(Refund)
async def refund(event: Refund) -> Refunded:
    return Refunded(order_id=event.order_id)


# -- broken: a cycle, a handler that can never run, an unconsumed event, a step whose
# service lacks its compensation handler, and a step without compensation.


class Ping(Event, topic="graph.echo"):
    n: int


class Pong(Event, topic="graph.echo"):
    n: int


class Shouted(Event, topic="graph.echo"):
    n: int


class Audited(Event, topic="graph.echo"):
    n: int


class Shipped(OrderEvent): ...


class CancelShipment(OrderEvent): ...


class ShipmentCancelled(OrderEvent): ...


class Notified(OrderEvent): ...


shipping_saga = SagaContract(
    "shipping",
    start=Charged,
    steps=[
        Step("ship", on=Charged, done=Shipped, compensation=CancelShipment,
             compensated=ShipmentCancelled, service="shipping"),
        Step("notify", on=Shipped, done=Notified, service="shipping"),
    ],
)  # fmt: skip

echo = Service("echo")
shipping = Service("shipping", contracts=[shipping_saga])


@echo.on_event(Ping)
async def ping(event: Ping) -> Pong | Shouted:
    return Pong(n=event.n)


@echo.on_event(Pong)
async def pong(event: Pong) -> Ping:
    return Ping(n=event.n + 1)


@echo.on_event(Audited)
async def audit(event: Audited) -> None:
    return None


@shipping.on_event(Charged)
async def ship(event: Charged) -> Shipped:
    return Shipped(order_id=event.order_id)


@shipping.on_event(Shipped)
async def notify(event: Shipped) -> Notified:
    return Notified(order_id=event.order_id)


# -- compensation data the lint reports: a field only the done event carries (none if the
# step times out) and one that both the trigger and the done event carry (which wins).


class Pack(OrderEvent):
    parcels: int


class Packed(OrderEvent):
    parcels: int
    label: str


class Unpack(OrderEvent):
    parcels: int
    label: str


class Unpacked(OrderEvent): ...


parcels = SagaContract(
    "parcels",
    start=Pack,
    steps=[Step("pack", on=Pack, done=Packed, compensation=Unpack, compensated=Unpacked)],
)
