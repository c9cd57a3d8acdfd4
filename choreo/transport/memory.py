"""The in-memory transport: a partitioned log with consumer groups in one process.

Faithful where correctness depends on it: records keyed by gid land in murmur2
partitions, a group shares partitions among its members, offsets are committed
explicitly, a new group starts at the earliest offset, and a member that leaves
without committing has its records redelivered to whoever owns the partition next.
Several services share one ``MemoryBroker`` object; there is no global registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from choreo.errors import ConfigurationError, TransportError
from choreo.transport.base import (
    Consumer,
    Delivered,
    OutgoingRecord,
    Record,
    RevokeCallback,
    TopicPartition,
    Transport,
)
from choreo.transport.partitioner import partition_for


@dataclass
class _Group:
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    members: list[MemoryConsumer] = field(default_factory=list)
    generation: int = 0


class MemoryBroker:
    """The shared log. Create one per process (or per test) and hand it to every app."""

    def __init__(self, default_partitions: int = 4) -> None:
        if default_partitions < 1:
            raise ConfigurationError("default_partitions must be >= 1")
        self.default_partitions = default_partitions
        self._logs: dict[str, list[list[Record]]] = {}
        self._groups: dict[str, _Group] = {}
        self._changed = asyncio.Event()
        self._counter = itertools.count()

    # -- topics ---------------------------------------------------------------
    def create_topic(self, topic: str, partitions: int | None = None) -> None:
        if topic not in self._logs:
            self._logs[topic] = [[] for _ in range(partitions or self.default_partitions)]
            self._rebalance_all()

    def topics(self) -> list[str]:
        return sorted(self._logs)

    def partitions(self, topic: str) -> int:
        return len(self._logs.get(topic, ()))

    def records(self, topic: str) -> list[Record]:
        """Every record of a topic, partition by partition (for tests and replays)."""
        return [record for log in self._logs.get(topic, []) for record in log]

    def end_offset(self, tp: TopicPartition) -> int:
        logs = self._logs.get(tp.topic)
        return len(logs[tp.partition]) if logs and tp.partition < len(logs) else 0

    def read(self, tp: TopicPartition, offset: int, limit: int) -> list[Record]:
        return self._logs[tp.topic][tp.partition][offset : offset + limit]

    async def append(self, out: OutgoingRecord) -> Delivered:
        delivered = self._append(out)
        self.wake()
        return delivered

    async def append_many(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        delivered = [self._append(out) for out in records]
        if delivered:
            self.wake()
        return delivered

    def _append(self, out: OutgoingRecord) -> Delivered:
        self.create_topic(out.topic)
        logs = self._logs[out.topic]
        partition = partition_for(out.key, len(logs), next(self._counter))
        offset = len(logs[partition])
        logs[partition].append(
            Record(
                topic=out.topic,
                partition=partition,
                offset=offset,
                key=out.key,
                value=out.value,
                headers=out.headers,
                timestamp_ms=int(time.time() * 1000),
            )
        )
        return Delivered(out.topic, partition, offset)

    def wake(self) -> None:
        """Wake every consumer waiting for records (a new event each round, so a waiter
        never sees a stale 'set')."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def notify(self) -> None:
        self.wake()

    async def wait_changed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    # -- groups ---------------------------------------------------------------
    def group(self, name: str) -> _Group:
        return self._groups.setdefault(name, _Group())

    def groups(self) -> list[str]:
        return sorted(self._groups)

    def committed(self, group: str, tp: TopicPartition) -> int | None:
        return self.group(group).committed.get(tp)

    def join(self, member: MemoryConsumer) -> None:
        group = self.group(member.group)
        group.members.append(member)
        self._rebalance(group)

    def leave(self, member: MemoryConsumer) -> None:
        group = self.group(member.group)
        if member in group.members:
            group.members.remove(member)
            self._rebalance(group)

    def _rebalance_all(self) -> None:
        for group in self._groups.values():
            self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        """Range-style assignment in join order; a member keeps its fetch position only
        for partitions it already owned, the rest restart at the committed offset."""
        group.generation += 1
        wanted: dict[int, list[TopicPartition]] = {id(m): [] for m in group.members}
        topics = sorted({t for m in group.members for t in m.topics if t in self._logs})
        for topic in topics:
            subscribers = [m for m in group.members if topic in m.topics]
            for partition in range(len(self._logs[topic])):
                owner = subscribers[partition % len(subscribers)]
                wanted[id(owner)].append(TopicPartition(topic, partition))
        for member in group.members:
            member.assign(wanted[id(member)], group)


