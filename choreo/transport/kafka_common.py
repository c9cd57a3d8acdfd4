"""What the Kafka transport's modules share: error classes, conversions, quiet closing.
With ``kafka.py`` and ``kafka_consumer.py``, the only modules that import aiokafka."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)
from aiokafka.structs import TopicPartition as KafkaTopicPartition

from choreo.transport.base import Record, TopicPartition

logger = logging.getLogger("choreo.transport.kafka")

#: Errors of the network or the broker; anything else (TypeError...) is a bug, not retried.
TRANSIENT: tuple[type[BaseException], ...] = (KafkaError, OSError, TimeoutError)
# Errors after which an idempotent producer cannot send to a partition again (its
# sequence numbers no longer match the broker's): the transport replaces the producer.
PRODUCER_STATE_LOST: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
)


def to_kafka(tp: TopicPartition) -> Any:
    return KafkaTopicPartition(tp.topic, tp.partition)


def from_kafka(tp: Any) -> TopicPartition:
    return TopicPartition(str(tp.topic), int(tp.partition))


def to_record(message: Any) -> Record:
    # aiokafka hands headers as (str, bytes) pairs already: no per-header copy here (a
    # null header value stays None; the codec reads it as empty).
    headers = message.headers
    value = message.value
    return Record(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        value if value is not None else b"",
        tuple(headers) if headers else (),
        message.timestamp or 0,
    )


async def quietly(closing: Any) -> None:
    """Await a client's stop/close during cleanup, logging instead of masking the cause."""
    try:
        await closing
    except Exception:
        logger.debug("error while closing a Kafka client", exc_info=True)
