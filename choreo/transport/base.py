"""The transport interface: a partitioned, replayable log with consumer groups.

Two implementations: ``memory`` (in-process, the embedded default and the test harness)
and ``kafka`` (aiokafka). Everything above this module is written against these few
methods, which is what lets one scenario suite run on both.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from choreo.values import value_type

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@value_type
class Record:
    """One record as read from a partition."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers = ()
    timestamp_ms: int = 0

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@value_type
class OutgoingRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = field(default=())


@value_type
class Delivered:
    """The broker's acknowledgement of a send."""

    topic: str
    partition: int
    offset: int


RevokeCallback = Callable[[frozenset[TopicPartition]], Awaitable[None]]
"""Awaited before a rebalance takes partitions away from a consumer, with the partitions
about to be lost: the last chance to finish in-flight work and commit its offsets."""


class Consumer(abc.ABC):
    """A member of a consumer group. Offsets are committed explicitly, never automatically,
    and a new group starts at the earliest offset."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None:
        """Leave the group without committing: uncommitted records will be redelivered."""

    @abc.abstractmethod
    async def getmany(
        self, timeout: float = 0.2, max_records: int = 500
    ) -> Mapping[TopicPartition, Sequence[Record]]:
        """Records fetched since the last call, by partition, in offset order."""

    @abc.abstractmethod
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit ``next offset to read`` per partition."""

    @abc.abstractmethod
    def pause(self, tps: Sequence[TopicPartition]) -> None:
        """Stop returning records of these partitions (backpressure for a partition whose
        work is behind); the position is kept. Partitions not assigned are ignored, and
        a rebalance resumes everything."""

    @abc.abstractmethod
    def resume(self, tps: Sequence[TopicPartition]) -> None: ...

    @abc.abstractmethod
    def assignment(self) -> frozenset[TopicPartition]: ...

    def blocked(self) -> dict[TopicPartition, str]:
        """Assigned partitions this consumer cannot read on, with the reason (a record
        the client library cannot unpack); empty when all flow."""
        return {}

    @abc.abstractmethod
    async def committed(self, tp: TopicPartition) -> int | None: ...

    @abc.abstractmethod
    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]: ...


class Transport(abc.ABC):
    """A connection to the log. ``send`` returns only once the record is durable
    (acks=all on Kafka), because callers commit their input offset right after."""

    url: str

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def ensure_topics(self, topics: Sequence[str], partitions: int | None = None) -> None:
        """Create missing topics; existing ones are left as they are."""

    @abc.abstractmethod
    async def send(self, record: OutgoingRecord) -> Delivered: ...

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        return [await self.send(record) for record in records]

    @abc.abstractmethod
    def consumer(
        self, group: str, topics: Sequence[str], *, on_revoke: RevokeCallback | None = None
    ) -> Consumer:
        """A new (not yet started) member of ``group``. ``on_revoke``, when given, is awaited
        before partitions are taken away by a rebalance (see ``RevokeCallback``)."""

    @abc.abstractmethod
    async def group_offsets(self, group: str) -> dict[TopicPartition, int]:
        """A group's committed offsets, read without joining it (for lag and drains)."""

    @abc.abstractmethod
    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offset each partition will be written at."""

    async def topic_partitions(self, topics: Sequence[str]) -> list[TopicPartition]:
        return [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in range(await self.partitions_for(topic))
        ]

    @abc.abstractmethod
    async def partitions_for(self, topic: str) -> int:
        """How many partitions ``topic`` has (0 when it does not exist)."""

    async def __aenter__(self) -> Transport:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
