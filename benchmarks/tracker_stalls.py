"""How soon a faust tracker holding many sagas in flight publishes the compensations of
many sagas stalling together (issue 11's target: within 1 s of the deadline, p99, with
100k sagas waiting and 1k timing out together).

    python -m benchmarks.tracker_stalls                     # 100,000 waiting, 1,000 stalling
    python -m benchmarks.tracker_stalls --waiting 20000 --stalling 500 --store memory

One Kafka broker (started here, or ``--kafka``). ``--waiting`` sagas of
``benchmarks.tracker_fold`` are prefilled as start events only (first step pending, an hour
away); ``choreo tracker`` (faust engine, ``--store``) follows that saga and this module's
``stall`` saga, and folds them. Once it holds them all, 10 ``stall`` sagas are written and
left to time out (a warm-up, ``--warm-up``: the tracker's first send to a topic waited for
its metadata),
then ``--stalling`` ``stall`` sagas at once: each its start event, whose step is
dispatched with a deadline (``BENCH_STALL_DEADLINE``, 20 s) that passes for all of them
together; the step never answers (a silent participant), so at its deadline the tracker
publishes its compensation. The delay of a saga is its compensation record's timestamp
(its send time, this machine's clock) minus its deadline (the start record's timestamp,
the fold's ``now``, plus the deadline); reported: p50, p99, max over the stalling sagas,
split at the ``DeadlineCheck`` the timer sends, with the tracker's own
deadline-to-compensation histogram (``/metrics``) beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from choreo import Event, SagaContract, Step

PREFIX = os.environ.get("BENCH_STALL_PREFIX", "stall")


def topic(name: str) -> str:
    return f"{PREFIX}.{name}"


class StallStart(Event, type="stall.Start", topic=topic("start")):
    order_id: str


class StallS1Done(Event, type="stall.S1Done", topic=topic("s1")):
    order_id: str


class StallS2Done(Event, type="stall.S2Done", topic=topic("s2")):
    order_id: str


class StallUndo1(Event, type="stall.Undo1", topic=topic("undo1")):
    order_id: str


class StallUndone1(Event, type="stall.Undone1", topic=topic("undone1")):
    order_id: str


DEADLINE = float(os.environ.get("BENCH_STALL_DEADLINE", "20"))
TOPICS = [topic(n) for n in ("start", "s1", "s2", "undo1", "undone1")]

stall = SagaContract(
    "stall",
    start=StallStart,
    steps=[
        Step("step1", on=StallStart, done=StallS1Done, compensation=StallUndo1,
             compensated=StallUndone1, deadline=DEADLINE, service="svc1"),
    ],
)  # fmt: skip


async def write_stalling(bootstrap: str, prefix: str, count: int) -> None:
    """``count`` stall sagas' start events (gids ``prefix`` + number), all at once."""
    from aiokafka import AIOKafkaProducer

    from choreo import codec
    from choreo.events import Envelope, Message

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await producer.start()
    try:
        futures = []
        for n in range(count):
            gid = f"{prefix}{n:08d}"
            start = StallStart(order_id=gid)
            env = Envelope.first(start, gid=gid, saga="stall", source="bench")
            out = codec.encode(Message(env, start, start.topic))
            futures.append(await producer.send(out.topic, out.value, key=out.key,
                                               headers=list(out.headers)))  # fmt: skip
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def compensations(bootstrap: str, prefix: str) -> dict[str, float]:
    """gid -> when its first compensation was published, of the gids ``prefix`` + n."""
    found: dict[str, float] = {}
    for record in asyncio.run(read_topic(bootstrap, topic("undo1"))):
        gid = record.key.decode()
        if gid.startswith(prefix):
            found.setdefault(gid, record.timestamp / 1000)
    return found


