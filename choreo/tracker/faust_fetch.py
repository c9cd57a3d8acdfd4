"""The faust tracker's fetch, made to step over a record the Kafka client cannot read.

Kafka's protocol lets any client write a header key that is not UTF-8; aiokafka decodes
every header key as UTF-8 while it unpacks a fetched batch, and raises
``UnicodeDecodeError`` (``CorruptRecordException`` without its C extensions) without
moving past the batch. Inside faust's consumer thread that ended the worker, and every
restart met the same record and ended again (issue 12). A service isolates such a record
by pausing its partition (``choreo.transport.kafka_consumer``); the tracker must not:
a paused partition would hold back every later event of its sagas and their deadlines
would fire on sagas that are fine. So here the record is skipped, in its place:

- ``ConsumerThread`` (faust's aiokafka consumer thread, installed by ``install`` through
  the app's transport: no module of faust or aiokafka is patched) notes the read
  positions before each fetch. When aiokafka raises on a batch it cannot read, the
  traceback names the partition it was unpacking; that partition's batches are fetched
  again from its read position, raw, and read here (``read_batches``): the readable
  records as aiokafka would have returned them, each unreadable one as a *placeholder*
  at its own offset, up to the end of the first batch holding one; the partition then
  reads on after that batch. The other partitions go back to where they were before the
  failed fetch (aiokafka may have taken their records and lost them when it raised), so
  they are read again; nothing is lost and nothing is returned twice.
- a placeholder carries the reason in a header whose key holds a lone surrogate, which no
  record read from Kafka can have (aiokafka decodes keys strictly), so no producer can
  forge one. The tracker sets placeholders aside (``set_aside``) and publishes a dead
  letter for each (``choreo.deadletter``: the record's key, value and readable headers,
  the reason, topic, partition and offset) with the batch, before the batch is acked:
  like every record, its offset is committed only once what it caused is durable.

Only what the raw read can explain is skipped: a batch that fails for another reason
(a bad CRC, a broken structure) is raised as before. The fetch, the traceback's frame and
the read positions are aiokafka 0.14's internals (as faust's own ``_fetch_records`` uses
them); a change there makes the failure path raise as it did, never skip blindly.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from aiokafka import codec as kafka_codec
from aiokafka.errors import CorruptRecordException, KafkaError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.util import calc_crc32c, decode_varint
from aiokafka.structs import ConsumerRecord
from faust.transport.drivers import aiokafka as faust_aiokafka

from choreo.deadletter import DLQ_TOPIC, DeadLetter, dead_letter_record
from choreo.tracker.core import TRACKER_SOURCE
from choreo.transport.base import OutgoingRecord, Record

log = logging.getLogger("choreo.tracker")

#: The header key of a placeholder: a lone surrogate, which strict UTF-8 never decodes to.
UNREADABLE_HEADER = "\udcffchoreo-unreadable"
_UNREADABLE = (UnicodeDecodeError, CorruptRecordException)
_READ_UNCOMMITTED = 0  # the tracker's isolation level (aiokafka's code for it)

# Record batch v2 (the only format with headers): the header up to the record count.
_BATCH = struct.Struct(">qiibIhiqqqhii")
_CRC_FROM = struct.calcsize(">qiibI")
_CODEC, _LOG_APPEND_TIME, _CONTROL = 0x07, 0x08, 0x20
_DECOMPRESS = {
    1: kafka_codec.gzip_decode,
    2: lambda data: kafka_codec.snappy_decode(bytes(data)),
    3: lambda data: kafka_codec.lz4_decode(bytes(data)),
    4: lambda data: kafka_codec.zstd_decode(bytes(data)),
}


class _NotExplained(Exception):
    """The raw read found nothing unreadable, or could not read the batch either."""


def _varint(buffer: bytearray, pos: int) -> tuple[int, int]:
    value, pos = decode_varint(buffer, pos)
    return int(value), int(pos)


def _bytes(buffer: bytearray, pos: int) -> tuple[bytes | None, int]:
    size, pos = _varint(buffer, pos)
    if size < 0:
        return None, pos
    return bytes(buffer[pos : pos + size]), pos + size


def read_batches(
    raw: bytes, topic: str, partition: int, start: int
) -> tuple[list[ConsumerRecord[bytes, bytes]], int]:
    """The records at ``start`` and after in ``raw`` (a fetch response's record batches),
    up to the end of the first batch holding a record whose header key is not UTF-8;
    those come as placeholders. Returns them and the offset after that batch.
    ``_NotExplained`` when no such record is there or a batch cannot be read at all."""
    records: list[ConsumerRecord[bytes, bytes]] = []
    pos = 0
    while pos + 17 <= len(raw):
        _, length = struct.unpack_from(">qi", raw, pos)
        end = pos + 12 + length
        if end > len(raw) or raw[pos + 16] != 2:  # cut off at the fetch's size; old format
            break
        batch = raw[pos:end]
        pos = end
        (base, _, _, _, crc, attributes, last_delta, first_ts, max_ts, *_, count) = (
            _BATCH.unpack_from(batch)
        )
        if calc_crc32c(batch[_CRC_FROM:]) != crc:
            raise _NotExplained(f"the batch at offset {base} fails its CRC")
        if attributes & _CONTROL:
            continue
        body = memoryview(batch)[_BATCH.size :]
        codec = attributes & _CODEC
        buffer = bytearray(_DECOMPRESS[codec](body) if codec else body)
        unreadable = False
        at = 0
        try:
            for _ in range(count):
                size, at = _varint(buffer, at)
                after = at + size
                _, at = _varint(buffer, at)  # attributes
                delta, at = _varint(buffer, at)
                offset_delta, at = _varint(buffer, at)
                key, at = _bytes(buffer, at)
                value, at = _bytes(buffer, at)
                headers, bad = [], []
                header_count, at = _varint(buffer, at)
                for _ in range(header_count):
                    name, at = _bytes(buffer, at)
                    header_value, at = _bytes(buffer, at)
                    try:
                        headers.append(((name or b"").decode(), header_value))
                    except UnicodeDecodeError:
                        bad.append(name or b"")
                if at != after:
                    raise _NotExplained(f"a record of the batch at offset {base} is malformed")
                offset = base + offset_delta
                if offset < start:
                    continue
                if bad:
                    unreadable = True
                    reason = (
                        f"record {topic}[{partition}]@{offset} has a header key that is not "
                        f"UTF-8 ({bad[0][:64]!r}): the Kafka client cannot read it; the "
                        "tracker skipped it"
                    )
                    log.error("tracker: %s", reason)
                    headers.insert(0, (UNREADABLE_HEADER, reason.encode()))
                timestamp = max_ts if attributes & _LOG_APPEND_TIME else first_ts + delta
                records.append(
                    ConsumerRecord(
                        topic, partition, offset, timestamp,
                        1 if attributes & _LOG_APPEND_TIME else 0, key, value, None,
                        -1 if key is None else len(key), -1 if value is None else len(value),
                        tuple(headers),  # a value may be None
                    )
                )  # fmt: skip
        except (IndexError, ValueError) as exc:
            raise _NotExplained(f"the batch at offset {base} is malformed: {exc!r}") from exc
        if unreadable:
            return records, base + last_delta + 1
    raise _NotExplained("no record with an unreadable header key was found")


def _failing_partition(exc: BaseException) -> Any:
    """The partition aiokafka was unpacking when it raised: the frame of its
    ``PartitionRecords._unpack_records`` in the traceback."""
    tb = exc.__traceback__
    found = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_unpack_records" and "tp" in frame.f_locals:
            found = frame.f_locals["tp"]
        tb = tb.tb_next
    return found


def _state(fetcher: Any, tp: Any) -> Any:
    assignment = fetcher._subscriptions.subscription.assignment
    state = assignment.state_value(tp) if assignment is not None else None
    return state if state is not None and state.has_valid_position else None


def _positions(fetcher: Any) -> dict[Any, int]:
    """The read position of every assigned partition (a fetch that waits for records
    takes those of partitions that had none when it began)."""
    subscription = fetcher._subscriptions.subscription
    if subscription is None or subscription.assignment is None:
        return {}
    return {
        tp: state.position
        for tp, state in subscription.assignment._tp_state.items()
        if state.has_valid_position
    }


async def _fetch_raw(consumer: Any, tp: Any, offset: int) -> bytes:
    """The record batches of ``tp`` from ``offset``, as the broker sends them."""
    fetcher = consumer._fetcher
    node = consumer._client.cluster.leader_for_partition(tp)
    if node is None or node == -1:
        raise KafkaError(f"no leader known for {tp}")
    request = FetchRequest(
        0, 1, fetcher._fetch_max_bytes, fetcher._isolation_level,
        [(tp.topic, [(tp.partition, offset, fetcher._max_partition_fetch_bytes)])],
    )  # fmt: skip
    response = await consumer._client.send(node, request)
    for topic, partitions in response.topics:
        for partition, error_code, _, *data in partitions:
            if (topic, partition) == (tp.topic, tp.partition):
                if error_code:
                    raise KafkaError(f"fetching {tp} at {offset}: error code {error_code}")
                return bytes(data[-1] or b"")
    raise KafkaError(f"the fetch response has no {tp}")


async def skip_unreadable(
    consumer: Any, before: Mapping[Any, int], exc: BaseException
) -> dict[Any, list[Any]]:
    """After aiokafka raised ``exc`` on a batch: the failing partition's records up to the
    end of the unreadable batch (see ``read_batches``), the other partitions put back to
    their positions ``before`` the fetch. Raises ``exc`` when this cannot explain it."""
    fetcher = consumer._fetcher
    tp = _failing_partition(exc)
    state = _state(fetcher, tp) if tp is not None else None
    if state is None or fetcher._isolation_level != _READ_UNCOMMITTED:
        raise exc  # (read_committed would need aborted transactions filtered: not used)
    for other, position in before.items():
        moved = _state(fetcher, other)
        if other != tp and moved is not None and moved.position != position:
            fetcher.seek_to(other, position)  # read again what the failed fetch dropped
    start = state.position
    try:
        raw = await _fetch_raw(consumer, tp, start)
    except KafkaError as error:  # the broker is away: the next fetch fails and retries
        log.warning("tracker: cannot re-read %s at %d: %s", tp, start, error)
        return {}
    try:
        records, after = read_batches(raw, tp.topic, tp.partition, start)
    except _NotExplained as why:
        log.error("tracker: %s at %d cannot be read (%s)", tp, start, why)
        raise exc from None
    state = _state(fetcher, tp)
    if state is None or state.position != start:  # a rebalance or a seek meanwhile
        return {}
    fetcher.seek_to(tp, after)
    return {tp: records}


# How long a fetch waits at the broker for records (aiokafka's ``fetch_max_wait_ms``;
# faust sets 1.5 s). aiokafka keeps one fetch in flight per broker and leaves out of it
# the partitions whose records are not consumed yet, so a partition emptied meanwhile
# waits for that fetch to come back: with 1.5 s, a wave of deadline checks stalled for
# up to 1.5 s while a fetch of idle partitions waited (benchmarks/tracker_stalls.py).
FETCH_MAX_WAIT_MS = 50


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread; a fetch that fails on an unreadable record
    returns its partition's records with a placeholder in its place (see the module),
    and a fetch waits at most ``FETCH_MAX_WAIT_MS`` at the broker."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when it starts its fetcher
        return consumer

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        before = _positions(consumer._fetcher)
        try:
            return await super()._fetch_records(
                consumer, active_partitions, timeout=timeout, max_records=max_records
            )
        except _UNREADABLE as exc:
            return await skip_unreadable(consumer, before, exc)


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


def install(app: Any) -> None:
    """Give a new faust app (kafka://) the transport whose consumer skips unreadable
    records; before anything has used its transport."""
    app.transport = Transport(app.conf.broker_consumer, app)


def set_aside(
    items: Sequence[tuple[Record, float]], dlq_topic: str = DLQ_TOPIC
) -> tuple[list[OutgoingRecord], Sequence[tuple[Record, float]]]:
    """(dead letters of the placeholders among ``items``, the other items)."""
    if not any(r.headers and r.headers[0][0] == UNREADABLE_HEADER for r, _ in items):
        return [], items
    letters, others = [], []
    for record, now in items:
        if record.headers and record.headers[0][0] == UNREADABLE_HEADER:
            reason = record.headers[0][1].decode()
            record = replace(record, headers=record.headers[1:])
            letter = DeadLetter("poison", reason, TRACKER_SOURCE)
            letters.append(dead_letter_record(record, letter, dlq_topic))
        else:
            others.append((record, now))
    return letters, others
