"""Reading a deployment's topics from given offsets, outside any consumer group.

The kit must not join the participant's group (it would take partitions from it) and
must start at the offsets it marked before a scenario, which the transport interface
does not offer (its consumers are group members); this module, with the transport's
Kafka modules, imports aiokafka. Settings come from ``KafkaTransport.consumer_kwargs``
(read_committed, security), the group taken out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition as KafkaTopicPartition

from choreo.errors import TransportError
from choreo.transport.base import Record, TopicPartition
from choreo.transport.kafka import KafkaTransport
from choreo.transport.kafka_common import TRANSIENT, quietly, to_record


class Reader:
    """Assigned (not subscribed) to ``tps``; ``read`` seeks to marks and polls."""

    def __init__(self, transport: KafkaTransport, tps: Sequence[TopicPartition]) -> None:
        options = {**transport.consumer_kwargs("unused"), "group_id": None}
        self._consumer: Any = AIOKafkaConsumer(**options)
        self._tps = [KafkaTopicPartition(tp.topic, tp.partition) for tp in tps]

    async def start(self) -> None:
        try:
            await self._consumer.start()
        except TRANSIENT as exc:
            await quietly(self._consumer.stop())
            raise TransportError(f"cannot start the conformance reader: {exc}") from exc
        self._consumer.assign(self._tps)

    async def stop(self) -> None:
        await quietly(self._consumer.stop())

    async def read(
        self,
        marks: dict[TopicPartition, int],
        keep: Callable[[Record], bool],
        until: Callable[[list[Record]], bool],
        timeout: float,
    ) -> tuple[list[Record], bool]:
        """Records from ``marks`` on that ``keep`` accepts, until ``until`` holds of them
        (then on to the end offsets as they are at that moment, so what was published
        together with the awaited records is read too) or ``timeout`` passes. Returns the
        records and whether ``until`` held."""
        for tp in self._tps:
            self._consumer.seek(tp, marks.get(TopicPartition(tp.topic, tp.partition), 0))
        found: list[Record] = []
        deadline = time.monotonic() + timeout
        held = False
        while time.monotonic() < deadline:
            found += await self._poll(keep)
            if until(found):
                held = True
                break
        if held:
            await asyncio.sleep(0.3)  # outputs on other partitions, acknowledged meanwhile
            ends = await self._consumer.end_offsets(self._tps)
            limit = time.monotonic() + timeout
            while time.monotonic() < limit and await self._behind(ends):
                found += await self._poll(keep)
        return found, held

    async def _behind(self, ends: dict[Any, int]) -> bool:
        for tp, end in ends.items():
            if await self._consumer.position(tp) < end:
                return True
        return False

    async def _poll(self, keep: Callable[[Record], bool]) -> list[Record]:
        try:
            batch = await self._consumer.getmany(timeout_ms=100)
        except TRANSIENT as exc:
            raise TransportError(f"cannot read: {exc}") from exc
        found = []
        for messages in batch.values():
            for message in messages:
                record = to_record(message)
                if keep(record):
                    found.append(record)
        return found