class MemoryConsumer(Consumer):
    """``on_revoke`` is accepted for interface parity but never called: the memory broker
    rebalances synchronously, inside ``start``/``stop`` of some member, so there is no
    moment to await it. A member that lost a partition has its later commits for it
    ignored, and the new owner sees those records again (as with Kafka's CommitFailedError).
    """

    def __init__(
        self,
        broker: MemoryBroker,
        group: str,
        topics: Sequence[str],
        *,
        on_revoke: RevokeCallback | None = None,
    ) -> None:
        self.broker = broker
        self.group = group
        self.topics = tuple(topics)
        self.on_revoke = on_revoke
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._running = False

    def assign(self, tps: Sequence[TopicPartition], group: _Group) -> None:
        self._positions = {
            tp: self._positions.get(tp, group.committed.get(tp, 0)) for tp in sorted(tps)
        }
        self._paused.clear()  # as Kafka's consumer forgets pauses on a rebalance

    async def start(self) -> None:
        for topic in self.topics:
            self.broker.create_topic(topic)
        self._running = True
        self.broker.join(self)

    async def stop(self) -> None:
        if self._running:
            self._running = False
            self.broker.leave(self)
            await self.broker.notify()

    def _fetch(self, max_records: int) -> dict[TopicPartition, list[Record]]:
        out: dict[TopicPartition, list[Record]] = {}
        budget = max_records
        for tp, position in self._positions.items():
            if budget <= 0:
                break
            if tp in self._paused:
                continue
            records = self.broker.read(tp, position, budget)
            if records:
                out[tp] = records
                self._positions[tp] = position + len(records)
                budget -= len(records)
        return out

    async def getmany(
        self, timeout: float = 0.2, max_records: int = 500
    ) -> Mapping[TopicPartition, Sequence[Record]]:
        if not self._running:
            raise TransportError("consumer is not started")
        batch = self._fetch(max_records)
        if not batch and timeout > 0:
            await self.broker.wait_changed(timeout)
            batch = self._fetch(max_records)
        return batch

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        group = self.broker.group(self.group)
        for tp, offset in offsets.items():
            # A partition taken away by a rebalance is not ours to commit: like Kafka's
            # CommitFailedError, the new owner will see those records again.
            if tp in self._positions:
                group.committed[tp] = offset

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        self._paused.update(tp for tp in tps if tp in self._positions)

    def resume(self, tps: Sequence[TopicPartition]) -> None:
        self._paused.difference_update(tps)
        self.broker.wake()  # a poll waiting meanwhile may now have records

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self._positions)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.broker.committed(self.group, tp)

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.broker.end_offset(tp) for tp in tps}


class MemoryTransport(Transport):
    def __init__(self, broker: MemoryBroker | None = None, url: str = "memory://") -> None:
        self.broker = broker or MemoryBroker()
        self.url = url

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def ensure_topics(self, topics: Sequence[str], partitions: int | None = None) -> None:
        for topic in topics:
            self.broker.create_topic(topic, partitions)

    async def send(self, record: OutgoingRecord) -> Delivered:
        return await self.broker.append(record)

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        return await self.broker.append_many(records)

    def consumer(
        self, group: str, topics: Sequence[str], *, on_revoke: RevokeCallback | None = None
    ) -> Consumer:
        return MemoryConsumer(self.broker, group, topics, on_revoke=on_revoke)

    async def partitions_for(self, topic: str) -> int:
        return self.broker.partitions(topic)

    async def group_offsets(self, group: str) -> dict[TopicPartition, int]:
        return dict(self.broker.group(group).committed)

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.broker.end_offset(tp) for tp in tps}
