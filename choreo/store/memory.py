"""The in-memory store: the barrier's rules in one critical section, for the embedded
mode and tests. Retention is enforced lazily on access, like Redis's expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from choreo.store.base import (
    DEFAULT_RETENTION_SECONDS,
    BarrierKey,
    BarrierOp,
    BarrierRecord,
    BarrierResult,
    Decision,
    Delete,
    Effect,
    Incr,
    Put,
    Status,
    Store,
    guard_failure,
)


class MemoryStore(Store):
    def __init__(
        self,
        url: str = "memory://",
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.retention_seconds = retention_seconds
        self._clock = clock
        self._data: dict[str, str] = {}
        self._barrier: dict[BarrierKey, tuple[BarrierRecord, float]] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _record(self, key: BarrierKey) -> BarrierRecord | None:
        entry = self._barrier.get(key)
        if entry is None:
            return None
        record, expires = entry
        if expires <= self._clock():
            del self._barrier[key]
            return None
        return record

    def _write(self, key: BarrierKey, status: Status, outputs: bytes) -> None:
        record = BarrierRecord(key, status, outputs)
        self._barrier[key] = (record, self._clock() + self.retention_seconds)

    def _sibling(self, key: BarrierKey) -> BarrierRecord | None:
        other: BarrierOp = "compensate" if key.op == "action" else "action"
        return self._record(BarrierKey(key.gid, key.step, other))

    async def check(self, key: BarrierKey) -> BarrierResult:
        own = self._record(key)
        if own is not None:
            return BarrierResult(Decision.DUPLICATE, own.outputs)
        sibling = self._sibling(key)
        if key.op == "action" and sibling is not None:
            return BarrierResult(Decision.HANGING)
        if key.op == "compensate" and (sibling is None or sibling.status != "done"):
            return BarrierResult(Decision.NULL_COMPENSATION)
        return BarrierResult(Decision.RUN)

    def _refusal(self, effects: Sequence[Effect]) -> str:
        """Replay the effects on a scratch copy: guards see the running value, and a
        value that is no integer fails here, before anything is written."""
        scratch: dict[str, str | None] = {}  # only the keys the effects touch

        def value(key: str) -> str | None:
            return scratch[key] if key in scratch else self._data.get(key)

        for effect in effects:
            if isinstance(effect, Incr):
                current = int(value(effect.key) or "0")
                reason = guard_failure(effect, current)
                if reason:
                    return reason
                scratch[effect.key] = str(current + effect.delta)
            elif isinstance(effect, Put):
                scratch[effect.key] = effect.value
            else:
                scratch[effect.key] = None
        return ""

    def _apply(self, effects: Sequence[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Incr):
                self._data[effect.key] = str(int(self._data.get(effect.key, "0")) + effect.delta)
            elif isinstance(effect, Put):
                self._data[effect.key] = effect.value
            elif isinstance(effect, Delete):
                self._data.pop(effect.key, None)

    async def commit(
        self,
        key: BarrierKey,
        *,
        status: Status,
        outputs: bytes,
        effects: Sequence[Effect],
        null_outputs: bytes,
        handler_ran: bool,
    ) -> BarrierResult:
        async with self._lock:
            own = self._record(key)
            if own is not None:
                return BarrierResult(Decision.DUPLICATE, own.outputs)
            sibling = self._sibling(key)
            if key.op == "action":
                if sibling is not None:
                    return BarrierResult(Decision.HANGING)
                if status == "failed":
                    self._write(key, "failed", outputs)
                    return BarrierResult(Decision.FAILED, outputs)
            else:
                if sibling is None or sibling.status != "done":
                    self._write(key, "done", null_outputs)
                    return BarrierResult(Decision.NULL_COMPENSATION, null_outputs)
                if not handler_ran:
                    return BarrierResult(Decision.RUN)
            refusal = self._refusal(effects)
            if refusal:
                return BarrierResult(Decision.REJECTED, detail=refusal)
            self._apply(effects)
            self._write(key, "done", outputs)
            return BarrierResult(Decision.APPLIED, outputs)

    async def records(self, gid: str) -> list[BarrierRecord]:
        keys = [key for key in list(self._barrier) if key.gid == gid]
        found = (self._record(key) for key in keys)
        return [record for record in found if record is not None]

    async def get(self, key: str) -> str | None:
        return self._data.get(key)

    async def apply(self, effects: Sequence[Effect]) -> str:
        async with self._lock:
            refusal = self._refusal(effects)
            if not refusal:
                self._apply(effects)
            return refusal
