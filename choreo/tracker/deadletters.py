"""Reading the dead-letter topic for people: every record described, found by id, replayed.

A dead letter's id is ``partition:offset`` in the DLQ topic (``2:17``): short to type and
stable for as long as the record is retained. The reader joins a throwaway consumer group
(it never commits), reads from the beginning up to the end offsets taken when asked, and
keeps the newest ``keep`` dead letters, so a long-lived reader only fetches what is new.

It keeps previews, not records: the first ``VALUE_PREVIEW`` bytes of a value, of each
header ``HEADER_PREVIEW`` bytes and of all headers ``HEADERS_PREVIEW`` bytes (choreo's
own dead-letter headers aside, each kept once), so memory stays bounded (under 30 kB a
dead letter) however large the dead letters are. A replay needs the whole record:
``fetch`` reads again the ones a preview does not hold whole.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from choreo import codec
from choreo.deadletter import (
    DLQ_HEADERS,
    DLQ_TOPIC,
    H_AT,
    H_ATTEMPTS,
    H_DROPPED,
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

VALUE_PREVIEW = 4096
HEADER_PREVIEW = 1024  # choreo's own headers are shorter (the reason is cut at 4000)
REASON_PREVIEW = 4096
HEADERS_PREVIEW = 8192
KEY_PREVIEW = 256
MAX_ID_CHARS = 40

Coordinates = tuple[int, int]


def dead_letter_id(record: Record | DeadLetterPreview) -> str:
    return f"{record.partition}:{record.offset}"


def parse_dead_letter_id(text: str) -> Coordinates:
    """``"2:17"`` -> (2, 17); ValueError for anything else."""
    shown = text if len(text) <= MAX_ID_CHARS else text[:MAX_ID_CHARS] + "..."
    partition, sep, offset = text.strip().partition(":")
    if (
        not sep
        or len(text) > MAX_ID_CHARS
        or not (partition.isascii() and partition.isdigit())
        or not (offset.isascii() and offset.isdigit())
    ):
        raise ValueError(f"{shown!r} is not a dead-letter id like 2:17 (partition:offset)")
    return int(partition), int(offset)


@dataclass(frozen=True, slots=True)
class DeadLetterPreview:
    """What the reader keeps of a dead letter: its coordinates, a cut key, value and
    headers, the whole value's size, and whether anything was cut (then a replay reads
    the record again)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int
    size: int
    cut: bool

    @classmethod
    def of(cls, record: Record) -> DeadLetterPreview:
        own: dict[str, bytes] = {}  # choreo's dead-letter headers, always kept (cut)
        headers: list[tuple[str, bytes]] = []
        budget, cut = HEADERS_PREVIEW, False
        for name, raw in record.headers:
            value = raw or b""
            if name in DLQ_HEADERS:
                most = REASON_PREVIEW if name == H_REASON else HEADER_PREVIEW
                cut = cut or name in own or len(value) > most
                own.setdefault(name, value[:most])
                continue
            if budget <= 0:
                cut = True
                continue
            kept = value[: min(HEADER_PREVIEW, budget)]
            cut = cut or len(kept) < len(value) or len(name) > KEY_PREVIEW
            headers.append((name[:KEY_PREVIEW], kept))
            budget -= len(kept) + min(len(name), KEY_PREVIEW)
        key = None if record.key is None else record.key[:KEY_PREVIEW]
        value = record.value[:VALUE_PREVIEW]
        cut = cut or key != record.key or len(value) < len(record.value)
        return cls(
            record.partition,
            record.offset,
            key,
            value,
            (*headers, *own.items()),
            record.timestamp_ms,
            len(record.value),
            cut,
        )

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def _text(record: Record | DeadLetterPreview, name: str) -> str:
    value = record.header(name)
    return "" if value is None else value.decode(errors="replace")


def _int(text: str, default: int = 0) -> int:
    digits = text.removeprefix("-")
    return int(text) if digits.isascii() and digits.isdigit() and len(digits) <= 18 else default


def record_gid(record: Record | DeadLetterPreview) -> str:
    return _text(record, codec.H_GID) or (record.key.decode(errors="replace") if record.key else "")


