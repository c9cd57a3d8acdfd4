"""Dispatch throughput on the PostgreSQL barrier beside the Redis barrier (not a test).

    .venv/bin/python -m benchmarks.postgres_barrier [--events N] [--repeat R]

The memory transport (so the store is what differs), one gid per event, 4 partitions,
batches of up to 500: the whole per-record pipeline (barrier check, handler, barrier
commit with the outbox, publish, offset commit), once with the Redis store (one Lua check
and one Lua commit per wave) and once with the PostgreSQL store (docs/postgres.md). Two
handlers:

- ``echo``: returns one event, takes no Context (on PostgreSQL: transactions of 32 jobs,
  one claim and one record statement each);
- ``write``: takes a Context and writes one value: on Redis ``ctx.tx.put`` (applied by the
  commit's Lua call), on PostgreSQL an ``INSERT`` through ``ctx.db`` (a transaction per
  handler, with its savepoints).

Both servers are local, started by this script, non-durable (fsync off), so the figures
compare the stores' round trips and CPU, not disks.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
from pathlib import Path
from typing import Any, cast

from benchmarks import dispatch
from choreo import Context, Event
from choreo.local.postgres_server import PostgresServer
from choreo.local.redis_server import RedisServer
from choreo.store.base import Store
from choreo.store.postgres import PostgresStore
from choreo.store.redis import RedisStore
from choreo.transport.memory import MemoryBroker, MemoryTransport


def workload(events: int, kind: str) -> dispatch.Workload:
    made = dispatch.make_workload(events)
    if kind == "echo":
        return made
    pong = made.pong

    async def write(event: Event, ctx: Context) -> Any:
        ping = cast(Any, event)
        if ctx.has_db:
            await ctx.db.execute(
                "INSERT INTO bench_orders (order_id, amount) VALUES ($1, $2)",
                ping.order_id,
                ping.amount,
            )
        else:
            ctx.tx.put(f"bench:{ping.order_id}", str(ping.amount))
        return pong(order_id=ping.order_id, customer=ping.customer, amount=ping.amount)

    return dataclasses.replace(made, handler=write)


async def measure(store: Store, events: int, kind: str) -> float:
    transport = MemoryTransport(MemoryBroker(dispatch.PARTITIONS))
    return await dispatch.choreo_run(transport, store, workload(events, kind))


async def main(events: int, repeat: int, redis_url: str, postgres_url: str) -> None:
    results: dict[tuple[str, str], list[float]] = {}
    async with RedisStore(redis_url) as redis, PostgresStore(postgres_url) as postgres:
        assert isinstance(postgres, PostgresStore)
        await postgres.pool.execute(
            "CREATE TABLE bench_orders (order_id text PRIMARY KEY, amount int NOT NULL)"
        )
        stores = (("redis", redis), ("postgres", postgres))
        for kind in ("echo", "write"):
            for _, store in stores:
                await measure(store, 500, kind)  # warm-up
        for _ in range(repeat):  # alternate, so a busy moment hurts both alike
            for kind in ("echo", "write"):
                for name, store in stores:
                    results.setdefault((kind, name), []).append(await measure(store, events, kind))
    for (kind, name), rates in results.items():
        print(f"{kind:6s} {name:9s} median {statistics.median(rates):7.0f} events/s  "
              f"(runs: {', '.join(f'{r:.0f}' for r in rates)})")  # fmt: skip
    for kind in ("echo", "write"):
        ratio = statistics.median(results[(kind, "postgres")]) / statistics.median(
            results[(kind, "redis")]
        )
        print(f"{kind}: postgres / redis = {ratio:.2f}")


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
