"""A process that writes outbox rows to PostgreSQL and is SIGKILLed (by itself, at an
exact point) for tests/test_postgres_relay_crash.py.

Environment: ``OUTBOX_URL`` (PostgreSQL), ``OUTBOX_BROKER`` (kafka://...),
``OUTBOX_PREFIX`` (table prefix), ``OUTBOX_TOPIC``, ``OUTBOX_GIDS`` (comma-separated),
``OUTBOX_PER_GID``, ``OUTBOX_MODE``:

- ``after-commit``: every row is committed, then the process dies before any relay ran;
- ``after-publish``: a relay publishes a batch and the broker acknowledges it, then the
  process dies before the rows are marked sent.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence

from choreo import Event, codec
from choreo.events import Envelope, Message, derived_event_id
from choreo.outbox import OutboxRelay, enqueue
from choreo.store.postgres import PostgresStore
from choreo.transport.base import Delivered, OutgoingRecord
from choreo.transport.kafka import KafkaTransport

TOPIC = os.environ.get("OUTBOX_TOPIC", "test.outbox")


class Numbered(Event, topic=TOPIC):
    n: int


def record(gid: str, n: int) -> OutgoingRecord:
    event = Numbered(n=n)
    envelope = Envelope.first(event, gid=gid).evolve(event_id=derived_event_id(gid, str(n)))
    return codec.encode(Message(envelope, event, TOPIC))


class DiesAfterTheAcks(KafkaTransport):
    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        delivered = await super().send_many(records)
        print(f"published {len(records)}; dying before the mark", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        return delivered


async def main() -> None:
    gids = os.environ["OUTBOX_GIDS"].split(",")
    per_gid = int(os.environ["OUTBOX_PER_GID"])
    mode = os.environ["OUTBOX_MODE"]
    store = PostgresStore(os.environ["OUTBOX_URL"], table_prefix=os.environ["OUTBOX_PREFIX"])
    await store.start()
    for n in range(per_gid):
        for gid in gids:
            async with store.pool.acquire() as conn, conn.transaction():
                await enqueue(conn, store.tables, gid, [record(gid, n)])
    print("committed", flush=True)
    if mode == "after-commit":
        os.kill(os.getpid(), signal.SIGKILL)
    transport = DiesAfterTheAcks(os.environ["OUTBOX_BROKER"], partitions=4)
    await transport.start()
    await transport.ensure_topics([TOPIC], 4)
    await OutboxRelay(store, transport, batch_size=50).drain()
    raise SystemExit("unreachable: the relay should have died")


if __name__ == "__main__":
    asyncio.run(main())