def describe(dead: DeadLetterPreview, *, payload: bool = False) -> dict[str, Any]:
    """A dead letter as JSON for people and machines; ``payload`` adds the preview of its
    value (as text) and every header, for ``choreo dlq show``."""
    at_ms = _int(_text(dead, H_AT), dead.timestamp_ms)
    info: dict[str, Any] = {
        "id": dead_letter_id(dead),
        "gid": record_gid(dead),
        "event_type": _text(dead, codec.H_TYPE),
        "event_id": _text(dead, codec.H_ID),
        "saga": _text(dead, codec.H_SAGA),
        "step": _text(dead, codec.H_STEP),
        "op": _text(dead, codec.H_OP),
        "kind": _text(dead, H_KIND),
        "reason": _text(dead, H_REASON),
        "service": _text(dead, H_SERVICE),
        "handler": _text(dead, H_HANDLER),
        "attempts": _int(_text(dead, H_ATTEMPTS)),
        "topic": _text(dead, H_TOPIC),
        "partition": _int(_text(dead, H_PARTITION), -1),
        "offset": _int(_text(dead, H_OFFSET), -1),
        "dead_at": at_ms / 1000,
        "size": dead.size,
    }
    if dead.header(H_DROPPED) is not None:
        info["dropped"] = _text(dead, H_DROPPED)
    if payload:
        info["headers"] = {
            name: value.decode(errors="replace")
            for name, value in dead.headers
            if name not in DLQ_HEADERS
        }
        info["payload"] = dead.value.decode(errors="replace")
        info["payload_truncated"] = dead.size > len(dead.value)
    return info


class DeadLetterReader:
    """Keeps previews of the newest dead letters; ``refresh`` catches up with the topic."""

    def __init__(self, transport: Transport, topic: str = DLQ_TOPIC, keep: int = 10_000) -> None:
        self.transport = transport
        self.topic = topic
        self.keep = keep
        self.group = f"choreo.ops.dlq-reader.{uuid.uuid4().hex[:12]}"
        self._records: OrderedDict[Coordinates, DeadLetterPreview] = OrderedDict()
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
                        self._records[(record.partition, record.offset)] = DeadLetterPreview.of(
                            record
                        )
                        self._next[tp] = record.offset + 1
                    if self._next.get(tp, 0) >= ends.get(tp, 0):
                        behind.discard(tp)
                while len(self._records) > self.keep:
                    self._records.popitem(last=False)

    def records(self, gid: str | None = None) -> list[DeadLetterPreview]:
        """Newest first (by the time they were dead-lettered)."""
        found = [r for r in self._records.values() if gid is None or record_gid(r) == gid]
        found.sort(key=lambda r: (_int(_text(r, H_AT), r.timestamp_ms), r.partition, r.offset))
        return found[::-1]

    def get(self, dead_id: str) -> DeadLetterPreview | None:
        return self._records.get(parse_dead_letter_id(dead_id))

    async def fetch(self, wanted: Collection[Coordinates], timeout: float = 30.0) -> list[Record]:
        """The whole records at ``wanted`` (partition, offset) on the topic, read again
        by a throwaway consumer that keeps only those; LookupError for one not found."""
        if not wanted:
            return []
        ends = await self.transport.end_offsets(
            [TopicPartition(self.topic, p) for p in {p for p, _ in wanted}]
        )
        last = {tp: max(o for p, o in wanted if p == tp.partition) for tp in ends}
        missing = [f"{p}:{o}" for p, o in wanted if o >= ends[TopicPartition(self.topic, p)]]
        if missing:
            raise LookupError(f"no dead letter with id {', '.join(missing)}")
        found: dict[Coordinates, Record] = {}
        group = f"choreo.ops.dlq-fetch.{uuid.uuid4().hex[:12]}"
        consumer = self.transport.consumer(group, [self.topic])
        await consumer.start()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            behind = set(last)
            while behind:
                if loop.time() > deadline:
                    raise TransportError(f"reading {self.topic} again took over {timeout:g}s")
                for tp, records in (await consumer.getmany(timeout=0.2)).items():
                    for record in records:
                        if (record.partition, record.offset) in wanted:
                            found[(record.partition, record.offset)] = record
                        if tp in last and record.offset >= last[tp]:
                            behind.discard(tp)
        finally:
            await consumer.stop()
        gone = [f"{p}:{o}" for p, o in wanted if (p, o) not in found]
        if gone:
            raise LookupError(f"no dead letter with id {', '.join(gone)}")
        return [found[c] for c in wanted]

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> DeadLetterReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
