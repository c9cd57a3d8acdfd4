"""Writes records whose header key is not UTF-8, as a non-Python client may (Kafka's
protocol allows it; aiokafka's C encoder refuses, so its pure-Python one is used, with a
key whose ``encode`` returns the raw bytes).

    python -m tests.procs.unreadable_producer BOOTSTRAP TOPIC
        partition 0: good g0-0, good g0-1, BAD, good g0-3   (each in its own batch)
        partition 1: good g1-0 .. g1-3
"""

from __future__ import annotations

import os

os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"  # before aiokafka is imported

import asyncio
import sys

from aiokafka import AIOKafkaProducer

from choreo import codec
from choreo.events import Envelope, Message
from tests.procs.svcapi_app import Ask


class RawKey(str):
    """A header key that encodes to bytes that are not UTF-8."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe-key"


async def main(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for partition, bad_at in ((0, 2), (1, -1)):
            for index in range(4):
                gid = f"g{partition}-{index}"
                event = Ask(n=index)
                record = codec.encode(Message(Envelope.first(event, gid=gid), event, topic))
                headers = list(record.headers)
                if index == bad_at:
                    headers.append((RawKey("x"), b"1"))
                await producer.send_and_wait(
                    topic, record.value, key=record.key, partition=partition, headers=headers
                )
    finally:
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
