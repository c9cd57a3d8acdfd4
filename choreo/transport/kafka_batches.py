"""One sender per partition, handing the producer ready-built record batches.

A step service's partitions are handled concurrently (``choreo.worker``), and each
handled batch sends its outputs to every partition of the next topic, so several callers
send to one partition at the same time. aiokafka's per-record ``send`` serves that, at a
cost of a future, a metadata lookup and a Python append per record (most of the
transport's CPU per record); its ``send_batch`` takes a whole batch at once, but its wait
for a free slot times concurrent waiters out long before the request timeout (the slot
check subtracts the time waited since the first pass on every pass).

So each partition gets one sender task, the only caller of ``send_batch`` for it: callers
queue their records, the sender appends everything queued (in order) into closed batches
and hands each to the producer, which keeps one batch in flight per partition (the
idempotent producer's rule). What arrives while a batch is in flight is built into the
next one: batches grow with the load, without a linger delay at low load.

A caller gets, per batch its records went into, the batch's acknowledgement future and
their position in it (a batch's records sit at consecutive offsets from the one
acknowledged). An error building or queueing a batch fails every caller whose records
were not handed over yet; a caller that gives up (cancelled) before its records are built
has them dropped. Records one caller queues keep their order, and so do the callers of
one partition: the sender takes them first come, first served.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from choreo.transport.base import OutgoingRecord

Part = tuple["asyncio.Future[Any]", int, int, int]
"""A batch's acknowledgement, the position in it of the caller's first record there, the
index of that record among the caller's, and how many of the caller's records it holds."""


@dataclass(eq=False)
class _Queued:
    records: Sequence[OutgoingRecord]
    handed: asyncio.Future[list[Part]]  # set once every record is in a handed-over batch
    next: int = 0  # the first record not yet built into a batch
    parts: list[Part] = field(default_factory=list)


class PartitionBatches:
    """The queues and sender tasks of one producer's partitions."""

    def __init__(self) -> None:
        self._queues: dict[tuple[Any, str, int], deque[_Queued]] = {}
        self._senders: dict[tuple[Any, str, int], asyncio.Task[None]] = {}

    def submit(
        self, producer: Any, topic: str, partition: int, records: Sequence[OutgoingRecord]
    ) -> asyncio.Future[list[Part]]:
        """Queue ``records`` (non-empty, all of this partition); the future resolves to
        the parts once all of them are handed to the producer."""
        handed: asyncio.Future[list[Part]] = asyncio.get_running_loop().create_future()
        key = (producer, topic, partition)
        self._queues.setdefault(key, deque()).append(_Queued(records, handed))
        if key not in self._senders:
            task = asyncio.create_task(self._send(key), name=f"choreo-send:{topic}[{partition}]")
            self._senders[key] = task
        return handed

    async def stop(self) -> None:
        """Cancel the senders (the producer is being stopped): callers still waiting for
        their records to be handed over are failed with CancelledError."""
        tasks = list(self._senders.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(self, key: tuple[Any, str, int]) -> None:
        producer, topic, partition = key
        queue = self._queues[key]
        # (caller, position in the batch, index of its first record, count) per caller
        # whose records are in the batch being built
        building: list[tuple[_Queued, int, int, int]] = []
        try:
            while queue:
                builder = producer.create_batch()
                building = []
                position = 0
                while queue:
                    queued = queue[0]
                    if queued.handed.done():  # its caller gave up: nothing more of it
                        queue.popleft()
                        continue
                    first, start = queued.next, position
                    for record in queued.records[first:]:
                        if builder.append(timestamp=None, key=record.key, value=record.value,
                                          headers=list(record.headers)) is None:  # fmt: skip
                            break  # full (an empty batch always takes its first record)
                        position += 1
                    queued.next = first + position - start
                    if queued.next > first:
                        building.append((queued, start, first, queued.next - first))
                    if queued.next < len(queued.records):
                        break  # the batch is full; the rest goes into the next one
                    queue.popleft()
                if not building:
                    continue
                # Closed: the batch is whole, so the producer sends it at once instead of
                # lingering for records that will not come.
                builder.close()
                ack = await producer.send_batch(builder, topic, partition=partition)
                for queued, start, first, count in building:
                    queued.parts.append((ack, start, first, count))
                    if queued.next == len(queued.records) and not queued.handed.done():
                        queued.handed.set_result(queued.parts)
                building = []
        except BaseException as exc:
            failed = exc if isinstance(exc, Exception) else asyncio.CancelledError()
            for queued in [entry[0] for entry in building] + list(queue):
                if not queued.handed.done():
                    queued.handed.set_exception(failed)
            queue.clear()
            if not isinstance(exc, Exception):
                raise
        finally:
            # Nothing awaits between the queue running empty and here, so no caller
            # queued records that this sender will not see.
            self._queues.pop(key, None)
            self._senders.pop(key, None)
