"""The Redis store: the barrier's rules in one Lua script per call, so the re-check, the
guards, the effects and the record change together or not at all.

Layout (``prefix`` defaults to ``choreo``; the gid is a hash tag):

- ``{prefix}:saga:{<gid>}``: one hash per saga holding all its barrier records, fields
  ``s:<step>:<op>`` (the status) and ``o:<step>:<op>`` (the outputs); it expires
  ``retention_seconds`` after the saga's last record was written. One key per saga
  keeps the commands per commit to five (HMGET, the effects, HSET, EXPIRE) and
  ``records(gid)`` to one HGETALL.
- ``{prefix}:epoch``: the store's epoch (see ``start``); ``{prefix}:layout``: until when
  records of the layout before may still exist (see ``start``).
- user data keys are used exactly as the handler names them (no prefix, no expiry).

Counters are computed by Lua, whose numbers are doubles: every value, delta and bound an
``Incr`` touches must stay within +-(2**53 - 1), or the call raises ``ValueError`` with
nothing written. A value that is not an integer also raises ``ValueError``, as in memory.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from choreo.errors import ConfigurationError, StoreLost, TransportError
from choreo.redact import redact_url
from choreo.store.base import (
    APPLIED,
    DEFAULT_RETENTION_SECONDS,
    FAILED,
    SAFE_INTEGER,
    BarrierKey,
    BarrierRecord,
    BarrierResult,
    Commit,
    Decision,
    Delete,
    Effect,
    Incr,
    Put,
    Store,
    guard_failure,
)
from choreo.store.coalesce import Coalesced
from choreo.store.redis_scripts import (
    APPLY_LUA,
    CHECK_MANY_LUA,
    COMMIT_MANY_LUA,
    EPOCH_ERROR,
    VALUE_ERROR,
)

CONNECT_TIMEOUT_SECONDS = 5.0

# How long after the first start of this layout's code on a store in use its records of
# the layout before are still read: the retention of the last of them, written by an old
# instance still running during a rolling upgrade, plus the upgrade itself (a day).
LAYOUT_UPGRADE_SECONDS = 24 * 3600


# The scripts' decisions, by their reply bytes: a dict lookup per record where
# ``Decision(raw.decode())`` runs Enum's lookup in Python (5k instructions against 0.6k).
_DECISIONS = {decision.value.encode(): decision for decision in Decision}


def _decision(raw: bytes) -> Decision:
    decision = _DECISIONS.get(raw)
    # Anything else raises Enum's ValueError, as it always did.
    return decision if decision is not None else Decision(raw.decode())


# A check's answers without outputs (RUN above all), one shared object each: results are
# immutable, and building one costs more than looking it up.
_BARE_RESULTS = {raw: BarrierResult(decision) for raw, decision in _DECISIONS.items()}


def _check_result(raw: bytes, outputs: bytes) -> BarrierResult:
    if not outputs:
        shared = _BARE_RESULTS.get(raw)
        if shared is not None:
            return shared
    return BarrierResult(_decision(raw), outputs)


def _encode_effects(effects: Sequence[Effect]) -> list[list[str | int]]:
    """Effects as the scripts take them: ``[kind, key, a, b, c]`` each."""
    encoded: list[list[str | int]] = []
    for effect in effects:
        if isinstance(effect, Incr):
            for number in (effect.delta, effect.minimum, effect.maximum):
                if number is not None and abs(number) > SAFE_INTEGER:
                    raise ValueError(
                        f"{effect.key}: {number} is outside the store's safe integer range"
                    )
            encoded.append(
                [
                    "incr",
                    effect.key,
                    effect.delta,
                    "" if effect.minimum is None else effect.minimum,
                    "" if effect.maximum is None else effect.maximum,
                ]
            )
        elif isinstance(effect, Put):
            encoded.append(["put", effect.key, effect.value, "", ""])
        elif isinstance(effect, Delete):
            encoded.append(["del", effect.key, "", "", ""])
        else:  # pragma: no cover - Effect is a closed union
            raise TypeError(f"unknown effect {effect!r}")
    return encoded


@contextmanager
def _store_errors(url: str) -> Iterator[None]:
    """Redis's connection trouble becomes TransportError (retriable); a script's refusal
    to do arithmetic on a non-integer becomes ValueError, as ``int()`` raises in memory."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise TransportError(f"redis store {redact_url(url)} did not answer: {exc}") from exc
    except ResponseError as exc:
        message = str(exc)
        if VALUE_ERROR in message:
            raise ValueError(message.split(VALUE_ERROR, 1)[1].strip()) from exc
        if EPOCH_ERROR in message:
            raise StoreLost(
                f"redis store {redact_url(url)}: {message.split(EPOCH_ERROR, 1)[1].strip()}; "
                "its barrier records are lost, so redelivered records would run again. "
                "Restore it from its AOF/RDB files (docs/delivery.md, 'The store must not forget')"
            ) from exc
        # Any other refusal (out of memory, a busy script, a read-only replica) is the
        # server's state, not the record's: retriable, like a connection failure.
        raise TransportError(f"redis store {redact_url(url)} refused: {exc}") from exc


