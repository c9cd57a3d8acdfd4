"""The service of tests/test_otlp_export.py, for ``choreo run`` on ``memory://``: as it
starts it publishes one ``OtlpOrder`` per gid in ``OTLP_TEST_GIDS`` (comma-separated)
to its own in-process broker, handles each (printing ``handled GID``) and prints the
class of the global tracer provider it runs under (``provider NAME``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from opentelemetry import trace

from choreo import Context, Event, Service


class OtlpOrder(Event, type="otlp.Order", topic="otlp.orders"):
    n: int


class OtlpDone(Event, type="otlp.Done", topic="otlp.done"):
    n: int


@contextlib.asynccontextmanager
async def _lifespan(app: Service) -> AsyncIterator[None]:
    print(f"provider {type(trace.get_tracer_provider()).__name__}", flush=True)
    gids = [g for g in os.environ.get("OTLP_TEST_GIDS", "").split(",") if g]
    for n, gid in enumerate(gids):
        await app.publish(OtlpOrder(n=n), gid=gid, saga="otlp")
    yield


app = Service("otlp-shop", broker="memory://", store="memory://", lifespan=_lifespan)


@app.on_event(OtlpOrder, step="order")
async def take_order(event: OtlpOrder, ctx: Context) -> OtlpDone:
    print(f"handled {ctx.gid}", flush=True)
    return OtlpDone(n=event.n)
