"""A service run as a real subprocess by test_crash_recovery.

With CRASHY_PAUSE_FILE set, after the first handled event's effect is recorded and its
outgoing event acknowledged, it writes that file and stalls before the offset commit,
so the test can SIGKILL it in exactly that window.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from choreo import Context, Middleware, Service
from choreo.events import Message
from choreo.handlers import Handler
from choreo.store.base import Decision
from tests.scenarios.shop import SHOP_EVENTS, OrderPlaced, StockReserved


class StallAfterEffect(Middleware):
    def __init__(self, marker: Path | None) -> None:
        self.marker = marker

    async def after_handle(self, message: Message, handler: Handler, decision: Decision) -> None:
        if self.marker is not None and not self.marker.exists():
            self.marker.write_text(f"{message.gid} {decision.value}\n")
            await asyncio.sleep(3600)  # the test kills us here, before the commit


_pause = os.environ.get("CRASHY_PAUSE_FILE")
app = Service(
    "crashy",
    group=os.environ.get("CRASHY_GROUP", "crashy"),
    middleware=[StallAfterEffect(Path(_pause) if _pause else None)],
)
app.register_events(*SHOP_EVENTS)


@app.on_event(OrderPlaced, step="stock")
async def reserve(event: OrderPlaced, ctx: Context) -> StockReserved:
    ctx.tx.incr(f"stock:{event.sku}", -event.qty, minimum=0)
    return StockReserved(order_id=event.order_id, sku=event.sku, qty=event.qty, amount=event.amount)
