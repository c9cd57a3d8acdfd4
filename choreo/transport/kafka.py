"""The Kafka transport, on aiokafka. With ``kafka_consumer.py`` and ``kafka_common.py``,
the only modules of the package that import aiokafka.

aiokafka's defaults are wrong for at-least-once processing (acks=1, no idempotence,
auto-commit on, offset reset "latest", read_uncommitted), so every client is built here
with the settings choreo relies on written out explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.structs import TopicPartition as KafkaTopicPartition

from choreo.errors import ConfigurationError, TransportError
from choreo.retry import Backoff, RetryPolicy
from choreo.transport.base import (
    Consumer,
    Delivered,
    OutgoingRecord,
    RevokeCallback,
    TopicPartition,
    Transport,
)
from choreo.transport.kafka_batches import Part, PartitionBatches
from choreo.transport.kafka_common import PRODUCER_STATE_LOST, TRANSIENT, logger, quietly
from choreo.transport.kafka_config import parse_kafka_url, security_options
from choreo.transport.kafka_consumer import KafkaConsumer
from choreo.transport.partitioner import partition_for

__all__ = ["KafkaConsumer", "KafkaTransport"]

# How often a freshly created topic is looked for until every partition has a leader.
_TOPIC_POLL = RetryPolicy(backoff=0.05, backoff_max=0.5, jitter=False)
# Values above this take the producer's per-record path, which checks a record's size
# against ``max_request_size`` and fails it alone (a dead letter) instead of its batch.
_BATCHED_VALUE_MAX = 64 * 1024


class KafkaTransport(Transport):
    """A connection to a Kafka cluster: one producer and one admin client, plus consumers.

    ``url`` is ``kafka://host:port[,host2:port2]`` (port 9092 when left out).

    ``partitions`` is the partition count of topics this transport creates: by
    ``ensure_topics`` without an explicit count, and before the first send to, or the
    start of a consumer on, a topic that does not exist yet (the broker's own
    auto-creation, with its ``num.partitions``, is never relied on).
    ``replication_factor`` applies to those topics too.

    ``security`` is passed to every aiokafka client (producer, consumers, admin):

    - ``security_protocol``: ``PLAINTEXT`` (default), ``SSL``, ``SASL_PLAINTEXT``,
      ``SASL_SSL``;
    - ``sasl_mechanism`` (``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``, ``GSSAPI``,
      ``OAUTHBEARER``), ``sasl_plain_username``, ``sasl_plain_password``,
      ``sasl_kerberos_service_name``, ``sasl_kerberos_domain_name``,
      ``sasl_oauth_token_provider``;
    - ``ssl_context``: a ready ``ssl.SSLContext``; or instead ``cafile``, ``capath``,
      ``cadata``, ``certfile``, ``keyfile``, ``password``, from which one is built with
      ``choreo.transport.kafka_config.ssl_context``. With an SSL context and no
      ``security_protocol``, the protocol is ``SSL``.

    Unknown keys are a ``ConfigurationError``.

    The producer uses acks=all and idempotence, so a record ``send`` acknowledged is
    durable and retries never reorder or duplicate records of a partition. Consumers never
    auto-commit, start new groups at the earliest offset and read committed records only.
    ``producer_options`` / ``consumer_options`` are extra aiokafka keyword arguments that
    override these defaults (use with care).
    """

    def __init__(
        self,
        url: str,
        *,
        partitions: int = 4,
        replication_factor: int = 1,
        client_id: str = "choreo",
        security: Mapping[str, Any] | None = None,
        request_timeout_ms: int = 30_000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 1_000,
        max_poll_records: int = 500,
        linger_ms: int = 5,
        fetch_max_wait_ms: int = 20,
        topic_ready_timeout: float = 30.0,
        producer_options: Mapping[str, Any] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        if partitions < 1:
            raise ConfigurationError("partitions must be >= 1")
        if replication_factor < 1:
            raise ConfigurationError("replication_factor must be >= 1")
        self.url = url
        self.bootstrap_servers = parse_kafka_url(url)
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_poll_records = max_poll_records
        self.linger_ms = linger_ms
        # aiokafka keeps one fetch in flight per broker, and a partition whose records
        # were just returned is left out of it: its next records wait until that fetch
        # ends, up to this long. Kafka's 500 ms default would add that to every hop of a
        # saga whose consumer reads several partitions; 20 ms costs a few idle fetches.
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.topic_ready_timeout = topic_ready_timeout
        self._security = security_options(security)
        self._producer_options = dict(producer_options or {})
        self._consumer_options = dict(consumer_options or {})
        self._producer: Any = None
        self._producer_lock = asyncio.Lock()
        # Per producer, done once it is replaced or stopped: a send still waiting on it
        # then fails instead of waiting for good (see _while_current).
        self._retired: dict[Any, asyncio.Future[None]] = {}
        self._admin: Any = None
        self._offsets_reader: Any = None  # a group-less consumer, made on first use
        self._known_topics: set[str] = set()
        self._topics_lock = asyncio.Lock()
        self._batches = PartitionBatches()

    # -- client options ---------------------------------------------------------
    def _common_options(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            **self._security,
        }

    def consumer_kwargs(self, group: str) -> dict[str, Any]:
        """The keyword arguments of ``AIOKafkaConsumer`` for a member of ``group``."""
        return {
            **self._common_options(),
            "group_id": group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "isolation_level": "read_committed",
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_records": self.max_poll_records,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            **self._consumer_options,
        }

    def producer_kwargs(self) -> dict[str, Any]:
        return {
            **self._common_options(),
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": self.linger_ms,
            "compression_type": None,
            **self._producer_options,
        }

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(**self.producer_kwargs())
        admin = AIOKafkaAdminClient(**self._common_options())
        try:
            await producer.start()
            await admin.start()
        except TRANSIENT as exc:
            await quietly(producer.stop())
            await quietly(admin.close())
            raise TransportError(
                f"cannot connect to Kafka at {','.join(self.bootstrap_servers)}: {exc}"
            ) from exc
        except BaseException:
            await quietly(producer.stop())
            await quietly(admin.close())
            raise
        self._producer, self._admin = producer, admin
        self._retired[producer] = asyncio.get_running_loop().create_future()

    async def stop(self) -> None:
        producer, admin, reader = self._producer, self._admin, self._offsets_reader
        self._producer = self._admin = self._offsets_reader = None
        await self._batches.stop()
        if reader is not None:
            await quietly(reader.stop())
        try:
            if producer is not None:
                try:
                    await producer.stop()
                finally:
                    self._retire(producer)
        finally:
            if admin is not None:
                await admin.close()

    def _require(self, client: Any, what: str) -> Any:
        if client is None:
            raise TransportError(f"KafkaTransport is not started (no {what}): call start()")
        return client

    # -- offsets ----------------------------------------------------------------
    async def group_offsets(self, group: str) -> dict[TopicPartition, int]:
        admin = self._require(self._admin, "admin client")
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        except TRANSIENT as exc:
            raise TransportError(f"cannot read offsets of group {group!r}: {exc}") from exc
        return {
            TopicPartition(tp.topic, tp.partition): meta.offset
            for tp, meta in offsets.items()
            if meta.offset >= 0
        }

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        if self._offsets_reader is None:
            reader = AIOKafkaConsumer(**{**self._common_options(), "group_id": None,
                                         "enable_auto_commit": False})  # fmt: skip
            try:
                await reader.start()
            except TRANSIENT as exc:
                await quietly(reader.stop())
                raise TransportError(f"cannot read end offsets: {exc}") from exc
            self._offsets_reader = reader
        try:
            ends = await self._offsets_reader.end_offsets(
                [KafkaTopicPartition(tp.topic, tp.partition) for tp in tps]
            )
        except TRANSIENT as exc:
            raise TransportError(f"cannot read end offsets: {exc}") from exc
        return {TopicPartition(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    # -- topics -----------------------------------------------------------------
    async def _topic_partitions(self) -> dict[str, int]:
        """Every topic the cluster lists, with its partition count (no auto-creation:
        a metadata request for all topics names none)."""
        admin = self._require(self._admin, "admin client")
        try:
            described = await admin.describe_topics()
        except TRANSIENT as exc:
            raise TransportError(f"cannot read Kafka topic metadata: {exc}") from exc
        counts: dict[str, int] = {}
        for topic in described:
            if topic.get("error_code", 0) != 0:
                continue
            partitions = topic.get("partitions") or []
            # A new topic is usable once every partition has a leader.
            if all(p.get("leader", -1) >= 0 and p.get("error_code", 0) == 0 for p in partitions):
                counts[str(topic["topic"])] = len(partitions)
        return counts

    async def ensure_topics(self, topics: Sequence[str], partitions: int | None = None) -> None:
        wanted = list(dict.fromkeys(topics))
        if not wanted:
            return
        count = partitions or self.partitions
        admin = self._require(self._admin, "admin client")
        async with self._topics_lock:
            existing = await self._topic_partitions()
            missing = [topic for topic in wanted if topic not in existing]
            if missing:
                new = [NewTopic(topic, count, self.replication_factor) for topic in missing]
                try:
                    response = await admin.create_topics(new)
                except TRANSIENT as exc:
                    raise TransportError(f"cannot create Kafka topics {missing}: {exc}") from exc
                for error in response.topic_errors:
                    topic, code = error[0], error[1]
                    if code == 0:
                        continue
                    error_type = for_code(code)
                    if error_type is TopicAlreadyExistsError:
                        continue
                    message = error[2] if len(error) > 2 and error[2] else error_type.__name__
                    cause = error_type(message)
                    if error_type.retriable:
                        raise TransportError(f"cannot create topic {topic!r}: {message}") from cause
                    raise ConfigurationError(f"cannot create topic {topic!r}: {message}") from cause
                await self._wait_for_topics(missing)
            self._known_topics.update(wanted)

    async def _wait_for_topics(self, topics: Sequence[str]) -> None:
        deadline = time.monotonic() + self.topic_ready_timeout
        backoff = Backoff(_TOPIC_POLL)
        while True:
            existing = await self._topic_partitions()
            if all(topic in existing for topic in topics):
                return
            if time.monotonic() > deadline:
                pending = [topic for topic in topics if topic not in existing]
                raise TransportError(
                    f"Kafka topics {pending} not ready after {self.topic_ready_timeout:.0f}s"
                )
            await backoff.wait()

    async def partitions_for(self, topic: str) -> int:
        return (await self._topic_partitions()).get(topic, 0)

    async def _ensure_known(self, topics: Sequence[str]) -> None:
        unknown = [topic for topic in topics if topic not in self._known_topics]
        if unknown:
            await self.ensure_topics(unknown)

    # -- producing --------------------------------------------------------------
    async def send(self, record: OutgoingRecord) -> Delivered:
        return (await self.send_many([record]))[0]

    async def _replace_producer(self, broken: Any, exc: BaseException) -> None:
        """The idempotent producer lost its sequence state (a batch expired while the
        broker was away, the broker forgot the producer id): it would fail every send to
        those partitions for good. Start a new producer (a new producer id, sequences
        from zero), as Kafka's Java client does; records the old one may have written
        are then sent again, which the barrier and the event ids make harmless."""
        async with self._producer_lock:
            if self._producer is not broken:
                return  # another send replaced it already
            logger.warning("Kafka producer lost its sequence state (%s); starting a new one", exc)
            producer = AIOKafkaProducer(**self.producer_kwargs())
            try:
                await producer.start()
            except TRANSIENT as start_error:
                await quietly(producer.stop())
                raise TransportError(f"cannot restart the Kafka producer: {start_error}") from exc
            self._producer = producer
            self._retired[producer] = asyncio.get_running_loop().create_future()
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broken.stop(), 10)
        finally:
            self._retire(broken)

    def _retire(self, producer: Any) -> None:
        retired = self._retired.pop(producer, None)
        if retired is not None and not retired.done():
            retired.set_result(None)

    async def _while_current(self, waiting: asyncio.Future[Any], producer: Any) -> Any:
        """``waiting``'s result, unless ``producer`` is retired first: then it is dropped
        and the send fails (retriable), so the caller sends the records again through the
        new producer. aiokafka can strand a batch for good while a producer stops: a
        batch waiting for its partition's slot is appended after the stop's flush took
        stock, and the sender task is then cancelled without failing it (a fault run
        found a partition waiting on such a batch for good)."""
        retired = self._retired.get(producer)
        if retired is None:  # retired before this send waited: take what is done by now
            await asyncio.sleep(0)  # (a gather of finished futures ends on the next turn)
        elif not waiting.done():
            await asyncio.wait([waiting, retired], return_when=asyncio.FIRST_COMPLETED)
        if waiting.done():
            return waiting.result()
        waiting.cancel()
        raise TransportError("Kafka send failed: the producer was replaced; sending again")

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        """Enqueue every record, then await every acknowledgement. Records of one key keep
        their order: they go to one partition, and the idempotent producer never reorders
        a partition's batches, even on retries."""
        if not records:
            return []
        producer = self._require(self._producer, "producer")
        await self._ensure_known([record.topic for record in records])
        queued: list[tuple[list[int], asyncio.Future[list[Part]]]] = []
        single: list[tuple[int, asyncio.Future[Any]]] = []
        try:
            groups = await self._partitioned(producer, records)  # may wait for metadata
            for indices, topic, partition, batchable in groups:
                if batchable and partition is not None:
                    part = [records[index] for index in indices]
                    queued.append((indices, self._batches.submit(producer, topic, partition, part)))
                    continue
                for index in indices:  # the per-record path
                    record = records[index]
                    # The partition is given when known: aiokafka would otherwise hash
                    # the key again, in Python, for every record.
                    future = await producer.send(
                        topic, value=record.value, key=record.key,
                        headers=list(record.headers) or None, partition=partition,
                    )  # fmt: skip
                    single.append((index, future))
            handed = await self._while_current(
                asyncio.gather(*(f for _, f in queued), return_exceptions=True), producer
            )
        except TRANSIENT as exc:
            await self._abandon(producer, queued, single, exc)
            raise TransportError(f"Kafka send failed: {exc}") from exc
        acks: list[asyncio.Future[Any]] = [future for _, future in single]
        for parts in handed:
            if isinstance(parts, BaseException):
                await self._abandon(producer, queued, single, parts)
                if isinstance(parts, TRANSIENT):
                    raise TransportError(f"Kafka send failed: {parts}") from parts
                raise parts
            acks.extend(ack for ack, *_ in parts)
        results = await self._while_current(asyncio.gather(*acks, return_exceptions=True), producer)
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, PRODUCER_STATE_LOST):
                    await self._replace_producer(producer, result)
                if isinstance(result, TRANSIENT):
                    raise TransportError(f"Kafka send failed: {result}") from result
                raise result
        delivered: list[Delivered | None] = [None] * len(records)
        for (index, _), meta in zip(single, results, strict=False):
            assert not isinstance(meta, BaseException)
            delivered[index] = Delivered(meta.topic, meta.partition, meta.offset)
        for (indices, _), parts in zip(queued, handed, strict=True):
            assert not isinstance(parts, BaseException)
            for ack, position, first, count in parts:
                meta = ack.result()  # a batch's records sit at consecutive offsets
                for n in range(count):
                    delivered[indices[first + n]] = Delivered(
                        meta.topic, meta.partition, meta.offset + position + n
                    )
        return [d for d in delivered if d is not None]

    async def _abandon(
        self,
        producer: Any,
        queued: Sequence[tuple[list[int], asyncio.Future[list[Part]]]],
        single: Sequence[tuple[int, asyncio.Future[Any]]],
        exc: BaseException,
    ) -> None:
        """A send failed: let what was already handed over settle (its outcome no longer
        matters: the caller sends again), drop what was not, and replace a producer that
        lost its sequence state."""
        settling: list[asyncio.Future[Any]] = [f for _, f in single]
        for _, handed in queued:
            if handed.done() and not handed.cancelled() and handed.exception() is None:
                settling.extend(ack for ack, *_ in handed.result())
            else:
                handed.cancel()  # not handed over yet: the sender drops them
        with contextlib.suppress(TransportError):  # replaced meanwhile: nothing to settle
            await self._while_current(asyncio.gather(*settling, return_exceptions=True), producer)
        if isinstance(exc, PRODUCER_STATE_LOST):
            await self._replace_producer(producer, exc)

    async def _partitioned(
        self, producer: AIOKafkaProducer, records: Sequence[OutgoingRecord]
    ) -> list[tuple[list[int], str, int | None, bool]]:
        """Records' indices grouped by the partition they go to, in order, as the
        producer's default partitioner places them (murmur2 of the key, the Java client's
        rule, so every producer puts one gid on one partition), and whether the group may
        go as one ready-built batch. A group that may not goes record by record through
        ``producer.send``, which size-checks each: a partition's records when one of them
        is large. ``None`` instead of the partition lets ``producer.send`` partition the
        record itself: records without a key, and all records when the user configured a
        partitioner of their own."""
        if "partitioner" in self._producer_options:
            return [([i], r.topic, None, False) for i, r in enumerate(records)]
        groups: dict[tuple[str, int], list[int]] = {}
        large: set[tuple[str, int]] = set()
        keyless: list[tuple[list[int], str, int | None, bool]] = []
        partitions: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            key, topic = record.key, record.topic
            if key is None:
                keyless.append(([index], topic, None, False))
                continue
            known = partitions.get(topic)
            if known is None:
                known = partitions[topic] = sorted(await producer.partitions_for(topic))
            where = (topic, known[partition_for(key, len(known))])
            groups.setdefault(where, []).append(index)
            if len(record.value) > _BATCHED_VALUE_MAX:
                large.add(where)
        return [
            (indices, topic, partition, (topic, partition) not in large)
            for (topic, partition), indices in groups.items()
        ] + keyless

    # -- consuming --------------------------------------------------------------
    def consumer(
        self, group: str, topics: Sequence[str], *, on_revoke: RevokeCallback | None = None
    ) -> Consumer:
        return KafkaConsumer(
            self.consumer_kwargs(group),
            self._ensure_known,
            group,
            topics,
            on_revoke=on_revoke,
        )
