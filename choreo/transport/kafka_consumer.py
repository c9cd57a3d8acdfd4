"""A member of a Kafka consumer group (aiokafka, explicit commits only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    CorruptRecordException,
    IllegalStateError,
)

from choreo.errors import TransportError
from choreo.transport.base import Consumer, Record, RevokeCallback, TopicPartition
from choreo.transport.kafka_common import (
    TRANSIENT,
    from_kafka,
    logger,
    quietly,
    to_kafka,
    to_record,
)

EnsureTopics = Callable[[Sequence[str]], Awaitable[None]]
# What aiokafka raises while unpacking a fetched batch it cannot read: a header key that is
# not UTF-8 (which Kafka's protocol allows any client to write) or a malformed record.
_UNREADABLE = (UnicodeDecodeError, CorruptRecordException)
_ISOLATE_SECONDS = 3.0  # to find the culprit, and to read up to its unreadable batch


class _RevokeListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Awaits the caller's hook before a rebalance takes partitions away. aiokafka runs it
    while the member still owns them, so commits made in the hook succeed."""

    def __init__(self, consumer: KafkaConsumer, on_revoke: RevokeCallback | None) -> None:
        self._consumer = consumer
        self._on_revoke = on_revoke

    async def on_partitions_revoked(self, revoked: Any) -> None:
        lost = frozenset(from_kafka(tp) for tp in revoked)
        logger.debug("group %s: revoking %s", self._consumer.group, sorted(lost))
        for tp in revoked:
            self._consumer.returned.pop(tp, None)
        if self._on_revoke is not None and lost:
            await self._on_revoke(lost)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        logger.debug(
            "group %s: assigned %s",
            self._consumer.group,
            sorted(from_kafka(tp) for tp in assigned),
        )


