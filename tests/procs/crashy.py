"""A service run as a real subprocess by test_crash_recovery, which SIGKILLs it while it
stalls at one point of a batch.

Environment:
- ``CRASHY_TOPIC``: the topic of its orders (its outputs go to ``<topic>.out``), so each
  test reads only its own records.
- ``CRASHY_GROUP``: its consumer group.
- ``CRASHY_STORE_URL``: a Redis URL; the service then uses a ``StallingStore`` on it
  (started and stopped in its lifespan) and needs no ``--store``.
- ``CRASHY_PAUSE_FILE`` and ``CRASHY_STALL``: where to stall, writing the pause file (JSON)
  when the stall begins; without a pause file it never stalls.
  - ``after-handle`` (the default): after a batch's effects are recorded and its outgoing
    events acknowledged, before the offset commit (a middleware's ``after_handle``).
  - ``before-store-commit``: the batch's handlers ran, nothing is recorded yet.
  - ``after-store-commit``: the batch's effects and outbox are recorded, nothing is sent.
  The store stalls every ``commit_many`` once the first one stalled, so no batch gets
  further than the stall point.
  - ``acks-pending``: the first batch with outputs is recorded, its send never starts,
    and the partition's next batches are prepared and sent meanwhile (``CRASHY_BATCH``
    records a batch). Run as ``python -m tests.procs.crashy`` with ``CRASHY_BROKER``:
    the stalling transport is the process's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from choreo import Context, Event, Middleware, Service
from choreo.events import Message
from choreo.handlers import Handler
from choreo.store.base import (
    BarrierKey,
    BarrierRecord,
    BarrierResult,
    Commit,
    Decision,
    Effect,
    Store,
)
from choreo.store.redis import RedisStore
from choreo.transport.base import Delivered, OutgoingRecord
from choreo.transport.kafka import KafkaTransport
from tests.procs.own_transport import serve

STALLS = ("after-handle", "before-store-commit", "after-store-commit", "acks-pending")
TOPIC = os.environ.get("CRASHY_TOPIC", "test.crashy")


class CrashyOrder(Event, topic=TOPIC):
    order_id: str
    sku: str
    qty: int


class CrashyReserved(Event, topic=f"{TOPIC}.out"):
    order_id: str
    sku: str
    qty: int


def _mark(marker: Path, data: dict[str, object]) -> None:
    """Write the pause file whole (the test reads it as soon as it appears)."""
    partial = marker.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    os.replace(partial, marker)


class StallAfterEffect(Middleware):
    def __init__(self, marker: Path | None) -> None:
        self.marker = marker

    async def after_handle(self, message: Message, handler: Handler, decision: Decision) -> None:
        if self.marker is not None and not self.marker.exists():
            _mark(self.marker, {"gids": [message.gid], "decision": decision.value})
            await asyncio.sleep(3600)  # the test kills us here, before the offset commit


class StallingStore(Store):
    """A RedisStore whose ``commit_many`` stalls before or after delegating."""

    def __init__(self, url: str, stall: str | None, marker: Path | None) -> None:
        self.inner = RedisStore(url)
        self.url = url
        self.retention_seconds = self.inner.retention_seconds
        self.stall = stall if marker is not None else None
        self.marker = marker

    async def _pause(self, commits: Sequence[Commit]) -> None:
        assert self.marker is not None
        if not self.marker.exists():
            _mark(self.marker, {"gids": [c.key.gid for c in commits], "stall": self.stall})
        await asyncio.sleep(3600)  # the test kills us here

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def check_many(self, keys: Sequence[BarrierKey]) -> list[BarrierResult]:
        return await self.inner.check_many(keys)

    async def commit_many(self, commits: Sequence[Commit]) -> list[BarrierResult]:
        if self.stall == "before-store-commit":
            await self._pause(commits)
        results = await self.inner.commit_many(commits)
        if self.stall == "after-store-commit":
            await self._pause(commits)
        return results

    async def records(self, gid: str) -> list[BarrierRecord]:
        return await self.inner.records(gid)

    async def get(self, key: str) -> str | None:
        return await self.inner.get(key)

    async def apply(self, effects: Sequence[Effect]) -> str:
        return await self.inner.apply(effects)


class StallingSends(KafkaTransport):
    """A Kafka transport whose first send of outputs never starts (while a marker is
    given): the worker prepares and sends the partition's next batches meanwhile."""

    def __init__(self, url: str, marker: Path | None) -> None:
        super().__init__(url, partitions=4)
        self.marker = marker

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        outputs = [r for r in records if r.topic == CrashyReserved.topic]
        if outputs and self.marker is not None and not self.marker.exists():
            gids = [r.key.decode() for r in outputs if r.key is not None]
            _mark(self.marker, {"gids": gids, "stall": "acks-pending"})
            await asyncio.sleep(3600)  # the test kills us here
        return await super().send_many(records)


_pause = os.environ.get("CRASHY_PAUSE_FILE")
_marker = Path(_pause) if _pause else None
_stall = os.environ.get("CRASHY_STALL", "after-handle")
assert _stall in STALLS, _stall
_store_url = os.environ.get("CRASHY_STORE_URL")
_store = StallingStore(_store_url, _stall, _marker) if _store_url else None


@contextlib.asynccontextmanager
async def _lifespan(app: Service) -> AsyncIterator[None]:
    if _store is None:
        yield
        return
    async with _store:
        yield


app = Service(
    "crashy",
    group=os.environ.get("CRASHY_GROUP", "crashy"),
    broker=StallingSends(os.environ.get("CRASHY_BROKER", ""), _marker)
    if _stall == "acks-pending"
    else "memory://",
    store=_store if _store is not None else "memory://",
    batch_size=int(os.environ.get("CRASHY_BATCH", "500")),
    middleware=[StallAfterEffect(_marker if _stall == "after-handle" else None)],
    lifespan=_lifespan,
)


_first_call = [True]


@app.on_event(CrashyOrder, step="stock")
async def reserve(event: CrashyOrder, ctx: Context) -> CrashyReserved:
    if _stall == "acks-pending" and _first_call:
        _first_call.clear()
        await asyncio.sleep(0.2)  # the partition's next records are fetched meanwhile
    ctx.tx.incr(f"stock:{event.sku}", -event.qty, minimum=0)
    return CrashyReserved(order_id=event.order_id, sku=event.sku, qty=event.qty)


if __name__ == "__main__":  # the ``acks-pending`` run: the stalling transport is its own
    asyncio.run(serve(app))
