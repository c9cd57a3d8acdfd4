"""Reading the dead-letter topic for people: every record described, found by id, replayed.

A dead letter's id is ``partition:offset`` in the DLQ topic (``2:17``): short to type and
stable for as long as the record is retained. The reader joins a throwaway consumer group
(it never commits), reads from the beginning up to the end offsets taken when asked, and
keeps the newest ``keep`` records, so a long-lived reader only fetches what is new.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from typing import Any

from choreo import codec
from choreo.deadletter import (
    DLQ_HEADERS,
    DLQ_TOPIC,
    H_AT,
    H_ATTEMPTS,
    H_HANDLER,
    H_KIND,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_SERVICE,
    H_TOPIC,
)
from choreo.errors import TransportError
from choreo.transport.base import Consumer, Record, TopicPartition, Transport

PAYLOAD_PREVIEW = 65_536


def dead_letter_id(record: Record) -> str:
    return f"{record.partition}:{record.offset}"


def parse_dead_letter_id(text: str) -> tuple[int, int]:
    """``"2:17"`` -> (2, 17); ValueError for anything else."""
    partition, sep, offset = text.strip().partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{text!r} is not a dead-letter id like 2:17 (partition:offset)")
    return int(partition), int(offset)


def _text(record: Record, name: str) -> str:
    value = record.header(name)
    return "" if value is None else value.decode(errors="replace")


def _int(text: str, default: int = 0) -> int:
    return int(text) if text.lstrip("-").isdigit() else default


def record_gid(record: Record) -> str:
    return _text(record, codec.H_GID) or (record.key.decode(errors="replace") if record.key else "")


def describe(record: Record, *, payload: bool = False) -> dict[str, Any]:
    """A DLQ record as JSON for people and machines; ``payload`` adds the bytes (as text)
    and every header, for ``choreo dlq show``."""
    at_ms = _int(_text(record, H_AT), record.timestamp_ms)
    info: dict[str, Any] = {
        "id": dead_letter_id(record),
        "gid": record_gid(record),
        "event_type": _text(record, codec.H_TYPE),
        "event_id": _text(record, codec.H_ID),
        "saga": _text(record, codec.H_SAGA),
        "step": _text(record, codec.H_STEP),
        "op": _text(record, codec.H_OP),
        "kind": _text(record, H_KIND),
        "reason": _text(record, H_REASON),
        "service": _text(record, H_SERVICE),
        "handler": _text(record, H_HANDLER),
        "attempts": _int(_text(record, H_ATTEMPTS)),
        "topic": _text(record, H_TOPIC) or record.topic,
        "partition": _int(_text(record, H_PARTITION), -1),
        "offset": _int(_text(record, H_OFFSET), -1),
        "dead_at": at_ms / 1000,
        "size": len(record.value),
    }
    if payload:
        info["headers"] = {
            name: value.decode(errors="replace")
            for name, value in record.headers
            if name not in DLQ_HEADERS
        }
        info["payload"] = record.value[:PAYLOAD_PREVIEW].decode(errors="replace")
        info["payload_truncated"] = len(record.value) > PAYLOAD_PREVIEW
    return info


class DeadLetterReader:
    """Keeps the newest dead letters in memory; ``refresh`` catches up with the topic."""

    def __init__(self, transport: Transport, topic: str = DLQ_TOPIC, keep: int = 10_000) -> None:
        self.transport = transport
        self.topic = topic
        self.keep = keep
        self.group = f"choreo.ops.dlq-reader.{uuid.uuid4().hex[:12]}"
        self._records: OrderedDict[tuple[int, int], Record] = OrderedDict()
        self._next: dict[TopicPartition, int] = {}
        self._consumer: Consumer | None = None
        self._lock = asyncio.Lock()

    async def refresh(self, timeout: float = 10.0) -> None:
        """Read up to the end offsets as they are now; TransportError if that takes longer
        than ``timeout`` seconds (a Kafka group join takes a few seconds the first time)."""
        async with self._lock:
            partitions = await self.transport.partitions_for(self.topic)
            if partitions == 0:
                return
            tps = [TopicPartition(self.topic, p) for p in range(partitions)]
            ends = await self.transport.end_offsets(tps)
            behind = {tp for tp, end in ends.items() if self._next.get(tp, 0) < end}
            if not behind:
                return
            if self._consumer is None:
                self._consumer = self.transport.consumer(self.group, [self.topic])
                await self._consumer.start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while behind:
                if loop.time() > deadline:
                    raise TransportError(
                        f"reading {self.topic} took over {timeout:g}s; "
                        f"{', '.join(map(str, sorted(behind)))} not read to the end"
                    )
                for tp, records in (await self._consumer.getmany(timeout=0.2)).items():
                    for record in records:
                        self._records[(record.partition, record.offset)] = record
                        self._next[tp] = record.offset + 1
                    if self._next.get(tp, 0) >= ends.get(tp, 0):
                        behind.discard(tp)
                while len(self._records) > self.keep:
                    self._records.popitem(last=False)

    def records(self, gid: str | None = None) -> list[Record]:
        """Newest first (by the time they were dead-lettered)."""
        found = [r for r in self._records.values() if gid is None or record_gid(r) == gid]
        found.sort(key=lambda r: (_int(_text(r, H_AT), r.timestamp_ms), r.partition, r.offset))
        return found[::-1]

    def get(self, dead_id: str) -> Record | None:
        return self._records.get(parse_dead_letter_id(dead_id))

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> DeadLetterReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