class KafkaConsumer(Consumer):
    """A member of a Kafka consumer group (aiokafka, explicit commits only)."""

    def __init__(
        self,
        options: Mapping[str, Any],
        ensure_topics: EnsureTopics,
        group: str,
        topics: Sequence[str],
        *,
        on_revoke: RevokeCallback | None = None,
    ) -> None:
        self.options = dict(options)  # AIOKafkaConsumer's keyword arguments
        self.ensure_topics = ensure_topics
        self.group = group
        self.topics = tuple(dict.fromkeys(topics))
        self.on_revoke = on_revoke
        self._consumer: Any = None
        self._blocked: dict[TopicPartition, str] = {}
        # Next offset per (aiokafka) partition past what getmany returned: where to go
        # back to when a poll failed midway (see _isolate).
        self.returned: dict[Any, int] = {}

    async def start(self) -> None:
        if self._consumer is not None:
            return
        # Like the memory broker: subscribing creates missing topics (with our partition
        # count, not the broker's num.partitions).
        await self.ensure_topics(self.topics)
        consumer = AIOKafkaConsumer(**self.options)
        consumer.subscribe(list(self.topics), listener=_RevokeListener(self, self.on_revoke))
        try:
            await consumer.start()
        except TRANSIENT as exc:
            await quietly(consumer.stop())
            raise TransportError(f"consumer of group {self.group!r} cannot start: {exc}") from exc
        except BaseException:
            await quietly(consumer.stop())
            raise
        self._consumer = consumer

    async def stop(self) -> None:
        """Leave the group without committing (auto-commit is off)."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def _require(self) -> Any:
        if self._consumer is None:
            raise TransportError("consumer is not started")
        return self._consumer

    async def getmany(
        self, timeout: float = 0.2, max_records: int = 500
    ) -> Mapping[TopicPartition, Sequence[Record]]:
        consumer = self._require()
        try:
            batch = await consumer.getmany(
                timeout_ms=max(0, int(timeout * 1000)), max_records=max_records
            )
        except ConsumerStoppedError as exc:
            raise TransportError("consumer is not started") from exc
        except TRANSIENT as exc:
            raise TransportError(f"Kafka fetch failed: {exc}") from exc
        except _UNREADABLE:
            batch = await self._isolate(max_records)
        for tp, messages in batch.items():
            if messages:
                self.returned[tp] = messages[-1].offset + 1
        return {
            from_kafka(tp): [to_record(message) for message in messages]
            for tp, messages in batch.items()
            if messages
        }

    async def _isolate(self, max_records: int) -> dict[Any, list[Any]]:
        """aiokafka could not unpack a fetched batch, and would raise on every poll
        without moving on (its position stays before the batch), stopping every
        partition. Poll the partitions one by one to find the culprit (its fetch comes
        back within a moment), read it one record at a time up to the unreadable batch,
        and pause it there, so only its partition stops; ``blocked()`` and the log say
        where. The unreadable records cannot be dead-lettered: the client cannot read
        them, so neither can choreo. What the readable partitions return meanwhile is
        kept, in order."""
        consumer = self._require()
        # The failed poll may have drained other partitions' records before it raised
        # (aiokafka collects partition by partition): they were never returned, but their
        # positions moved past them. Go back to what was returned, or committed.
        for tp in consumer.assignment():
            if tp in self.returned:
                consumer.seek(tp, self.returned[tp])
                continue
            try:
                committed = await consumer.committed(tp)
            except TRANSIENT as exc:
                raise TransportError(f"cannot read committed offset of {tp}: {exc}") from exc
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        batch: dict[Any, list[Any]] = {}
        deadline = time.monotonic() + _ISOLATE_SECONDS
        while time.monotonic() < deadline:
            for tp in sorted(consumer.assignment() - consumer.paused()):
                try:
                    got = await consumer.getmany(tp, timeout_ms=0, max_records=max_records)
                except _UNREADABLE:
                    await self._block(tp, batch)
                    return batch
                except TRANSIENT as exc:
                    raise TransportError(f"Kafka fetch failed: {exc}") from exc
                for part, records in got.items():
                    batch.setdefault(part, []).extend(records)
            await asyncio.sleep(0.05)
        return batch  # not refetched in time: the next poll raises and isolates again

    async def _block(self, tp: Any, batch: dict[Any, list[Any]]) -> None:
        consumer = self._require()
        deadline = time.monotonic() + _ISOLATE_SECONDS
        error: BaseException | None = None
        while time.monotonic() < deadline:  # the readable records before the bad batch
            try:
                got = await consumer.getmany(tp, timeout_ms=100, max_records=1)
            except _UNREADABLE as exc:
                error = exc
                break
            for part, records in got.items():
                batch.setdefault(part, []).extend(records)
        consumer.pause(tp)
        position = await consumer.position(tp)
        ours = from_kafka(tp)
        cause = f"{type(error).__name__}: {str(error)[:200]}" if error else "unreadable"
        reason = (
            f"the record batch at offset {position} cannot be read by the Kafka client "
            f"({cause}); partition paused. To skip it, stop the service and move group "
            f"{self.group!r} past it (kafka-consumer-groups.sh --reset-offsets "
            f"--to-offset N --topic {ours.topic}:{ours.partition})"
        )
        self._blocked[ours] = reason
        logger.error("group %s: %s: %s", self.group, ours, reason)

    def blocked(self) -> dict[TopicPartition, str]:
        """Partitions stopped on records the Kafka client cannot read, with the reason;
        a rebalance resumes them (and they stop again if the record is still there)."""
        assigned = self.assignment()
        return {tp: why for tp, why in self._blocked.items() if tp in assigned}

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit ``next offset to read`` per partition. Partitions this member no longer
        owns are skipped, and a commit refused because the group rebalanced meanwhile is
        logged, not raised: the new owner reads those records again (at-least-once)."""
        consumer = self._require()
        owned = self.assignment()
        mine = {to_kafka(tp): offset for tp, offset in offsets.items() if tp in owned}
        lost = sorted(tp for tp in offsets if tp not in owned)
        if lost:
            logger.warning(
                "group %s: not committing %s, no longer assigned (they will be redelivered)",
                self.group,
                ", ".join(map(str, lost)),
            )
        if not mine:
            return
        try:
            await consumer.commit(mine)
        except (CommitFailedError, IllegalStateError) as exc:
            logger.warning(
                "group %s: commit of %s failed after a rebalance (records will be "
                "redelivered to the new owner): %s",
                self.group,
                ", ".join(str(from_kafka(tp)) for tp in mine),
                exc,
            )
        except TRANSIENT as exc:
            raise TransportError(f"Kafka commit failed: {exc}") from exc

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        self._flow(tps, pause=True)

    def resume(self, tps: Sequence[TopicPartition]) -> None:
        self._flow(tps, pause=False)

    def _flow(self, tps: Sequence[TopicPartition], *, pause: bool) -> None:
        if self._consumer is None:
            return
        # aiokafka refuses partitions it no longer owns; a rebalance clears pauses anyway.
        owned = self._consumer.assignment()
        mine = [kt for kt in map(to_kafka, tps) if kt in owned]
        if mine:
            (self._consumer.pause if pause else self._consumer.resume)(*mine)

    def assignment(self) -> frozenset[TopicPartition]:
        if self._consumer is None:
            return frozenset()
        return frozenset(from_kafka(tp) for tp in self._consumer.assignment())

    async def committed(self, tp: TopicPartition) -> int | None:
        consumer = self._require()
        try:
            offset = await consumer.committed(to_kafka(tp))
        except TRANSIENT as exc:
            raise TransportError(f"cannot read committed offset of {tp}: {exc}") from exc
        return None if offset is None else int(offset)

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        consumer = self._require()
        try:
            offsets = await consumer.end_offsets([to_kafka(tp) for tp in tps])
        except TRANSIENT as exc:
            raise TransportError(f"cannot read end offsets: {exc}") from exc
        return {from_kafka(tp): int(offset) for tp, offset in offsets.items()}
