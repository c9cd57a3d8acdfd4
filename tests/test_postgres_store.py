"""The PostgreSQL store beyond the shared contract (tests/test_store_contract.py): its
tables and names, the schema command's effect, retention cleanup, the SQL transaction the
dispatcher hands to handlers, and its failures."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from choreo.errors import ConfigurationError, TransportError
from choreo.local._process import free_port
from choreo.store.base import BarrierKey, BarrierRecord, BarrierResult, Commit, Decision, Incr
from choreo.store.postgres import PostgresStore

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(postgres_url) as opened:
        assert isinstance(opened, PostgresStore)
        yield opened


def gid() -> str:
    return f"gid-{uuid.uuid4().hex}"


async def test_rows_and_the_pre_inserted_action_row(store: PostgresStore) -> None:
    g = gid()
    compensation = BarrierKey(g, "pay", "compensate")
    null = await store.commit_many([Commit(compensation, "done", b"x", (), b"null")])
    assert null == [BarrierResult(Decision.NULL_COMPENSATION, b"null")]

    rows = await store.pool.fetch(
        "SELECT op, status, outputs FROM public.choreo_barrier WHERE gid = $1 ORDER BY op", g
    )
    # DTM's pre-insert: the action's row is taken (blocked), so a late action hangs; it is
    # no record of its own.
    assert [tuple(r) for r in rows] == [("action", "blocked", b""), ("compensate", "done", b"null")]
    assert await store.records(g) == [BarrierRecord(compensation, "done", b"null")]
    assert await store.check(BarrierKey(g, "pay", "action")) == BarrierResult(Decision.HANGING)


async def test_table_prefix_and_schema(postgres_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    async with PostgresStore(postgres_url, table_prefix=f"t{ns}_", schema=f"s{ns}") as custom:
        assert isinstance(custom, PostgresStore)
        g = gid()
        await custom.commit(BarrierKey(g, "a", "action"), status="done", outputs=b"o",
                            effects=[Incr("n", 1)], null_outputs=b"", handler_ran=True)  # fmt: skip
        count = await custom.pool.fetchval(f"SELECT count(*) FROM s{ns}.t{ns}_barrier")
        assert count == 1
        assert await custom.pool.fetchval(f"SELECT value FROM s{ns}.t{ns}_kv") == "1"
    async with PostgresStore(postgres_url) as default:
        assert await default.records(g) == []
    with pytest.raises(ConfigurationError, match="table_prefix"):
        PostgresStore(postgres_url, table_prefix="Bad; drop")


async def test_without_create_schema_missing_tables_are_named(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, table_prefix=f"n{uuid.uuid4().hex[:8]}_",
                          create_schema=False)  # fmt: skip
    with pytest.raises(ConfigurationError, match="choreo db init"):
        await store.start()
    await store.stop()


async def test_a_fresh_store_says_so_once(postgres_url: str) -> None:
    prefix = f"f{uuid.uuid4().hex[:8]}_"
    async with PostgresStore(postgres_url, table_prefix=prefix) as first:
        assert first.fresh
    async with PostgresStore(postgres_url, table_prefix=prefix) as second:
        assert not second.fresh


async def test_cleanup_deletes_expired_records_and_old_sent_outbox_rows(postgres_url: str) -> None:
    prefix = f"c{uuid.uuid4().hex[:8]}_"
    async with PostgresStore(postgres_url, retention_seconds=1, table_prefix=prefix) as store:
        assert isinstance(store, PostgresStore)
        old, kept = gid(), gid()
        await store.commit_many([Commit(BarrierKey(old, "a", "action"), "done", b"o")])
        await store.pool.execute(
            f"INSERT INTO public.{prefix}outbox (gid, records, sent_at) VALUES"
            " ($1, '', now() - interval '1 hour'), ($1, '', NULL), ($1, '', now())",
            old,
        )
        await asyncio.sleep(1.2)
        await store.commit_many([Commit(BarrierKey(kept, "a", "action"), "done", b"o")])

        assert await store.cleanup(sent_older_than=60, limit=1) == 2  # one row per statement
        assert await store.pool.fetchval(f"SELECT count(*) FROM public.{prefix}barrier") == 1
        assert await store.pool.fetchval(f"SELECT count(*) FROM public.{prefix}outbox") == 2
        assert await store.records(kept) != []


async def test_handler_sql_commits_with_the_record_or_not_at_all(store: PostgresStore) -> None:
    table = f"orders_{uuid.uuid4().hex[:8]}"
    await store.pool.execute(f"CREATE TABLE {table} (id text PRIMARY KEY)")
    g = gid()
    key = BarrierKey(g, "order", "action")

    async def crash_before_the_commit() -> None:
        async with store.transaction() as tx:
            assert await tx.claim_many([key], [b""]) == [BarrierResult(Decision.RUN)]
            await tx.db.execute(f"INSERT INTO {table} VALUES ($1)", g)
            await tx.finish_many([Commit(key, "done", b"out")])
            raise RuntimeError("crash before the commit")

    with pytest.raises(RuntimeError):
        await crash_before_the_commit()
    assert await store.check(key) == BarrierResult(Decision.RUN)
    assert await store.pool.fetchval(f"SELECT count(*) FROM {table}") == 0

    async with store.transaction() as tx:
        assert await tx.claim_many([key], [b""]) == [BarrierResult(Decision.RUN)]
        await tx.savepoint()
        with pytest.raises(asyncpg.UniqueViolationError):
            async with tx.attempt():  # a failing attempt's SQL is rolled back alone
                await tx.db.execute(f"INSERT INTO {table} VALUES ('x'), ('x')")
        async with tx.attempt():
            await tx.db.execute(f"INSERT INTO {table} VALUES ('y')")
        await tx.rollback()  # back to the job's savepoint: 'y' goes, the claim stays
        async with tx.attempt():
            await tx.db.execute(f"INSERT INTO {table} VALUES ($1)", g)
        assert await tx.finish_many([Commit(key, "done", b"out")]) == [
            BarrierResult(Decision.APPLIED, b"out")
        ]
    assert await store.check(key) == BarrierResult(Decision.DUPLICATE, b"out")
    assert await store.pool.fetch(f"SELECT id FROM {table}") == [(g,)]


async def test_a_second_delivery_waits_for_the_first_and_runs_nothing(
    store: PostgresStore,
) -> None:
    key = BarrierKey(gid(), "order", "action")
    first_claimed = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> list[BarrierResult]:
        async with store.transaction() as tx:
            assert await tx.claim_many([key], [b""]) == [BarrierResult(Decision.RUN)]
            first_claimed.set()
            await release_first.wait()
            return await tx.finish_many([Commit(key, "done", b"first")])

    async def second() -> list[BarrierResult]:
        await first_claimed.wait()
        async with store.transaction() as tx:
            return await tx.claim_many([key], [b""])

    one = asyncio.create_task(first())
    two = asyncio.create_task(second())
    await first_claimed.wait()
    await asyncio.sleep(0.3)
    assert not two.done()  # held by the unique key while the first is running
    release_first.set()
    assert await one == [BarrierResult(Decision.APPLIED, b"first")]
    assert await two == [BarrierResult(Decision.DUPLICATE, b"first")]


async def test_unreachable_postgres_raises_transport_error() -> None:
    store = PostgresStore(f"postgresql://choreo@127.0.0.1:{free_port()}/postgres")
    with pytest.raises(TransportError, match="cannot reach the postgres store"):
        await store.start()
    await store.stop()
