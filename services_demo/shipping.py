"""The shipping service: books a carrier for a paid order and cancels the booking on
compensation.

``knobs.stall_rate`` makes the carrier leave some bookings unconfirmed: the shipment is
booked but no ShipmentScheduled is published (or, with ``stall_seconds``, only after the
step's deadline). Nothing in the services notices; the tracker's deadline does, and its
compensations cancel the booking, refund the payment and release the stock.
"""

from __future__ import annotations

import asyncio
import uuid

from choreo import Context, Service, Store
from services_demo.contract import (
    CancelShipment,
    PaymentDeducted,
    ShipmentCancelled,
    ShipmentScheduled,
    order_saga,
)
from services_demo.knobs import Knobs, service_urls


def shipment_key(order_id: str) -> str:
    return f"shipment:{order_id}"


async def shipment(store: Store, order_id: str) -> str | None:
    """The booked shipment's id, None when the order has none (never booked, or cancelled)."""
    return await store.get(shipment_key(order_id))


def build_app(knobs: Knobs, *, broker: str = "memory://", store: str = "memory://") -> Service:
    """The shipping service; ``knobs`` may leave bookings unconfirmed."""
    app = Service("shipping", broker=broker, store=store, contracts=[order_saga])

    @app.on_event(PaymentDeducted)
    async def schedule_shipment(event: PaymentDeducted, ctx: Context) -> ShipmentScheduled | None:
        # Derived from the gid, so a rerun after a crash books under the same id.
        shipment_id = "shp-" + uuid.uuid5(uuid.NAMESPACE_URL, f"shipment:{ctx.gid}").hex[:8]
        ctx.tx.put(shipment_key(event.order_id), shipment_id)
        scheduled = ShipmentScheduled(order_id=event.order_id, shipment_id=shipment_id)
        if not knobs.stalls(event.order_id):
            return scheduled
        if knobs.stall_seconds == 0:
            ctx.logger.info("carrier never confirmed %s (a demo knob)", shipment_id)
            return None
        # Holds this partition of the topic for the whole stall, as a slow call would.
        await asyncio.sleep(knobs.stall_seconds)
        return scheduled

    @app.on_event(CancelShipment)
    async def cancel_shipment(event: CancelShipment, ctx: Context) -> ShipmentCancelled:
        ctx.tx.delete(shipment_key(event.order_id))
        return ShipmentCancelled(order_id=event.order_id)

    return app


app = build_app(Knobs.from_env(), **service_urls())
