"""The transactional outbox in PostgreSQL and its relay (docs/postgres.md, "The outbox").

Events that no consumed record caused (a saga's start written together with the order
row, ``Service.transaction()``) are rows of ``<prefix>outbox``, committed in the user's
transaction. The relay publishes them to Kafka and marks them sent:

- per gid in id order: a relay takes a gid only under a transaction-scoped advisory lock
  on it (``pg_try_advisory_xact_lock``, skipping gids another relay holds), then that
  gid's unsent rows ``FOR UPDATE`` in a new statement, so several relays share the work
  and never interleave one saga's rows;
- the rows are marked sent in the same transaction that locked them, after the broker
  acknowledged them (idempotent producer, acks=all): a relay killed before the publish
  leaves them unsent for the next one, a relay killed after the publish and before the
  mark publishes them again with the same event ids, which the consumers' barrier drops;
- it is woken by ``NOTIFY <prefix>outbox`` (sent by the writer in its transaction, so at
  its commit) and polls every ``poll_interval`` seconds as well, in case a notification
  was missed (the listening connection dropped, a writer that does not notify).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from choreo import codec
from choreo.errors import TransportError
from choreo.events import Envelope, Event, Message
from choreo.retry import INFRASTRUCTURE_RETRY, Backoff
from choreo.store.postgres import Connection, PostgresStore, Tables, _db_errors
from choreo.transport.base import OutgoingRecord, Transport

log = logging.getLogger("choreo.outbox")


async def enqueue(
    conn: Connection,
    tables: Tables,
    gid: str,
    records: Sequence[OutgoingRecord],
    *,
    dedupe_key: str | None = None,
) -> bool:
    """Write one outbox row (``records`` of one gid) in the caller's open transaction and
    notify the relays at its commit. With ``dedupe_key`` a second row of the same key is
    not written (returns False): an idempotent start."""
    inserted = await conn.fetchval(
        f"INSERT INTO {tables.outbox} (gid, records, dedupe_key) VALUES ($1, $2, $3)"
        f" ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING RETURNING true",
        gid,
        codec.pack_outbox(records),
        dedupe_key,
    )
    if inserted:
        await conn.execute("SELECT pg_notify($1, '')", tables.channel)
    return bool(inserted)


class LocalTransaction:
    """What ``Service.transaction()`` yields: ``db``, an open transaction on the
    service's PostgreSQL store, and ``start``/``publish``, which write events to the
    outbox in that transaction. The events exist if and only if the transaction commits;
    the relay then publishes them."""

    def __init__(self, db: Connection, tables: Tables, service: str, saga_of: Any) -> None:
        self.db = db
        self._tables = tables
        self._service = service
        self._saga_of = saga_of
        self.repeated: list[Envelope] = []  # starts whose key was already used

    async def start(
        self,
        event: Event,
        *,
        key: str | None = None,
        gid: str | None = None,
        saga: str | None = None,
    ) -> Envelope:
        """Start a saga with ``event``. ``key`` (default: ``gid``, when given) makes the
        start idempotent: the gid and the event id are derived from it, and a second start
        with the same key writes nothing (it is listed in ``repeated``), so a start retried
        after an ambiguous failure never starts a second saga. Without either, a new gid."""
        dedupe = key if key is not None else gid
        envelope = Envelope.keyed(
            event, key=dedupe, gid=gid, saga=self._saga_of(event) if saga is None else saga,
            source=self._service,
        )  # fmt: skip
        record = codec.encode(Message(envelope, event, event.topic))
        if not await enqueue(self.db, self._tables, envelope.gid, [record], dedupe_key=dedupe):
            self.repeated.append(envelope)
        return envelope

    async def publish(self, event: Event, *, gid: str, saga: str = "") -> Envelope:
        """Publish ``event`` (a command, a fact of saga ``gid``) when the transaction
        commits."""
        envelope = Envelope.first(event, gid=gid, saga=saga, source=self._service)
        await enqueue(
            self.db, self._tables, gid, [codec.encode(Message(envelope, event, event.topic))]
        )
        return envelope


class OutboxRelay:
    """Publishes a PostgreSQL store's outbox rows through ``transport`` until stopped."""

    def __init__(
        self,
        store: PostgresStore,
        transport: Transport,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.transport = transport
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.published = 0  # rows published by this relay (a re-publication counts again)
        t = store.tables
        self._wake = asyncio.Event()
        self.listening = asyncio.Event()  # set while the LISTEN connection is up
        # First the gids: those of the oldest unsent rows that no other relay holds (a
        # transaction-scoped advisory lock per gid). Then, in a new statement, so that
        # its snapshot sees what the gid's previous holder marked before it let go, the
        # unsent rows of those gids in id order. (Skipping locked *rows* instead would let
        # a relay take a gid's later rows while another is still sending its earlier ones.)
        self._gids = (
            f"SELECT g FROM (SELECT DISTINCT gid AS g FROM (SELECT gid FROM {t.outbox}"
            f" WHERE sent_at IS NULL ORDER BY id LIMIT $1) AS oldest) AS c"
            f" WHERE pg_try_advisory_xact_lock(hashtextextended(g, {_GID_LOCK_SEED}))"
        )
        self._take = (
            f"SELECT id, gid, records FROM {t.outbox}"
            f" WHERE sent_at IS NULL AND gid = ANY($1::text[]) ORDER BY id LIMIT $2 FOR UPDATE"
        )
        self._mark = f"UPDATE {t.outbox} SET sent_at = now() WHERE id = ANY($1::bigint[])"

    async def drain_once(self) -> int:
        """Publish one batch of unsent rows and mark them sent; returns how many."""
        with _db_errors(self.store.url):
            async with self.store.pool.acquire() as conn, conn.transaction():
                gids = [row["g"] for row in await conn.fetch(self._gids, self.batch_size)]
                if not gids:
                    return 0
                rows = await conn.fetch(self._take, gids, self.batch_size)
                if not rows:
                    return 0
                records = [r for row in rows for r in codec.unpack_outbox(row["records"])]
                await self.transport.send_many(records)
                await conn.execute(self._mark, [row["id"] for row in rows])
        self.published += len(rows)
        return len(rows)

    async def drain(self) -> int:
        """Publish until no unsent row is left (that this relay may take)."""
        total = 0
        while True:
            sent = await self.drain_once()
            total += sent
            if sent < self.batch_size:
                return total

    async def run(self, stopping: asyncio.Event) -> None:
        listener = asyncio.create_task(self._listen(stopping), name="choreo-outbox-listen")
        backoff = Backoff(INFRASTRUCTURE_RETRY, stopping)
        try:
            while not stopping.is_set():
                self._wake.clear()
                try:
                    await self.drain()
                    backoff.reset()
                except TransportError as exc:
                    log.warning("outbox relay: %s; retrying", exc)
                    if not await backoff.wait():
                        return
                    continue
                await _first(stopping, self._wake, timeout=self.poll_interval)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self, stopping: asyncio.Event) -> None:
        """Keep a LISTEN connection open; while it is down the relay only polls."""
        channel = self.store.tables.channel

        def wake(*_: Any) -> None:
            self._wake.set()

        while not stopping.is_set():
            conn: asyncpg.Connection[Any] | None = None
            try:
                conn = await asyncpg.connect(self.store.url, timeout=10)
                await conn.add_listener(channel, wake)
                self.listening.set()
                self._wake.set()  # anything committed while we were not listening
                while not stopping.is_set() and not conn.is_closed():
                    await _first(stopping, timeout=min(self.poll_interval, 5.0))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.info("outbox relay: LISTEN connection lost (%s); polling meanwhile", exc)
                await _first(stopping, timeout=self.poll_interval)
            finally:
                self.listening.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)


_GID_LOCK_SEED = 7_262_671  # keeps the relay's gid locks apart from the kv locks


async def _first(*events: asyncio.Event, timeout: float) -> None:
    """Wait until one of ``events`` is set or ``timeout`` passes."""
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
