"""The consume loop: in order within a partition, concurrent across partitions, and an
offset committed only once the record's effects and outgoing events are acknowledged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from choreo.dispatch import Dispatcher
from choreo.errors import TransportError
from choreo.middleware import Middleware
from choreo.transport.base import Consumer, Record, TopicPartition, Transport

log = logging.getLogger("choreo.worker")

# Errors that mean "the store or broker is unwell": the record is retried, not dropped,
# and the partition waits, because skipping it would break per-gid order.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    TransportError,
    ConnectionError,
    TimeoutError,
    OSError,
)


class Worker:
    def __init__(
        self,
        *,
        transport: Transport,
        group: str,
        topics: Sequence[str],
        dispatcher: Dispatcher,
        middleware: Sequence[Middleware] = (),
        infra_backoff_max: float = 5.0,
        batch_size: int = 100,
    ) -> None:
        self.transport = transport
        self.group = group
        self.topics = tuple(topics)
        self.dispatcher = dispatcher
        self.middleware = tuple(middleware)
        self.infra_backoff_max = infra_backoff_max
        # Small batches keep a rebalance's wait for the batch in hand short.
        self.batch_size = batch_size
        self.consumer: Consumer | None = None
        self._pending: dict[TopicPartition, int] = {}
        self._batch: asyncio.Future[list[None]] | None = None
        self._commit_lock = asyncio.Lock()
        self.processed = 0

    async def run(self, stopping: asyncio.Event) -> None:
        self.consumer = self.transport.consumer(self.group, self.topics, on_revoke=self._on_revoke)
        await self.consumer.start()
        try:
            while not stopping.is_set():
                batch = await self.consumer.getmany(timeout=0.1, max_records=self.batch_size)
                if not batch:
                    continue
                self._batch = asyncio.ensure_future(
                    asyncio.gather(*(self._partition(records) for records in batch.values()))
                )
                await self._batch
                self._batch = None
                await self._commit()
        finally:
            await self.consumer.stop()

    async def _partition(self, records: Sequence[Record]) -> None:
        for record in records:
            await self._process(record)
            self._pending[record.tp] = record.offset + 1
            self.processed += 1

    async def _process(self, record: Record) -> None:
        delay = 0.1
        while True:
            try:
                await self.dispatcher.handle(record)
                return
            except INFRASTRUCTURE_ERRORS as exc:
                log.warning(
                    "%s[%d]@%d: infrastructure error, retrying in %.1fs: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.infra_backoff_max)

    async def _commit(self) -> None:
        async with self._commit_lock:
            if not self._pending or self.consumer is None:
                return
            offsets, self._pending = self._pending, {}
            await self.consumer.commit(offsets)
        for mw in self.middleware:
            await mw.after_commit(offsets)

    async def _on_revoke(self, revoked: frozenset[TopicPartition]) -> None:
        """Finish and commit the work in hand before a rebalance hands it to someone else;
        never commit past what finished."""
        if self._batch is not None:
            await asyncio.shield(self._batch)
        await self._commit()
