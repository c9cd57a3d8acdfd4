"""The PostgreSQL store: DTM's SQL barrier in the user's own database (docs/postgres.md).

A barrier record is a row of ``<prefix>barrier`` with the unique key (gid, step, op), written
in the same transaction as the handler's own SQL and the step's outgoing events (the row's
``outputs``), so the business write, the record and the events commit together or not at
all. The rules are those of the other stores (store/base.py), enforced by the unique key:

- an action inserts its row first (status ``pending`` until the handler has run); a second
  delivery's insert waits for the first transaction and then finds the row: a duplicate;
- a compensation first inserts the *action's* row with status ``blocked`` (DTM's
  pre-insert): if that insert succeeds the action never ran, the compensation is null, and
  the late action will find its row taken (hanging). ``blocked`` rows are not records;
- ``Incr``/``Put``/``Delete`` effects (``ctx.tx``) apply to ``<prefix>kv`` in the same
  transaction, under advisory locks on the keys they touch.

Rows expire after ``retention_seconds``: reads ignore expired rows, an insert replaces one,
and ``cleanup()`` (``choreo db cleanup``) deletes them.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from choreo.errors import ConfigurationError, TransportError
from choreo.redact import redact_url
from choreo.store.base import (
    DEFAULT_RETENTION_SECONDS,
    BarrierKey,
    BarrierRecord,
    BarrierResult,
    Commit,
    Decision,
    Effect,
    StoreSession,
    StoreTransaction,
    TransactionalStore,
    plan_effects,
)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

# A connection of the pool as handlers and choreo's statements use it.
Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")

_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)


@contextlib.contextmanager
def _db_errors(url: str) -> Iterator[None]:
    """The database not answering (or a deadlock it broke) is TransportError: retriable."""
    try:
        yield
    except _TRANSIENT as exc:
        raise TransportError(f"postgres store {redact_url(url)} failed: {exc}") from exc


class Tables:
    """The names of choreo's tables, from a prefix and a schema (both checked)."""

    def __init__(self, prefix: str = "choreo_", schema: str = "public") -> None:
        for what, value in (("table_prefix", prefix), ("schema", schema)):
            if not _NAME.fullmatch(value):
                raise ConfigurationError(
                    f"{what} {value!r} must be a lower-case SQL name: letters, digits, _"
                )
        self.prefix = prefix
        self.schema = schema
        self.barrier = f"{schema}.{prefix}barrier"
        self.kv = f"{schema}.{prefix}kv"
        self.outbox = f"{schema}.{prefix}outbox"
        self.meta = f"{schema}.{prefix}meta"
        self.channel = f"{prefix}outbox"  # NOTIFY channel of the outbox relay

    def ddl(self) -> str:
        p = self.prefix
        return f"""
CREATE SCHEMA IF NOT EXISTS {self.schema};
CREATE TABLE IF NOT EXISTS {self.barrier} (
    gid        text        NOT NULL,
    step       text        NOT NULL,
    op         text        NOT NULL CHECK (op IN ('action', 'compensate')),
    status     text        NOT NULL CHECK (status IN ('pending', 'done', 'failed', 'blocked')),
    outputs    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (gid, step, op)
);
CREATE INDEX IF NOT EXISTS {p}barrier_expires ON {self.barrier} (expires_at);
CREATE TABLE IF NOT EXISTS {self.kv} (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS {self.outbox} (
    id         bigserial   PRIMARY KEY,
    gid        text        NOT NULL,
    records    bytea       NOT NULL,
    dedupe_key text,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz
);
CREATE INDEX IF NOT EXISTS {p}outbox_unsent ON {self.outbox} (id) WHERE sent_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS {p}outbox_dedupe ON {self.outbox} (dedupe_key)
    WHERE dedupe_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS {p}outbox_sent ON {self.outbox} (sent_at) WHERE sent_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {self.meta} (
    name  text PRIMARY KEY,
    value text NOT NULL
);
"""


