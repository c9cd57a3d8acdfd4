"""The store: DTM's sub-transaction barrier plus the key-value effects it guards.

A barrier record exists per ``(gid, step, op)``. The dispatcher asks ``check`` before it
runs a handler and ``commit`` after: ``commit`` re-checks, verifies the guards of the
handler's effects, applies them and writes the record in one atomic step (one Lua script
on Redis, one critical section in memory). The record also keeps the handler's outgoing
events, so a redelivery after a crash re-publishes exactly what the first run produced
instead of losing it or running the handler twice.

Outcomes, as DTM names them:

- duplicate: the record for this op exists; re-publish its outputs.
- hanging: an action arrives after its compensation; it must not run.
- null compensation: a compensation whose action never ran (or failed); it is recorded,
  so the late action is recognised as hanging, and confirmed without running.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from choreo.values import value_type

BarrierOp = Literal["action", "compensate"]
Status = Literal["done", "failed"]

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600


@value_type
class BarrierKey:
    gid: str
    step: str
    op: BarrierOp

    def __str__(self) -> str:
        return f"{self.gid}/{self.step}/{self.op}"


@dataclass(frozen=True, slots=True)
class Incr:
    """Add ``delta`` to an integer key; refuse (atomically) if the result leaves
    [minimum, maximum]."""

    key: str
    delta: int
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


Effect = Incr | Put | Delete


class Decision(enum.Enum):
    RUN = "run"  # nothing recorded yet: run the handler
    APPLIED = "applied"
    FAILED = "failed"  # a business failure was recorded
    DUPLICATE = "duplicate"
    HANGING = "hanging"
    NULL_COMPENSATION = "null_compensation"
    REJECTED = "rejected"  # a guard refused the effects; nothing was written
    INVALID = "invalid"  # the effects cannot apply to the stored data (a value that is
    # no integer, a number out of range); nothing was written, ``detail`` says why


# Decision's members as plain module names, for the code that reads them per record: on
# Python 3.11 ``Decision.X`` goes through EnumType's attribute machinery, about 1k
# instructions, several times a record.
RUN = Decision.RUN
APPLIED = Decision.APPLIED
FAILED = Decision.FAILED
DUPLICATE = Decision.DUPLICATE
HANGING = Decision.HANGING
NULL_COMPENSATION = Decision.NULL_COMPENSATION
INVALID = Decision.INVALID


@value_type
class BarrierResult:
    decision: Decision
    outputs: bytes = b""
    detail: str = ""


@value_type
class Commit:
    """One barrier commit, as the dispatcher asks for it (see ``Store.commit_many``)."""

    key: BarrierKey
    status: Status
    outputs: bytes
    effects: Sequence[Effect] = ()
    null_outputs: bytes = b""
    handler_ran: bool = True


@dataclass(frozen=True, slots=True)
class BarrierRecord:
    key: BarrierKey
    status: Status
    outputs: bytes


@dataclass
class Transaction:
    """Effects a handler asks for; applied only together with its barrier record."""

    effects: list[Effect] = field(default_factory=list)

    def incr(
        self, key: str, delta: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> None:
        self.effects.append(Incr(key, delta, minimum, maximum))

    def put(self, key: str, value: str) -> None:
        self.effects.append(Put(key, value))

    def delete(self, key: str) -> None:
        self.effects.append(Delete(key))


# The integers every store can hold exactly: Redis's scripts compute in doubles.
SAFE_INTEGER = 2**53 - 1
_STORED_INT = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)


def stored_int(key: str, raw: str | None) -> int:
    """A stored value read as an ``Incr`` reads it, the same on every store: absent is 0;
    otherwise optional spaces, a sign and ASCII digits, within +-SAFE_INTEGER.
    Anything else raises ``ValueError`` naming the key and the value."""
    if raw is None:
        return 0
    if not _STORED_INT.fullmatch(raw):
        raise ValueError(f"invalid literal for int(): {key} holds {raw}")
    value = int(raw)
    if abs(value) > SAFE_INTEGER:
        raise ValueError(f"{key} holds {raw}, outside the store's safe integer range")
    return value


def guard_failure(effect: Incr, current: int) -> str:
    result = current + effect.delta
    if effect.minimum is not None and result < effect.minimum:
        return f"{effect.key} would become {result}, below its minimum {effect.minimum}"
    if effect.maximum is not None and result > effect.maximum:
        return f"{effect.key} would become {result}, above its maximum {effect.maximum}"
    return ""


def plan_effects(
    effects: Sequence[Effect], read: Callable[[str], str | None]
) -> dict[str, str | None] | str:
    """Replay effects on an overlay of the keys they touch, ``read`` giving the stored
    values: guards see the running value, and a value that is no integer raises
    ``ValueError`` before anything is written. Returns the new values (None: delete), or
    the first guard's refusal."""
    planned: dict[str, str | None] = {}
    for effect in effects:
        if isinstance(effect, Incr):
            seen = planned[effect.key] if effect.key in planned else read(effect.key)
            current = stored_int(effect.key, seen)
            reason = guard_failure(effect, current)
            if reason:
                return reason
            planned[effect.key] = str(current + effect.delta)
        elif isinstance(effect, Put):
            planned[effect.key] = effect.value
        else:
            planned[effect.key] = None
    return planned


