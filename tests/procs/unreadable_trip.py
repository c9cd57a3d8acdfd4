"""Writes whole trip sagas (TripBooked, FlightBooked, HotelBooked, CarBooked) and records
whose header key is not UTF-8, for the faust tracker's test (tests/test_faust_unreadable.py).
aiokafka's C encoder refuses such a key, so its pure-Python one is used, with a key whose
``encode`` returns the raw bytes (as tests/procs/unreadable_producer.py does).

    python -m tests.procs.unreadable_trip BOOTSTRAP TOPIC PLAN_JSON

PLAN_JSON is a list of phases, each a list of ``["saga", gid]`` (the saga's four events)
and ``["bad", gid]`` (one TripBooked of that gid with the unreadable header key). Each
phase is sent without waiting and then flushed: a phase's records of one partition form
one batch. Prints ``[[partition, offset], ...]`` of the unreadable records, as JSON.
"""

from __future__ import annotations

import os

os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"  # before aiokafka is imported

import asyncio
import json
import sys
from typing import Any

from aiokafka import AIOKafkaProducer

from choreo import codec
from choreo.events import Envelope, Message, derived_event_id
from tests.scenarios.trip import CarBooked, FlightBooked, HotelBooked, TripBooked


class RawKey(str):
    """A header key that encodes to bytes that are not UTF-8."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe-key"


def saga(gid: str, topic: str) -> list[Message]:
    booked = TripBooked(trip_id=gid)
    first = Envelope.first(booked, gid=gid, saga="trip", source="test")
    messages = [Message(first, booked, topic)]
    cause = first
    for step, event in (
        ("flight", FlightBooked(trip_id=gid)),
        ("hotel", HotelBooked(trip_id=gid)),
        ("car", CarBooked(trip_id=gid)),
    ):
        envelope = cause.caused(
            event, event_id=derived_event_id(gid, step), step=step, op="action",
            outcome="done", source=step,
        )  # fmt: skip
        messages.append(Message(envelope, event, topic))
        cause = envelope
    return messages


async def main(bootstrap: str, topic: str, plan: list[list[list[str]]]) -> list[list[int]]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=1000
    )
    await producer.start()
    bad: list[Any] = []
    try:
        for phase in plan:
            futures = []
            for kind, gid in phase:
                messages = saga(gid, topic) if kind == "saga" else saga(gid, topic)[:1]
                for message in messages:
                    record = codec.encode(message)
                    headers = list(record.headers)
                    if kind == "bad":
                        headers.append((RawKey("x"), b"1"))
                    sent = await producer.send(topic, record.value, key=record.key, headers=headers)
                    if kind == "bad":
                        bad.append(sent)
                    futures.append(sent)
            await producer.flush()
            for future in futures:
                await future
    finally:
        await producer.stop()
    return [[(meta := await f).partition, meta.offset] for f in bad]


if __name__ == "__main__":
    found = asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
    print(json.dumps(found))
