"""The test suite's real Redis server, and the run-directory handling shared with Kafka."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from choreo.local._process import LocalServerError, pid_alive
from choreo.local.redis_server import RedisServer

pytestmark = pytest.mark.redis
# Tests that start their own server still go through the fixture, so that a missing redis-server
# skips them (or fails them on CI) the same way.
needs_redis_server = pytest.mark.usefixtures("redis_url")

_INCR_AND_READ = """
redis.call('INCRBY', KEYS[1], ARGV[1])
return redis.call('GET', KEYS[1])
"""


async def test_real_redis_set_get_eval_without_persistence(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        await client.set("infra:key", "value")
        assert await client.get("infra:key") == b"value"
        assert await client.eval(_INCR_AND_READ, 1, "infra:counter", 5) == b"5"
        assert await client.eval(_INCR_AND_READ, 1, "infra:counter", 2) == b"7"
        assert await client.config_get("save") == {"save": ""}
        assert await client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        await client.aclose()


@needs_redis_server
def test_start_replaces_a_server_left_behind_in_the_same_dir(tmp_path: Path) -> None:
    # The first object stands for a killed run: a second one must stop its server, not reuse it.
    left_behind = RedisServer(tmp_path / "redis", die_with_parent=True)
    left_behind.start()
    old_pid = left_behind.running_pid()
    assert old_pid is not None
    fresh = RedisServer(tmp_path / "redis", die_with_parent=True)
    try:
        fresh.start()
        assert not pid_alive(old_pid)
        assert fresh.running_pid() not in (None, old_pid)
        state = fresh.state()
        assert state is not None
        assert state["address"] == fresh.address()
    finally:
        fresh.stop()
        left_behind.stop()
    assert fresh.running_pid() is None


@needs_redis_server
def test_refuses_to_wipe_a_directory_it_did_not_create(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(LocalServerError, match="refusing to wipe"):
        RedisServer(tmp_path).start()
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@needs_redis_server
async def test_persistent_server_keeps_data_across_restarts(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", persist=True, die_with_parent=True)
    try:
        client = aioredis.from_url(server.start())
        try:
            await client.set("durable", "yes")
        finally:
            await client.aclose()
        server.stop()  # SIGTERM: redis writes its append-only file before exiting
        client = aioredis.from_url(server.start())
        try:
            assert await client.get("durable") == b"yes"
        finally:
            await client.aclose()
    finally:
        server.stop()