class RedisStore(Store):
    def __init__(
        self,
        url: str,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
        key_prefix: str = "choreo",
        accept_empty: bool = False,
    ) -> None:
        """``accept_empty``: start even when the store is empty while the service's consumer
        group has already committed offsets (you emptied it on purpose)."""
        if retention_seconds < 1:
            raise ConfigurationError("retention_seconds must be at least 1 on Redis")
        self.url = url
        self.retention_seconds = retention_seconds
        self.key_prefix = key_prefix
        self.accept_empty = accept_empty
        self._redis: aioredis.Redis | None = None
        self._commit_script: AsyncScript | None = None
        self._apply_script: AsyncScript | None = None
        self._check_script: AsyncScript | None = None
        # The store's epoch: written once into an empty store and checked by every
        # commit, so a store that forgot everything is noticed instead of trusted.
        self.epoch = ""
        self.fresh = False  # True when this client found no epoch: a new (or emptied) store
        # Until when records of the layout before this one may exist (unix seconds; 0 on
        # a store this layout started): until then a record not found is looked up there.
        self.legacy_until = 0.0
        self._saga_prefix = f"{key_prefix}:saga:{{"
        # The lanes' checks, and their commits, made in one turn: one script call each.
        self._checks: Coalesced[list[str], tuple[bytes, bytes]] = Coalesced(self._check_now)
        self._commits: Coalesced[list[object], tuple[bytes, bytes, bytes]] = Coalesced(
            self._commit_now
        )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._redis is not None:
            return
        client = aioredis.from_url(
            self.url, decode_responses=False, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
        try:
            await client.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            await client.aclose()
            raise TransportError(
                f"cannot reach the redis store at {redact_url(self.url)}: {exc}"
            ) from exc
        except BaseException:
            await client.aclose()
            raise
        try:
            self.fresh = bool(await client.set(self.epoch_key, uuid.uuid4().hex, nx=True))
            self.epoch = _text(await client.get(self.epoch_key) or b"")
            # The first start of this layout on a store decides, once for all its clients:
            # an empty store has no records of the layout before; a store in use may have
            # them until the last of them expires.
            window = self.retention_seconds + LAYOUT_UPGRADE_SECONDS
            until = 0 if self.fresh else int(time.time()) + window
            await client.set(self.layout_key, str(until), nx=True)
            self.legacy_until = _seconds(await client.get(self.layout_key))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            await client.aclose()
            raise TransportError(
                f"cannot reach the redis store at {redact_url(self.url)}: {exc}"
            ) from exc
        self._redis = client
        self._commit_script = client.register_script(COMMIT_MANY_LUA)
        self._apply_script = client.register_script(APPLY_LUA)
        self._check_script = client.register_script(CHECK_MANY_LUA)

    async def stop(self) -> None:
        client, self._redis = self._redis, None
        self._commit_script = self._apply_script = self._check_script = None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> aioredis.Redis:
        """The underlying redis-py client (for tests and tooling)."""
        if self._redis is None:
            raise ConfigurationError("RedisStore used before start()")
        return self._redis

    @staticmethod
    def _script(script: AsyncScript | None) -> AsyncScript:
        if script is None:
            raise ConfigurationError("RedisStore used before start()")
        return script

    # -- keys ------------------------------------------------------------------------

    @property
    def epoch_key(self) -> str:
        return f"{self.key_prefix}:epoch"

    @property
    def layout_key(self) -> str:
        return f"{self.key_prefix}:layout"

    def saga_key(self, gid: str) -> str:
        """The hash holding every barrier record of saga ``gid``."""
        return self._saga_prefix + gid + "}"

    def _legacy(self) -> bool:
        """Whether records of the layout before may still exist."""
        return time.time() < self.legacy_until

    def _legacy_prefix(self, key: BarrierKey) -> str:
        """The layout before's record key of ``key`` without the op (the scripts add it
        for the record and its sibling)."""
        return f"{self.key_prefix}:barrier:{{{key.gid}}}:{key.step}:"

    def _legacy_index_key(self, gid: str) -> str:
        return f"{self.key_prefix}:barrier-index:{{{gid}}}"

    # -- barrier ---------------------------------------------------------------------

    async def check_many(self, keys: Sequence[BarrierKey]) -> list[BarrierResult]:
        if not keys:
            return []
        saga, legacy = self._saga_prefix, self._legacy()
        checks = [
            [saga + key.gid + "}", key.step, key.op, self._legacy_prefix(key) if legacy else ""]
            for key in keys
        ]
        return [_check_result(*answer) for answer in await self._checks(checks)]

    async def _check_now(self, checks: list[list[str]]) -> list[tuple[bytes, bytes]]:
        script = self._script(self._check_script)
        with _store_errors(self.url):
            reply = _unpack(await script(args=[_pack(checks)]))
        return [(reply[i], reply[i + 1]) for i in range(0, 2 * len(checks), 2)]

    async def commit_many(self, commits: Sequence[Commit]) -> list[BarrierResult]:
        if not commits:
            return []
        # Effects that cannot even be encoded are INVALID without a round trip; the
        # others still go in one call, their order kept.
        invalid: dict[int, str] = {}
        batch: list[list[object]] = []
        saga, legacy = self._saga_prefix, self._legacy()
        for index, commit in enumerate(commits):
            try:  # no call for a commit without effects, the common case
                effects = _encode_effects(commit.effects) if commit.effects else []
            except ValueError as exc:
                invalid[index] = str(exc)
                continue
            key = commit.key
            batch.append(
                [
                    saga + key.gid + "}",
                    key.step,
                    key.op,
                    self._legacy_prefix(key) if legacy else "",
                    commit.status,
                    commit.outputs,
                    commit.null_outputs,
                    1 if commit.handler_ran else 0,
                    effects,
                ]
            )
        if not batch:  # every commit refused: no round trip
            return [BarrierResult(Decision.INVALID, detail=detail) for detail in invalid.values()]
        answers = iter(await self._commits(batch))
        # Each commit's result in its place: the script's answers for the sent ones, in
        # order, the refusals for the rest (one result built per commit).
        results: list[BarrierResult] = []
        for index, commit in enumerate(commits):
            detail = invalid.get(index)
            if detail is None:
                results.append(_commit_result(commit, next(answers)))
            else:
                results.append(BarrierResult(Decision.INVALID, detail=detail))
        return results

    async def _commit_now(self, batch: list[list[object]]) -> list[tuple[bytes, bytes, bytes]]:
        script = self._script(self._commit_script)
        packed = _pack([self.retention_seconds, batch, self.epoch_key, self.epoch])
        with _store_errors(self.url):
            reply = _unpack(await script(args=[packed]))
        return [(reply[i], reply[i + 1], reply[i + 2]) for i in range(0, 3 * len(batch), 3)]

    async def records(self, gid: str) -> list[BarrierRecord]:
        with _store_errors(self.url):
            # bytes both (decode_responses is off), whatever redis-py's types allow
            fields: dict[Any, Any] = await self.client.hgetall(self.saga_key(gid))
            found: dict[BarrierKey, BarrierRecord] = {}
            for name, status in fields.items():
                key = _barrier_key(gid, name[2:]) if name.startswith(b"s:") else None
                if key is not None:
                    found[key] = _record(key, status, fields.get(b"o:" + name[2:]))
            if self._legacy():
                for record in await self._legacy_records(gid):
                    found.setdefault(record.key, record)
        return sorted(found.values(), key=lambda r: (r.key.step, r.key.op))

    async def _legacy_records(self, gid: str) -> list[BarrierRecord]:
        """Saga ``gid``'s records in the layout before: a hash per record, named by a
        set per saga."""
        members = await self.client.smembers(self._legacy_index_key(gid))
        keys = [key for member in members if (key := _barrier_key(gid, member))]
        async with self.client.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.hmget(self._legacy_prefix(key) + key.op, ["status", "outputs"])
            replies: list[list[bytes | None]] = await pipe.execute()
        return [
            _record(key, status, outputs)
            for key, (status, outputs) in zip(keys, replies, strict=True)
            if status is not None  # expired; the index outlives its records
        ]

    # -- data ------------------------------------------------------------------------

    async def get(self, key: str) -> str | None:
        with _store_errors(self.url):
            value = await self.client.get(key)
        return None if value is None else _text(value)

    async def apply(self, effects: Sequence[Effect]) -> str:
        script = self._script(self._apply_script)
        packed = _pack(_encode_effects(effects))
        with _store_errors(self.url):
            reply = _reply(await script(args=[packed]))
        if reply[0] == b"rejected":
            return _refusal(effects, reply[2], reply[3])
        return ""


def _barrier_key(gid: str, name: bytes | str) -> BarrierKey | None:
    """``<step>:<op>`` as the key it names, None for anything else."""
    step, _, op = _text(name).rpartition(":")
    if op == "action":
        return BarrierKey(gid, step, "action")
    if op == "compensate":
        return BarrierKey(gid, step, "compensate")
    return None


def _record(key: BarrierKey, status: bytes, outputs: bytes | None) -> BarrierRecord:
    """A stored record as read back, in either layout."""
    return BarrierRecord(key, "failed" if status == b"failed" else "done", outputs or b"")


def _seconds(value: bytes | str | None) -> float:
    try:
        return float(value or 0)
    except ValueError:  # not written by choreo: keep reading the layout before (safe)
        return float("inf")


def _text(value: bytes | str) -> str:
    # decode_responses is off, so redis-py hands back bytes; its types also allow str.
    return value if isinstance(value, str) else value.decode()


def _pack(data: object) -> bytes:
    # Redis's cmsgpack knows no "bin" type: bytes travel as msgpack raw strings, which
    # are binary-safe all the same.
    return msgpack.packb(data, use_bin_type=False)  # type: ignore[no-any-return]


def _unpack(reply: Any) -> list[bytes]:
    """A batch script's reply: one MessagePack array of strings."""
    if not isinstance(reply, bytes):
        raise TransportError(f"unexpected reply from a choreo redis script: {reply!r}")
    return _reply(msgpack.unpackb(reply, raw=True))


def _reply(reply: Any) -> list[bytes]:
    """A script's reply: a list of bulk strings (decode_responses is off)."""
    if not isinstance(reply, list) or not all(isinstance(part, bytes) for part in reply):
        raise TransportError(f"unexpected reply from a choreo redis script: {reply!r}")
    return reply


def _refusal(effects: Sequence[Effect], index: bytes, seen: bytes) -> str:
    """The refusing Incr's text, formatted exactly as memory formats it."""
    effect = effects[int(index) - 1]
    assert isinstance(effect, Incr)
    return guard_failure(effect, int(seen))


# A commit's usual answers (module names, see choreo.store.base), looked at first.
_RECORDED = (APPLIED, FAILED)


def _commit_result(commit: Commit, reply: tuple[bytes, bytes, bytes]) -> BarrierResult:
    decision = _decision(reply[0])
    if decision in _RECORDED:  # the usual answer, looked at first
        return BarrierResult(decision, commit.outputs)
    if decision is Decision.DUPLICATE:
        return BarrierResult(decision, reply[1])
    if decision is Decision.REJECTED:
        return BarrierResult(decision, detail=_refusal(commit.effects, reply[1], reply[2]))
    if decision is Decision.INVALID:
        return BarrierResult(decision, detail=reply[1].decode(errors="replace"))
    if decision is Decision.NULL_COMPENSATION:
        return BarrierResult(decision, commit.null_outputs)
    return BarrierResult(decision)
