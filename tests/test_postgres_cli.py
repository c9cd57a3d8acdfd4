"""``choreo db init|cleanup|sql`` against the session's real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from choreo.cli.main import main

pytestmark = pytest.mark.postgres


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def tables(url: str, schema: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1"
            " ORDER BY table_name",
            schema,
        )
    finally:
        await conn.close()
    return [row["table_name"] for row in rows]


def test_db_init_creates_the_tables_and_cleanup_runs(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = f"cli_{uuid.uuid4().hex[:8]}"
    args = ("--url", postgres_url, "--schema", schema, "--table-prefix", "app_")
    code, out, _ = run(capsys, "db", "init", *args)
    assert code == 0
    assert f"{schema}.app_barrier" in out
    assert asyncio.run(tables(postgres_url, schema)) == [
        "app_barrier", "app_kv", "app_meta", "app_outbox",
    ]  # fmt: skip
    assert run(capsys, "db", "init", *args)[0] == 0  # idempotent
    code, out, _ = run(capsys, "db", "cleanup", *args)
    assert (code, out) == (0, "removed 0 expired barrier records and sent outbox rows\n")


def test_db_needs_a_postgres_url(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "db", "init", "--url", "redis://127.0.0.1:1/0")
    assert code == 2
    assert "PostgreSQL URL" in err


def test_db_sql_prints_the_ddl(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "db", "sql", "--table-prefix", "x_")
    assert code == 0
    assert "CREATE TABLE IF NOT EXISTS public.x_barrier" in out
    assert "PRIMARY KEY (gid, step, op)" in out


def test_db_relay_needs_a_broker(
    postgres_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHOREO_BROKER", raising=False)
    code, _, err = run(capsys, "db", "relay", "--url", postgres_url)
    assert code == 2
    assert "--broker" in err
