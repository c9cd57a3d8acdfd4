"""The local PostgreSQL server: started on a free loopback port, reachable, stopped by pid
with nothing left behind (process or cluster)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from choreo.local._process import LocalServerUnavailable, pid_alive
from choreo.local.postgres_server import PostgresServer

pytestmark = pytest.mark.postgres


async def test_session_server_answers(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("select current_user") == "choreo"
        assert await conn.fetchval("show listen_addresses") == "127.0.0.1"
    finally:
        await conn.close()


async def test_a_server_starts_and_stops_leaving_nothing(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pg", die_with_parent=True, persist=False)
    try:
        url = server.start()
    except LocalServerUnavailable as exc:  # pragma: no cover - the session fixture decides
        pytest.skip(str(exc))
    pid = server.running_pid()
    assert pid is not None
    assert server.state() is not None
    conn = await asyncpg.connect(url)
    assert await conn.fetchval("select 1") == 1
    # A client still connected must not hold the stop up (fast shutdown, not smart).
    assert server.stop()
    await conn.close()
    assert not pid_alive(pid)
    assert server.running_pid() is None
    assert not server.data_dir.exists()
    assert not server.stop()  # stopping twice is harmless
