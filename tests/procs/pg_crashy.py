"""A service on Kafka + the PostgreSQL barrier whose handler writes a row with ``ctx.db``,
run as a subprocess by tests/test_postgres_crash.py, which has it SIGKILL itself at an
exact point of its first batch.

Environment: ``PGC_BROKER`` (kafka://...), ``PGC_URL`` (PostgreSQL), ``PGC_PREFIX`` (table
prefix), ``PGC_TABLE`` (the handler's table), ``PGC_TOPIC`` (orders; outputs on
``<topic>.out``), ``PGC_GROUP``, ``PGC_KILL``:

- ``after-commit``: the batch's rows, barrier records and outbox are committed in
  PostgreSQL, nothing is published yet;
- ``after-publish``: the batch's outputs are acknowledged by the broker, its offsets are
  not committed;
- ``none``: run until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence

from choreo import Context, Event, Service
from choreo.transport.base import Delivered, OutgoingRecord
from choreo.transport.kafka import KafkaTransport
from tests.procs.own_transport import serve

TOPIC = os.environ.get("PGC_TOPIC", "test.pgcrashy")
KILL = os.environ.get("PGC_KILL", "none")


class PgOrder(Event, topic=TOPIC):
    order_id: str


class PgReserved(Event, topic=f"{TOPIC}.out"):
    order_id: str


class Killing(KafkaTransport):
    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        outputs = any(r.topic == PgReserved.topic for r in records)
        if outputs and KILL == "after-commit":
            print(f"committed a batch of {len(records)}; dying before the publish", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        delivered = await super().send_many(records)
        if outputs and KILL == "after-publish":
            print(f"published {len(records)}; dying before the offset commit", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return delivered


def build() -> Service:
    table = os.environ.get("PGC_TABLE", "pgc_rows")
    app = Service(
        "pgcrashy",
        broker=Killing(os.environ.get("PGC_BROKER", "kafka://127.0.0.1:9092"), partitions=4),
        store=os.environ.get("PGC_URL", "postgresql://choreo@127.0.0.1:5432/postgres"),
        store_options={"table_prefix": os.environ.get("PGC_PREFIX", "choreo_")},
        group=os.environ.get("PGC_GROUP", "pgcrashy"),
        batch_size=50,
    )

    @app.on_event(PgOrder, step="reserve")
    async def reserve(event: PgOrder, ctx: Context) -> PgReserved:
        await ctx.db.execute(f"INSERT INTO {table} (order_id) VALUES ($1)", event.order_id)
        return PgReserved(order_id=event.order_id)

    return app


if __name__ == "__main__":
    asyncio.run(serve(build()))
