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

STALLS = ("after-handle", "before-store-commit", "after-store-commit")
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
    store=_store if _store is not None else "memory://",
    middleware=[StallAfterEffect(_marker if _stall == "after-handle" else None)],
    lifespan=_lifespan,
)


@app.on_event(CrashyOrder, step="stock")
async def reserve(event: CrashyOrder, ctx: Context) -> CrashyReserved:
    ctx.tx.incr(f"stock:{event.sku}", -event.qty, minimum=0)
    return CrashyReserved(order_id=event.order_id, sku=event.sku, qty=event.qty)
