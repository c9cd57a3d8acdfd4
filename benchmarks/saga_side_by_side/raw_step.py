"""System (a): one step of the chain as a raw aiokafka relay, written as a competent
engineer would for at-least-once delivery without a framework.

    python -m benchmarks.saga_side_by_side.raw_step --bootstrap H:P --src T --dst T --group G

Per ``getmany()`` poll: decode each record, send the next event for every one of them
(key = gid, so a gid stays on one partition), await all the acknowledgements together,
then commit the poll's offsets. Producer acks=all with idempotence, auto-commit off. No
store, no dedupe: a crash between the sends and the commit re-sends (duplicates
downstream), which is what choreo's barrier is for.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def relay(args: argparse.Namespace) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=args.linger_ms,
        client_id=f"{args.group}.producer",
    )
    consumer = AIOKafkaConsumer(
        args.src,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"{args.group}.consumer",
        # The same fetch wait as choreo's consumers, so latencies compare like for like.
        fetch_max_wait_ms=args.fetch_max_wait_ms,
    )
    await producer.start()
    await consumer.start()
    print(f"raw step {args.group}: {args.src} -> {args.dst}", flush=True)
    dst, loads, dumps = args.dst, orjson.loads, orjson.dumps
    try:
        while not stopping.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=args.max_records)
            if not batch:
                continue
            acks = []
            for records in batch.values():
                for record in records:
                    event = loads(record.value)
                    value = dumps({"order_id": event["order_id"], "amount": event["amount"]})
                    acks.append(await producer.send(dst, value, key=record.key))
            await asyncio.gather(*acks)
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--linger-ms", type=int, default=0)
    parser.add_argument("--max-records", type=int, default=500)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=20)
    asyncio.run(relay(parser.parse_args()))


if __name__ == "__main__":
    main()