async def create_schema(conn: Connection, tables: Tables) -> None:
    """Create choreo's tables if they are missing (idempotent; concurrent callers wait for
    each other on an advisory lock)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", tables.meta)
        await conn.execute(tables.ddl())


class PostgresStore(TransactionalStore):
    """``postgresql://user:password@host:port/db``; ``store_options``: ``table_prefix``
    (``choreo_``), ``schema`` (``public``), ``retention_seconds``, ``pool_size`` (10),
    ``create_schema`` (True: create missing tables on start, as ``choreo db init`` does)."""

    def __init__(
        self,
        url: str,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
        *,
        table_prefix: str = "choreo_",
        schema: str = "public",
        pool_size: int = 10,
        create_schema: bool = True,
        accept_empty: bool = False,
    ) -> None:
        if retention_seconds < 1:
            raise ConfigurationError("retention_seconds must be at least 1")
        if pool_size < 1:
            raise ConfigurationError("pool_size must be at least 1")
        self.url = url
        self.retention_seconds = retention_seconds
        self.tables = Tables(table_prefix, schema)
        self.pool_size = pool_size
        self.create_schema = create_schema
        self.accept_empty = accept_empty
        self.fresh = False
        self._pool: asyncpg.Pool[Any] | None = None
        self._sql = _Sql(self.tables)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self.pool_size, timeout=10
            )
        except _TRANSIENT as exc:
            raise TransportError(
                f"cannot reach the postgres store at {redact_url(self.url)}: {exc}"
            ) from exc
        try:
            with _db_errors(self.url):
                async with pool.acquire() as conn:
                    if self.create_schema:
                        await create_schema(conn, self.tables)
                    exists = await conn.fetchval("SELECT to_regclass($1)", self.tables.meta)
                    if exists is None:
                        raise ConfigurationError(
                            f"the postgres store at {redact_url(self.url)} has no choreo tables "
                            f"({self.tables.meta} is missing): run `choreo db init`"
                        )
                    self.fresh = bool(
                        await conn.fetchval(
                            f"INSERT INTO {self.tables.meta} (name, value) VALUES ('epoch', $1)"
                            " ON CONFLICT (name) DO NOTHING RETURNING true",
                            uuid.uuid4().hex,
                        )
                    )
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        """The connection pool (for the relay, tests and tooling)."""
        if self._pool is None:
            raise ConfigurationError("PostgresStore used before start()")
        return self._pool

    # -- barrier ---------------------------------------------------------------------

    async def check_many(self, keys: Sequence[BarrierKey]) -> list[BarrierResult]:
        if not keys:
            return []
        with _db_errors(self.url):
            rows = await self.pool.fetch(
                self._sql.check_many, [k.gid for k in keys], [k.step for k in keys]
            )
        return _decisions(keys, rows)

    async def commit_many(self, commits: Sequence[Commit]) -> list[BarrierResult]:
        """Handlers that already ran, recorded through the same claim, apply and finish as
        the dispatcher's transactions: one transaction, a claim statement and a finish
        statement per run of distinct (gid, step) pairs, effects applied in order."""
        results: list[BarrierResult] = [BarrierResult(Decision.RUN)] * len(commits)
        if not commits:
            return results
        async with self.transaction() as tx:
            for run in _distinct_runs(list(enumerate(commits))):
                claims = await tx.claim_many(
                    [c.key for _, c in run], [c.null_outputs for _, c in run]
                )
                finishing: list[tuple[int, Commit]] = []
                drop: list[BarrierKey] = []
                for (index, commit), claim in zip(run, claims, strict=True):
                    if claim.decision is not Decision.RUN:
                        results[index] = claim
                    elif commit.key.op == "compensate" and not commit.handler_ran:
                        drop.append(commit.key)  # results[index] stays RUN
                    else:
                        refused = await tx.apply(commit)
                        if refused is None:
                            finishing.append((index, commit))
                        else:
                            results[index] = refused
                            drop.append(commit.key)
                done = await tx.finish_many([c for _, c in finishing], drop)
                for (index, _), result in zip(finishing, done, strict=True):
                    results[index] = result
        return results

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTransaction]:
        with _db_errors(self.url):
            async with self.pool.acquire() as conn, conn.transaction():
                yield _Transaction(self, conn)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[StoreSession]:
        with _db_errors(self.url):
            async with self.pool.acquire() as conn:
                yield _Session(self, conn)

    async def records(self, gid: str) -> list[BarrierRecord]:
        with _db_errors(self.url):
            rows = await self.pool.fetch(self._sql.records, gid)
        return [
            BarrierRecord(
                BarrierKey(gid, row["step"], "action" if row["op"] == "action" else "compensate"),
                "failed" if row["status"] == "failed" else "done",
                row["outputs"],
            )
            for row in rows
        ]

    # -- data ------------------------------------------------------------------------

    async def get(self, key: str) -> str | None:
        with _db_errors(self.url):
            value: str | None = await self.pool.fetchval(self._sql.get, key)
        return value

    async def apply(self, effects: Sequence[Effect]) -> str:
        with _db_errors(self.url):
            async with self.pool.acquire() as conn, conn.transaction():
                planned = await self._plan(conn, effects)
                if isinstance(planned, str):
                    return planned
                await self._write(conn, planned)
        return ""

    async def _plan(
        self, conn: Connection, effects: Sequence[Effect]
    ) -> dict[str, str | None] | str:
        keys = sorted({effect.key for effect in effects})
        if not keys:
            return {}
        # Advisory locks (in key order) also cover keys that have no row yet; the read is
        # a separate statement so that its snapshot follows the wait.
        await conn.execute(self._sql.lock_keys, keys)
        rows = await conn.fetch(self._sql.read_keys, keys)
        stored: dict[str, str] = {row["key"]: row["value"] for row in rows}
        return plan_effects(effects, stored.get)

    async def _write(self, conn: Connection, planned: dict[str, str | None]) -> None:
        if not planned:
            return
        puts = [(k, v) for k, v in planned.items() if v is not None]
        gone = [k for k, v in planned.items() if v is None]
        await conn.execute(self._sql.write_keys, [k for k, _ in puts], [v for _, v in puts], gone)

    # -- retention -------------------------------------------------------------------

    async def cleanup(self, *, sent_older_than: float | None = None, limit: int = 10_000) -> int:
        """Delete expired barrier records and outbox rows sent more than
        ``sent_older_than`` seconds ago (default: the retention), ``limit`` rows per
        statement, until none is left. Returns how many rows went. Safe to run while
        services work; schedule it (cron, a periodic task) or run ``choreo db cleanup``."""
        older = self.retention_seconds if sent_older_than is None else sent_older_than
        removed = 0
        with _db_errors(self.url):
            async with self.pool.acquire() as conn:
                for sql, args in (
                    (self._sql.cleanup_barrier, (limit,)),
                    (self._sql.cleanup_outbox, (float(older), limit)),
                ):
                    while True:
                        status = await conn.execute(sql, *args)
                        count = int(status.rsplit(" ", 1)[-1])
                        removed += count
                        if count < limit:
                            break
        return removed


def _decisions(keys: Sequence[BarrierKey], rows: Sequence[Any]) -> list[BarrierResult]:
    found: list[dict[str, tuple[str, bytes]]] = [{} for _ in keys]
    for row in rows:
        found[row["i"] - 1][row["op"]] = (row["status"], row["outputs"])
    return [_decide(key, pair) for key, pair in zip(keys, found, strict=True)]


def _decide(key: BarrierKey, pair: dict[str, tuple[str, bytes]]) -> BarrierResult:
    """A check's decision from the live rows of the key's (gid, step)."""
    own = pair.get(key.op)
    if own is not None:
        if own[0] == "blocked":
            return BarrierResult(Decision.HANGING)
        return BarrierResult(Decision.DUPLICATE, own[1])
    if key.op == "action":
        return BarrierResult(Decision.HANGING if "compensate" in pair else Decision.RUN)
    action = pair.get("action")
    if action is None or action[0] != "done":
        return BarrierResult(Decision.NULL_COMPENSATION)
    return BarrierResult(Decision.RUN)


class _Sql:
    """The statements, with the table names filled in once."""

    def __init__(self, t: Tables) -> None:
        b = t.barrier
        self.check_many = (
            f"SELECT k.i, r.op, r.status, r.outputs"
            f" FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(gid, step, i)"
            f" JOIN {b} r ON r.gid = k.gid AND r.step = k.step AND r.expires_at > now()"
        )
        # Inserts the rows, or replaces expired ones; returns the (gid, step) of those
        # taken: none where a live row holds the key (after waiting for a transaction
        # that is writing it). The pairs of one call are distinct.
        self.take_many = (
            f"INSERT INTO {b} AS r (gid, step, op, status, outputs, expires_at)"
            f" SELECT g, s, $3, $4, o, now() + make_interval(secs => $6)"
            f" FROM unnest($1::text[], $2::text[], $5::bytea[]) AS k(g, s, o)"
            f" ON CONFLICT (gid, step, op) DO UPDATE SET status = EXCLUDED.status,"
            f" outputs = EXCLUDED.outputs, created_at = now(), expires_at = EXCLUDED.expires_at"
            f" WHERE r.expires_at <= now() RETURNING gid, step"
        )
        # A compensation's record keeps its action's row (claimed or blocked) alive as
        # long as itself, so a late action always finds it.
        self.finish_many = (
            f"WITH f AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
            f" $4::text[], $5::bytea[]) AS f(gid, step, op, status, outputs)),"
            f" keep AS (UPDATE {b} r SET expires_at = now() + make_interval(secs => $6)"
            f" FROM f WHERE r.gid = f.gid AND r.step = f.step AND r.op = 'action'"
            f" AND f.op = 'compensate')"
            f" UPDATE {b} r SET status = f.status, outputs = f.outputs,"
            f" expires_at = now() + make_interval(secs => $6)"
            f" FROM f WHERE r.gid = f.gid AND r.step = f.step AND r.op = f.op"
        )
        self.drop = (
            f"DELETE FROM {b} r USING unnest($1::text[], $2::text[], $3::text[]) AS d(g, s, o)"
            f" WHERE r.gid = d.g AND r.step = d.s AND r.op = d.o AND r.status = 'pending'"
        )
        self.records = (
            f"SELECT step, op, status, outputs FROM {b} WHERE gid = $1"
            f" AND status IN ('done', 'failed') AND expires_at > now() ORDER BY step, op"
        )
        self.get = f"SELECT value FROM {t.kv} WHERE key = $1"
        self.lock_keys = (
            f"SELECT count(pg_advisory_xact_lock(hashtextextended(k, {_seed(t.kv)})))"
            f" FROM unnest($1::text[]) AS k"
        )
        self.read_keys = f"SELECT key, value FROM {t.kv} WHERE key = ANY($1::text[])"
        self.write_keys = (
            f"WITH gone AS (DELETE FROM {t.kv} WHERE key = ANY($3::text[]))"
            f" INSERT INTO {t.kv} (key, value) SELECT * FROM unnest($1::text[], $2::text[])"
            f" ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        )
        self.cleanup_barrier = (
            f"DELETE FROM {b} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {b}"
            f" WHERE expires_at <= now() LIMIT $1))"
        )
        self.cleanup_outbox = (
            f"DELETE FROM {t.outbox} WHERE id = ANY(ARRAY(SELECT id FROM {t.outbox}"
            f" WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)"
            f" LIMIT $2))"
        )


def _seed(name: str) -> int:
    """A per-table seed for the advisory lock keys, so they do not collide with the
    application's own advisory locks on the same numbers."""
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % 1_000_003