async def read_topic(bootstrap: str, name: str) -> list[Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from choreo.transport.kafka import KafkaTransport

    async with KafkaTransport(f"kafka://{bootstrap}") as transport:
        count = await transport.partitions_for(name)
    tps = [TopicPartition(name, p) for p in range(count)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")  # fmt: skip
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                out += records
        return out
    finally:
        await consumer.stop()


def metrics(url: str, token: str) -> dict[str, float]:
    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return {
        line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("choreo_deadline_to_compensation")
    }


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks import tracker_fold as fold

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tracker_stalls",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--stalling", type=int, default=1000)
    parser.add_argument("--store", default="rocksdb", choices=["rocksdb", "memory"])
    parser.add_argument("--kafka", help="HOST:PORT of a running broker (default: start one)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--warm-up", type=int, default=10,
                        help="stall sagas timed out first, not measured (10; 0: none)")  # fmt: skip
    parser.add_argument("--root", type=Path, help="the tracker of the checkout in this directory")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    run = f"{os.getpid()}.{int(time.time())}"
    fold_prefix = f"stallfold.{run}"
    options = SimpleNamespace(kafka=args.kafka, keep_logs=args.keep_logs)
    with fold.broker(options) as (bootstrap, workdir):  # type: ignore[arg-type]
        fold.make_topics(bootstrap, fold.SHARED_TOPICS, delete=fold.SHARED_TOPICS)
        fold.make_topics(bootstrap, [fold.topic(s, fold_prefix) for s in fold.STAGES])
        fold.make_topics(bootstrap, TOPICS, delete=TOPICS)
        print(f"prefilling {args.waiting} waiting sagas ...", flush=True)
        fold.prefill(bootstrap, fold_prefix, 0, args.waiting, 1)
        runner = fold.Runner(SimpleNamespace(loglevel="info", tracker_arg=[]), bootstrap, workdir)  # type: ignore[arg-type]
        command = [
            sys.executable, "-m", "choreo.cli.main", "tracker", "benchmarks.tracker_fold:saga",
            "benchmarks.tracker_stalls:stall", "--broker", f"kafka://{bootstrap}",
            "--http", "127.0.0.1:0", "--app-id", f"stall.{run}", "--store", args.store,
        ]  # fmt: skip
        proc, log = runner.spawn("tracker", command, fold_prefix, args.root)
        try:
            progress = runner._tracker(log)
            poll = runner.poller("tracker", proc, log, progress)
            began = time.monotonic()
            while poll()[1] < args.waiting:
                if time.monotonic() > began + args.timeout:
                    raise SystemExit(f"the tracker did not fold the waiting sagas ({log})")
                time.sleep(0.5)
            print(f"  tracker holds {args.waiting} sagas after {time.monotonic() - began:.0f} s; "
                  f"RSS {fold.rss_mb(proc.pid):.0f} MB; writing {args.stalling} stalling "
                  f"sagas (deadline {DEADLINE:.0f} s)", flush=True)  # fmt: skip
            # A warm-up wave first: the tracker's producer then knows the stall topics
            # (its first send to a topic waits for the topic's metadata: seconds here).
            if args.warm_up:
                asyncio.run(write_stalling(bootstrap, "w", args.warm_up))
                warm = time.time()
                while len(compensations(bootstrap, "w")) < args.warm_up:
                    if time.time() > warm + DEADLINE + args.timeout:
                        raise SystemExit(f"the warm-up sagas were not compensated ({log})")
                    time.sleep(1.0)
                print(f"  warm-up compensated; writing {args.stalling} stalling sagas",
                      flush=True)  # fmt: skip
            asyncio.run(write_stalling(bootstrap, "s", args.stalling))
            wrote = time.time()
            undo: dict[str, float] = {}
            while time.time() < wrote + DEADLINE + args.timeout:
                time.sleep(2.0)
                if time.time() < wrote + DEADLINE:
                    continue
                undo = compensations(bootstrap, "s")
                if len(undo) >= args.stalling:
                    break
            deadlines: dict[str, float] = {}
            for record in asyncio.run(read_topic(bootstrap, topic("start"))):
                headers = dict(record.headers)
                if b"DeadlineCheck" not in b"".join(headers.values()):
                    deadlines.setdefault(record.key.decode(), record.timestamp / 1000 + DEADLINE)
            checks: dict[str, float] = {}  # when the timer sent each saga's DeadlineCheck
            for record in asyncio.run(read_topic(bootstrap, topic("start"))):
                headers = dict(record.headers)
                if b"DeadlineCheck" in b"".join(headers.values()) and record.key[:1] == b"s":
                    checks.setdefault(record.key.decode(), record.timestamp / 1000)
            lines = log.read_text().splitlines()
            url = next(x.rsplit("on ", 1)[1].strip() for x in lines if "API on http://" in x)
            observed = metrics(url, runner.token)
        finally:
            runner.stop(proc)
        delays = sorted(undo[g] - deadlines[g] for g in undo if g in deadlines)
        if not delays:
            raise SystemExit(f"no compensation published ({log})")
        p99 = delays[min(len(delays) - 1, int(0.99 * len(delays)))]
        timer = sorted(checks[g] - deadlines[g] for g in checks if g in deadlines)
        fold = sorted(undo[g] - checks[g] for g in undo if g in checks)
        for name, values in (("deadline -> check sent", timer), ("check -> published", fold)):
            if values:
                print(f"  {name}: p50 {statistics.median(values) * 1000:.0f} ms, max "
                      f"{values[-1] * 1000:.0f} ms", flush=True)  # fmt: skip
        result = {
            "waiting": args.waiting, "stalling": args.stalling, "compensated": len(delays),
            "store": args.store, "p50_s": statistics.median(delays), "p99_s": p99,
            "max_s": delays[-1], "min_s": delays[0], "tracker_metrics": observed,
            "timer_p50_s": statistics.median(timer) if timer else None,
            "timer_max_s": timer[-1] if timer else None,
            "fold_p50_s": statistics.median(fold) if fold else None,
            "fold_max_s": fold[-1] if fold else None,
            "load_average": os.getloadavg(),
        }  # fmt: skip
        print(f"{len(delays)} of {args.stalling} compensations published: deadline -> "
              f"published p50 {result['p50_s'] * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max "
              f"{delays[-1] * 1000:.0f} ms; load {os.getloadavg()}", flush=True)  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
