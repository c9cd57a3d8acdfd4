"""Dead-letter records: the original bytes, untouched, plus headers saying why.

A dead letter records where its record came from (``choreo-dlq-topic``, ``-partition``,
``-offset``) and which service gave up on it (``choreo-dlq-service``). A replay sends the
record back to that topic only, with the event id it had: its ``choreo-id`` header, or,
when it had none, the id a consumer gives such a record (``topic/partition/offset`` of
where it was first read), so every replay of it is the same event.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from choreo.codec import H_ID
from choreo.transport.base import OutgoingRecord, Record

DLQ_TOPIC = "choreo.dlq"
H_REASON = "choreo-dlq-reason"
H_KIND = "choreo-dlq-kind"
H_SERVICE = "choreo-dlq-service"
H_HANDLER = "choreo-dlq-handler"
H_ATTEMPTS = "choreo-dlq-attempts"
H_TOPIC = "choreo-dlq-topic"
H_PARTITION = "choreo-dlq-partition"
H_OFFSET = "choreo-dlq-offset"
H_AT = "choreo-dlq-at"
H_DROPPED = "choreo-dlq-dropped"
# On a replayed record: the service that dead-lettered it, the only one to handle it
# again (every other group on the topic handled the original and skips the replay).
H_REPLAY_FOR = "choreo-replay-for"
DLQ_HEADERS = frozenset(
    {
        H_REASON,
        H_KIND,
        H_SERVICE,
        H_HANDLER,
        H_ATTEMPTS,
        H_TOPIC,
        H_PARTITION,
        H_OFFSET,
        H_AT,
        H_DROPPED,
    }
)
# A dead letter must always fit the broker, or the record it stands for blocks its
# partition: past this size its value (and any header over _HEADER_KEPT bytes) is left
# out, and H_DROPPED says what was dropped, with the value's size and SHA-256.
MAX_DEAD_LETTER_BYTES = 1_000_000
_HEADER_KEPT = 4096


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why a record was given up on; ``kind`` is poison, failed or budget."""

    kind: str
    reason: str
    service: str
    handler: str = ""
    attempts: int = 0


def dead_letter_record(
    record: Record, letter: DeadLetter, topic: str = DLQ_TOPIC
) -> OutgoingRecord:
    kept = tuple((k, v) for k, v in record.headers if k not in DLQ_HEADERS)
    extra = (
        (H_REASON, letter.reason[:4000]),
        (H_KIND, letter.kind),
        (H_SERVICE, letter.service),
        (H_HANDLER, letter.handler),
        (H_ATTEMPTS, str(letter.attempts)),
        (H_TOPIC, record.topic),
        (H_PARTITION, str(record.partition)),
        (H_OFFSET, str(record.offset)),
        (H_AT, str(round(time.time() * 1000))),
    )
    headers = kept + tuple((k, v.encode()) for k, v in extra)
    key, value = record.key, record.value
    size = len(key or b"") + len(value) + sum(len(k) + len(v) for k, v in headers)
    if size > MAX_DEAD_LETTER_BYTES:
        digest = hashlib.sha256(value).hexdigest()
        dropped = [f"value ({len(value)} bytes, sha256 {digest})"]
        dropped += [f"header {k[:64]!r} ({len(v)} bytes)" for k, v in kept if len(v) > _HEADER_KEPT]
        if key is not None and len(key) > _HEADER_KEPT:
            dropped.append(f"key ({len(key)} bytes)")
            key = key[:_HEADER_KEPT]
        headers = tuple((k, v) for k, v in headers if len(v) <= _HEADER_KEPT or k == H_REASON)
        headers += ((H_DROPPED, "; ".join(dropped).encode()),)
        value = b""
    return OutgoingRecord(topic=topic, key=key, value=value, headers=headers)


class NotReplayable(ValueError):
    """A dead letter that cannot be sent back: choreo did not record where it came from,
    or its value was dropped because it was too large to keep."""


def _header_text(dead: Record, name: str) -> str:
    raw = dead.header(name)
    try:
        return "" if raw is None else raw.decode()
    except UnicodeDecodeError:
        return ""


def original_topic(dead: Record) -> str:
    """The topic choreo recorded the dead letter's record was read from."""
    topic = _header_text(dead, H_TOPIC)
    if not topic:
        raise NotReplayable(
            f"dead letter {dead.partition}:{dead.offset} does not name its original topic "
            f"(no {H_TOPIC} header): choreo did not write it"
        )
    return topic


def original_event_id(dead: Record) -> str:
    """The record's event id: its own header, else the id a consumer gave it when it was
    first read (``topic/partition/offset``, as the codec derives it), else one derived
    from the dead letter's own coordinates. The same on every replay."""
    given = _header_text(dead, H_ID)
    if given:
        return given
    topic = original_topic(dead)
    partition, offset = _header_text(dead, H_PARTITION), _header_text(dead, H_OFFSET)
    if partition.isascii() and partition.isdigit() and offset.isascii() and offset.isdigit():
        return f"{topic}/{int(partition)}/{int(offset)}"
    return f"{dead.topic}/{dead.partition}/{dead.offset}"


def original_record(dead: Record) -> OutgoingRecord:
    """The record as it was before it died, for replay after a fix: its key, value and
    headers, to the topic choreo recorded, with its event id (see ``original_event_id``),
    addressed to the service that gave up on it (``H_REPLAY_FOR``).
    NotReplayable (a ValueError) when that topic is not recorded or the value was dropped."""
    topic = original_topic(dead)
    dropped = dead.header(H_DROPPED)
    if dropped is not None:
        raise NotReplayable(
            f"dead letter {dead.partition}:{dead.offset} was too large to keep whole "
            f"({dropped.decode(errors='replace')[:200]}); it cannot be replayed"
        )
    headers = tuple((k, v) for k, v in dead.headers if k not in DLQ_HEADERS and k != H_REPLAY_FOR)
    service = _header_text(dead, H_SERVICE)
    if service:
        headers = (*headers, (H_REPLAY_FOR, service.encode()))
    if not _header_text(dead, H_ID):  # none (or an empty one): the id it was read with
        headers = (*(h for h in headers if h[0] != H_ID), (H_ID, original_event_id(dead).encode()))
    return OutgoingRecord(topic=topic, key=dead.key, value=dead.value, headers=headers)