def _distinct_runs(items: list[tuple[int, Commit]]) -> list[list[tuple[int, Commit]]]:
    """Consecutive runs of commits whose (gid, step) pairs are distinct."""
    runs: list[list[tuple[int, Commit]]] = [[]]
    seen: set[tuple[str, str]] = set()
    for item in items:
        pair = (item[1].key.gid, item[1].key.step)
        if pair in seen:
            runs.append([])
            seen = set()
        runs[-1].append(item)
        seen.add(pair)
    return [run for run in runs if run]


class _Session(StoreSession):
    def __init__(self, store: PostgresStore, conn: Connection) -> None:
        self.store = store
        self.conn = conn

    async def check_many(self, keys: Sequence[BarrierKey]) -> list[BarrierResult]:
        if not keys:
            return []
        with _db_errors(self.store.url):
            rows = await self.conn.fetch(
                self.store._sql.check_many, [k.gid for k in keys], [k.step for k in keys]
            )
        return _decisions(keys, rows)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTransaction]:
        with _db_errors(self.store.url):
            async with self.conn.transaction():
                yield _Transaction(self.store, self.conn)


class _Transaction(StoreTransaction):
    def __init__(self, store: PostgresStore, conn: Connection) -> None:
        self.store = store
        self.db = conn
        self._sql = store._sql
        self._retention = float(store.retention_seconds)
        self._savepoints = 0
        self._pending = False

    # -- savepoints --------------------------------------------------------------------

    # The job's savepoint is sent with its handler's first attempt (one round trip for
    # both), and a successful attempt's savepoint is left open, not released: a
    # rollback to the job's savepoint discards it with everything else.

    async def savepoint(self) -> None:
        self._savepoints += 1
        self._pending = True

    async def rollback(self) -> None:
        if self._pending:  # never sent: nothing was written since
            self._pending = False
            return
        await self._own(f"ROLLBACK TO SAVEPOINT choreo_job_{self._savepoints}")

    def _take_pending(self) -> str:
        if not self._pending:
            return ""
        self._pending = False
        return f"SAVEPOINT choreo_job_{self._savepoints}; "

    @contextlib.asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        await self._own(f"{self._take_pending()}SAVEPOINT choreo_attempt")
        try:
            yield
        except BaseException:
            await self._own(
                "ROLLBACK TO SAVEPOINT choreo_attempt; RELEASE SAVEPOINT choreo_attempt"
            )
            raise

    async def _own(self, sql: str) -> None:
        """One of choreo's statements around the handler's; its failure marks the
        transaction broken, so that the handler is not blamed for it."""
        try:
            with _db_errors(self.store.url):
                await self.db.execute(sql)
        except TransportError as exc:
            self.broken = exc
            raise
        except asyncpg.PostgresError as exc:  # e.g. the handler left the transaction aborted
            self.broken = TransportError(f"postgres store transaction failed: {exc}")
            raise self.broken from exc

    # -- claims ------------------------------------------------------------------------

    async def claim_many(
        self, keys: Sequence[BarrierKey], null_outputs: Sequence[bytes]
    ) -> list[BarrierResult]:
        """A few statements for the whole run, whatever its size: the actions' rows in
        one insert; the compensations' pre-inserts of their actions' rows in one, what
        the others find in one read, then their own rows (null or pending) in one each."""
        results: list[BarrierResult] = [BarrierResult(Decision.RUN)] * len(keys)
        with _db_errors(self.store.url):
            actions = [i for i, key in enumerate(keys) if key.op == "action"]
            if actions:
                taken = await self._take_many(keys, actions, "action", "pending")
                await self._settle_held(keys, [i for i in actions if i not in taken], results)
            compensations = [i for i, key in enumerate(keys) if key.op == "compensate"]
            if not compensations:
                return results
            # DTM's pre-insert: take the action's row, so an action that has not run yet
            # never will; taken, the compensation is null.
            blocked = await self._take_many(keys, compensations, "action", "blocked")
            null = [i for i in compensations if i in blocked]
            run: list[int] = []
            rest = [i for i in compensations if i not in blocked]
            for i, pair in zip(rest, await self._pairs([keys[i] for i in rest]), strict=True):
                own, action = pair.get("compensate"), pair.get("action")
                if own is not None:
                    results[i] = BarrierResult(Decision.DUPLICATE, own[1])
                elif action is None or action[0] != "done":
                    null.append(i)
                else:
                    run.append(i)
            if null:
                won = await self._take_many(keys, null, "compensate", "done", null_outputs)
                if won:
                    await self._finish([Commit(keys[i], "done", null_outputs[i]) for i in won])
                    for i in won:
                        results[i] = BarrierResult(Decision.NULL_COMPENSATION, null_outputs[i])
                await self._settle_held(keys, [i for i in null if i not in won], results)
            if run:
                won = await self._take_many(keys, run, "compensate", "pending")
                await self._settle_held(keys, [i for i in run if i not in won], results)
        return results

    async def _take_many(
        self,
        keys: Sequence[BarrierKey],
        chosen: Sequence[int],
        op: str,
        status: str,
        outputs: Sequence[bytes] = (),
    ) -> set[int]:
        """Insert (or replace expired) rows ``op`` of the chosen keys' (gid, step); the
        indexes of those taken. A live row, or one a concurrent transaction is writing
        (the insert waits for it), is not taken."""
        rows = await self.db.fetch(
            self._sql.take_many,
            [keys[i].gid for i in chosen],
            [keys[i].step for i in chosen],
            op,
            status,
            [outputs[i] if outputs else b"" for i in chosen],
            self._retention,
        )
        taken = {(row["gid"], row["step"]) for row in rows}
        return {i for i in chosen if (keys[i].gid, keys[i].step) in taken}

    async def _settle_held(
        self, keys: Sequence[BarrierKey], held: Sequence[int], results: list[BarrierResult]
    ) -> None:
        """Keys whose row a live record holds: a new statement sees it, committed."""
        if held:
            for i, pair in zip(held, await self._pairs([keys[i] for i in held]), strict=True):
                results[i] = _decide(keys[i], pair)

    async def _pairs(self, keys: Sequence[BarrierKey]) -> list[dict[str, tuple[str, bytes]]]:
        if not keys:
            return []
        rows = await self.db.fetch(
            self._sql.check_many, [k.gid for k in keys], [k.step for k in keys]
        )
        found: list[dict[str, tuple[str, bytes]]] = [{} for _ in keys]
        for row in rows:
            found[row["i"] - 1][row["op"]] = (row["status"], row["outputs"])
        return found

    # -- effects and records -----------------------------------------------------------

    async def apply(self, commit: Commit) -> BarrierResult | None:
        if commit.status != "done" or not commit.effects:
            return None
        pending = self._take_pending()
        if pending:
            await self._own(pending)
        with _db_errors(self.store.url):
            try:
                planned = await self.store._plan(self.db, commit.effects)
            except ValueError as exc:
                return BarrierResult(Decision.INVALID, detail=str(exc))
            if isinstance(planned, str):
                return BarrierResult(Decision.REJECTED, detail=planned)
            await self.store._write(self.db, planned)
        return None

    async def finish_many(
        self, commits: Sequence[Commit], drop: Sequence[BarrierKey] = ()
    ) -> list[BarrierResult]:
        with _db_errors(self.store.url):
            if commits:
                await self._finish(commits)
            if drop:
                await self.db.execute(
                    self._sql.drop, [k.gid for k in drop], [k.step for k in drop],
                    [k.op for k in drop],
                )  # fmt: skip
        return [
            BarrierResult(Decision.FAILED if c.status == "failed" else Decision.APPLIED, c.outputs)
            for c in commits
        ]

    async def _finish(self, commits: Sequence[Commit]) -> None:
        await self.db.execute(
            self._sql.finish_many,
            [c.key.gid for c in commits],
            [c.key.step for c in commits],
            [c.key.op for c in commits],
            [c.status for c in commits],
            [c.outputs for c in commits],
            self._retention,
        )
