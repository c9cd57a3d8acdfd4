"""A participant of ``tests.procs.conformance_app``'s hold step written against the
wire format by hand (no choreo Service), which breaks rules on purpose, so the test can
show the conformance kit reporting them. ``python -m tests.procs.conformance_rogue``.

Environment: ``ROGUE_BROKER`` (kafka://...), ``ROGUE_GROUP``, and ``ROGUE_MODE``:

- ``rerun``: no barrier: every delivery runs again and publishes under a new random id
  (duplicates run twice, a compensation of nothing is "done", a hanging action runs);
- ``keyless``: a correct barrier (in memory), but outputs are published without a key.

Either way it skips bad JSON without dead-lettering it, and commits after publishing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

from choreo import codec
from choreo.transport.base import OutgoingRecord, Record
from choreo.transport.kafka import KafkaTransport
from tests.procs.conformance_app import SERVICE, TOPIC

REPLIES = {"HoldRequested": ("FundsHeld", "action"), "ReleaseHold": ("HoldReleased", "compensate")}


def reply(
    record: Record, mode: str, barrier: dict[tuple[str, str], list[OutgoingRecord]]
) -> list[OutgoingRecord]:
    event_type = (record.header("choreo-type") or b"").decode()
    if event_type not in REPLIES:
        return []
    try:
        data = codec.loads(record.value)
        account, amount = data["account"], data.get("amount")
    except (ValueError, KeyError, TypeError, AttributeError):
        return []  # poison: skipped, not dead-lettered
    gid = (record.header("choreo-gid") or b"").decode()
    out_type, op = REPLIES[event_type]
    if mode != "rerun" and (gid, op) in barrier:
        return barrier[(gid, op)]
    if mode != "rerun" and op == "action" and (gid, "compensate") in barrier:
        return []
    payload = {"account": account}
    if out_type == "FundsHeld":
        payload["amount"] = amount
    headers = {
        "choreo-type": out_type,
        "choreo-id": str(uuid.uuid4()),
        "choreo-gid": gid,
        "choreo-saga": (record.header("choreo-saga") or b"").decode(),
        "choreo-step": "hold",
        "choreo-op": op,
        "choreo-outcome": "done",
        "choreo-causation": (record.header("choreo-id") or b"").decode(),
        "choreo-version": "1",
        "choreo-source": SERVICE,
    }
    key = None if mode == "keyless" else gid.encode()
    out = [
        OutgoingRecord(
            TOPIC, key, codec.dumps(payload), tuple((k, v.encode()) for k, v in headers.items())
        )
    ]
    barrier[(gid, op)] = out
    return out


async def main() -> None:
    mode = os.environ["ROGUE_MODE"]
    transport = KafkaTransport(os.environ["ROGUE_BROKER"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    barrier: dict[tuple[str, str], list[OutgoingRecord]] = {}
    async with transport:
        consumer = transport.consumer(os.environ["ROGUE_GROUP"], [TOPIC])
        await consumer.start()
        print("rogue: consuming", flush=True)
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout=0.2)
                for tp, records in batch.items():
                    for record in records:
                        await transport.send_many(reply(record, mode, barrier))
                    await consumer.commit({tp: records[-1].offset + 1})
        finally:
            await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())
