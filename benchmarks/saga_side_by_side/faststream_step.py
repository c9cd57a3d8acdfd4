"""System (b): one step of the chain in FastStream (run by the benchmark's own virtualenv,
never imported by choreo or by the rest of the benchmark).

    <bench-venv>/bin/python benchmarks/saga_side_by_side/faststream_step.py \\
        --bootstrap H:P --src T --dst T --group G

As close to the raw relay's semantics as FastStream's API allows:
- producer acks=all with idempotence (``KafkaBroker(acks="all", enable_idempotence=True)``);
- offsets committed only after the handler, and so after its publication was acknowledged
  (``ack_policy=AckPolicy.ACK``: auto-commit off, one ``commit()`` after each message);
- the handler returns the next event, published by the ``@publisher`` with the incoming
  key (the gid), so each gid stays on one partition;
- ``max_workers=6``: one consumer per partition in the process (FastStream's concurrency
  for a committing subscriber; a single consumer handles one message at a time);
- per-message logs at DEBUG (``log_level``), so they cost what choreo's do: nothing.
A batch subscriber is not used: its publisher sends a batch to one partition, which would
break the per-gid ordering every system here keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from faststream.kafka import KafkaBroker, KafkaMessage, KafkaResponse
from faststream.middlewares import AckPolicy
from pydantic import BaseModel


class Order(BaseModel):
    order_id: str
    amount: int


def build(args: argparse.Namespace) -> KafkaBroker:
    broker = KafkaBroker(
        args.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=args.linger_ms,
        client_id=args.group,
        log_level=logging.DEBUG,
    )
    publisher = broker.publisher(args.dst)

    @publisher
    @broker.subscriber(
        args.src,
        group_id=args.group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
        max_workers=args.workers,
    )
    async def handle(order: Order, message: KafkaMessage) -> KafkaResponse:
        return KafkaResponse(
            Order(order_id=order.order_id, amount=order.amount), key=message.raw_message.key
        )

    return broker


async def serve(args: argparse.Namespace) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    broker = build(args)
    await broker.start()
    print(f"faststream step {args.group}: {args.src} -> {args.dst}", flush=True)
    try:
        await stopping.wait()
    finally:
        await broker.stop()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--linger-ms", type=int, default=0)
    parser.add_argument("--workers", type=int, default=6)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
