"""Reading back what a test's service published."""

from __future__ import annotations

import time
import uuid

from choreo import codec
from choreo.transport.base import TopicPartition, Transport


async def event_ids(
    transport: Transport, topic: str, *, event_type: str = ""
) -> dict[str, list[str]]:
    """Every record on ``topic`` so far: event ids by gid, in the order read (each of
    type ``event_type`` when given)."""
    tps = await transport.topic_partitions([topic])
    ends = await transport.end_offsets(tps)
    found: dict[str, list[str]] = {}
    if not any(ends.values()):
        return found
    consumer = transport.consumer(f"probe-{uuid.uuid4().hex[:8]}", [topic])
    await consumer.start()
    try:
        seen: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + 30
        while any(seen.get(tp, 0) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for tp, records in (await consumer.getmany(timeout=0.5)).items():
                for record in records:
                    if event_type:
                        assert record.header(codec.H_TYPE) == event_type.encode()
                    envelope = codec.decode_envelope(record)
                    found.setdefault(envelope.gid, []).append(envelope.event_id)
                    seen[tp] = record.offset + 1
    finally:
        await consumer.stop()
    return found
