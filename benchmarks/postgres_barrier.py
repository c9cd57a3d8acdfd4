"""Dispatch throughput on the PostgreSQL barrier beside the Redis barrier (not a test).

    .venv/bin/python -m benchmarks.postgres_barrier [--events N] [--repeat R]

The memory transport (so the store is what differs), one handler that returns one event,
one gid per event, 4 partitions, batches of up to 500: the whole per-record pipeline
(barrier check, handler, barrier commit with the outbox, publish, offset commit), once
with the Redis store (one Lua check and one Lua commit per wave) and once with the
PostgreSQL store (one check, then transactions of 32 jobs with a savepoint each:
docs/postgres.md). Both servers are local, started by this script, non-durable (fsync
off), so the figures compare the stores' round trips and CPU, not disks.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from benchmarks import dispatch
from choreo.local.postgres_server import PostgresServer
from choreo.local.redis_server import RedisServer
from choreo.store.base import Store
from choreo.store.postgres import PostgresStore
from choreo.store.redis import RedisStore
from choreo.transport.memory import MemoryBroker, MemoryTransport


async def measure(store: Store, events: int, repeat: int) -> list[float]:
    rates = []
    await dispatch.choreo_run(
        MemoryTransport(MemoryBroker(dispatch.PARTITIONS)), store, dispatch.make_workload(500)
    )
    for _ in range(repeat):
        transport = MemoryTransport(MemoryBroker(dispatch.PARTITIONS))
        rates.append(await dispatch.choreo_run(transport, store, dispatch.make_workload(events)))
    return rates


async def main(events: int, repeat: int, redis_url: str, postgres_url: str) -> None:
    results: dict[str, list[float]] = {}
    async with RedisStore(redis_url) as redis, PostgresStore(postgres_url) as postgres:
        for _ in range(repeat):  # alternate, so a busy moment hurts both alike
            for name, store in (("redis", redis), ("postgres", postgres)):
                results.setdefault(name, []).extend(await measure(store, events, 1))
    for name, rates in results.items():
        print(f"{name:9s} median {statistics.median(rates):8.0f} events/s  "
              f"(runs: {', '.join(f'{r:.0f}' for r in rates)})")  # fmt: skip
    ratio = statistics.median(results["postgres"]) / statistics.median(results["redis"])
    print(f"postgres / redis: {ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis", die_with_parent=True, persist=False)
        postgres = PostgresServer(Path(tmp) / "postgres", die_with_parent=True, persist=False)
        try:
            redis_url, postgres_url = redis.start(), postgres.start()
            asyncio.run(main(args.events, args.repeat, redis_url, postgres_url))
        finally:
            redis.stop()
            postgres.stop()