class Store(abc.ABC):
    """Barrier records and plain key-value data in one place, so both change atomically."""

    url: str
    retention_seconds: int
    # True when the store, once started, found itself empty of choreo's bookkeeping: new,
    # or emptied (see Service.running). ``accept_empty`` allows starting on it anyway.
    fresh: bool = False
    accept_empty: bool = False

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def check_many(self, keys: Sequence[BarrierKey]) -> list[BarrierResult]:
        """Read-only, one round trip for a batch: per key RUN, DUPLICATE (with outputs),
        HANGING or NULL_COMPENSATION."""

    @abc.abstractmethod
    async def commit_many(self, commits: Sequence[Commit]) -> list[BarrierResult]:
        """Apply a batch of commits in order, in one round trip, each exactly as if
        committed alone (a commit sees the records and values the earlier ones wrote).

        Per commit, atomically: re-check and record.
        action: HANGING if compensated; DUPLICATE if recorded; status failed -> record,
        FAILED; a guard refuses -> REJECTED (nothing written); else apply, APPLIED.
        compensate: DUPLICATE if recorded; the action absent or failed -> record
        ``null_outputs``, NULL_COMPENSATION; the action done but ``handler_ran`` false ->
        RUN (nothing written: run the handler, then commit again); else apply, APPLIED.
        Effects that cannot apply to the stored data give INVALID (nothing written) and
        the batch goes on. APPLIED, FAILED and NULL_COMPENSATION carry the outputs
        recorded, DUPLICATE the outputs recorded earlier.

        An infrastructure failure raises ``TransportError``: a prefix of the batch may
        then be recorded, which a retry of the batch sees as DUPLICATE.
        """

    async def check(self, key: BarrierKey) -> BarrierResult:
        return (await self.check_many([key]))[0]

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
        """One commit (see ``commit_many``); INVALID raises ``ValueError``."""
        commit = Commit(key, status, outputs, effects, null_outputs, handler_ran)
        result = (await self.commit_many([commit]))[0]
        if result.decision is Decision.INVALID:
            raise ValueError(result.detail)
        return result

    @abc.abstractmethod
    async def records(self, gid: str) -> list[BarrierRecord]:
        """Every barrier record of a saga (for `choreo saga why`)."""

    @abc.abstractmethod
    async def get(self, key: str) -> str | None: ...

    async def get_int(self, key: str, default: int = 0) -> int:
        value = await self.get(key)
        return default if value is None else int(value)

    @abc.abstractmethod
    async def apply(self, effects: Sequence[Effect]) -> str:
        """Apply effects atomically outside any barrier (seeding data); returns the
        guard failure, or "" when applied."""

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class StoreTransaction(abc.ABC):
    """One open transaction of a store whose barrier lives in the user's own database
    (``TransactionalStore``). The dispatcher claims the barrier records of a wave (keys of
    distinct (gid, step)), runs the claimed jobs' handlers with ``db`` (their SQL in the
    same transaction, under a savepoint per job), applies their effects, and records them
    all; everything commits together when the transaction ends."""

    db: Any  # what the handler gets as ``ctx.db``
    # Set when one of the transaction's own statements failed (the database went away):
    # the error the dispatcher raises instead of blaming the handler.
    broken: Exception | None = None

    @abc.abstractmethod
    async def claim_many(
        self, keys: Sequence[BarrierKey], null_outputs: Sequence[bytes]
    ) -> list[BarrierResult]:
        """Take the records of ``keys`` (distinct (gid, step) pairs), waiting for
        concurrent holders (the unique key serializes deliveries). Per key: RUN (it is
        ours: run the handler, then ``finish_many``), or final: DUPLICATE (with the outputs
        recorded), HANGING, or NULL_COMPENSATION (recorded now with its null outputs)."""

    @abc.abstractmethod
    async def savepoint(self) -> None:
        """A savepoint before the next job's handler (its SQL and effects)."""

    @abc.abstractmethod
    async def rollback(self) -> None:
        """Undo everything since the last ``savepoint`` (the claim stays)."""

    @abc.abstractmethod
    def attempt(self) -> contextlib.AbstractAsyncContextManager[None]:
        """A savepoint around one handler attempt: an exception rolls its SQL back."""

    @abc.abstractmethod
    async def apply(self, commit: Commit) -> BarrierResult | None:
        """Apply a claimed commit's effects: None when applied, else REJECTED or INVALID
        with nothing written."""

    @abc.abstractmethod
    async def finish_many(
        self, commits: Sequence[Commit], drop: Sequence[BarrierKey] = ()
    ) -> list[BarrierResult]:
        """Record claimed commits (FAILED or APPLIED each, effects already applied) and
        release the claims of ``drop`` (jobs that were dead-lettered: nothing recorded)."""


class StoreSession(abc.ABC):
    """One connection of a ``TransactionalStore``, held for a wave: its check and its
    transactions one after another, without going back to the pool in between."""

    @abc.abstractmethod
    async def check_many(self, keys: Sequence[BarrierKey]) -> list[BarrierResult]:
        """As ``Store.check_many``."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[StoreTransaction]:
        """An open transaction, committed when the block ends without an exception."""


class TransactionalStore(Store):
    """A store whose barrier shares a transaction with the handler's own SQL."""

    @abc.abstractmethod
    def session(self) -> contextlib.AbstractAsyncContextManager[StoreSession]:
        """A connection held until the block ends."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[StoreTransaction]:
        """An open transaction, committed when the block ends without an exception."""
