"""The in-memory store: the barrier's rules in one critical section, for the embedded
mode and tests. Retention is enforced lazily on access, like Redis's expiry."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from choreo.store.base import (
    APPLIED,
    DEFAULT_RETENTION_SECONDS,
    BarrierKey,
    BarrierOp,
    BarrierRecord,
    BarrierResult,
    Commit,
    Decision,
    Effect,
    Status,
    Store,
    plan_effects,
)

# A barrier record's place: (gid, step, op).
_Slot = tuple[str, str, BarrierOp]
# Each op's sibling: the other op of the same step.
_SIBLING: dict[BarrierOp, BarrierOp] = {"action": "compensate", "compensate": "action"}
# The check's usual answer, shared: results are immutable, and one is built per record.
_RUN = BarrierResult(Decision.RUN)


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
        # Keyed by the (gid, step, op) tuple, not the BarrierKey: a tuple hashes in C,
        # a BarrierKey in its generated Python __hash__, several times per record.
        self._barrier: dict[_Slot, tuple[BarrierRecord, float]] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _record(self, slot: _Slot) -> BarrierRecord | None:
        entry = self._barrier.get(slot)
        if entry is None:
            return None
        record, expires = entry
        if expires <= self._clock():
            del self._barrier[slot]
            return None
        return record

    def _write(self, key: BarrierKey, status: Status, outputs: bytes) -> None:
        record = BarrierRecord(key, status, outputs)
        self._barrier[key.gid, key.step, key.op] = (record, self._clock() + self.retention_seconds)

    def _check(self, key: BarrierKey) -> BarrierResult:
        own = self._record((key.gid, key.step, key.op))
        if own is not None:
            return BarrierResult(Decision.DUPLICATE, own.outputs)
        sibling = self._record((key.gid, key.step, _SIBLING[key.op]))
        if key.op == "action" and sibling is not None:
            return BarrierResult(Decision.HANGING)
        if key.op == "compensate" and (sibling is None or sibling.status != "done"):
            return BarrierResult(Decision.NULL_COMPENSATION)
        return _RUN

    async def check_many(self, keys: Sequence[BarrierKey]) -> list[BarrierResult]:
        return [self._check(key) for key in keys]

    def _plan(self, effects: Sequence[Effect]) -> dict[str, str | None] | str:
        """The effects planned on this store's values (see ``plan_effects``)."""
        return plan_effects(effects, self._data.get)

    def _store_values(self, planned: dict[str, str | None]) -> None:
        for key, value in planned.items():
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value

    def _commit(self, commit: Commit) -> BarrierResult:
        key = commit.key
        own = self._record((key.gid, key.step, key.op))
        if own is not None:
            return BarrierResult(Decision.DUPLICATE, own.outputs)
        sibling = self._record((key.gid, key.step, _SIBLING[key.op]))
        if key.op == "action":
            if sibling is not None:
                return BarrierResult(Decision.HANGING)
            if commit.status == "failed":
                self._write(key, "failed", commit.outputs)
                return BarrierResult(Decision.FAILED, commit.outputs)
        else:
            if sibling is None or sibling.status != "done":
                self._write(key, "done", commit.null_outputs)
                return BarrierResult(Decision.NULL_COMPENSATION, commit.null_outputs)
            if not commit.handler_ran:
                return BarrierResult(Decision.RUN)
        if commit.effects:  # most commits have none: nothing to plan or store
            try:
                planned = self._plan(commit.effects)
            except ValueError as exc:
                return BarrierResult(Decision.INVALID, detail=str(exc))
            if isinstance(planned, str):
                return BarrierResult(Decision.REJECTED, detail=planned)
            self._store_values(planned)
        self._write(key, "done", commit.outputs)
        return BarrierResult(APPLIED, commit.outputs)

    async def commit_many(self, commits: Sequence[Commit]) -> list[BarrierResult]:
        # No await inside: the batch is one critical section of the event loop.
        return [self._commit(commit) for commit in commits]

    async def records(self, gid: str) -> list[BarrierRecord]:
        slots = [slot for slot in list(self._barrier) if slot[0] == gid]
        found = (self._record(slot) for slot in slots)
        return [record for record in found if record is not None]

    async def get(self, key: str) -> str | None:
        return self._data.get(key)

    async def apply(self, effects: Sequence[Effect]) -> str:
        planned = self._plan(effects)
        if isinstance(planned, str):
            return planned
        self._store_values(planned)
        return ""
