"""Run every benchmark once (each measurement repeated), print a table, write JSON.

    python -m benchmarks.run [--quick] [--kafka] [--repeat N] [--output PATH]

Each row compares choreo with a baseline measured in the same run, on the same machine,
interleaved with it (choreo, baseline, choreo, baseline, ...). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import dispatch, memory, saga
from benchmarks.common import Comparison, Samples, alternate, machine
from choreo.store.memory import MemoryStore
from choreo.transport.memory import MemoryBroker, MemoryTransport
from services_demo.contract import order_saga

RESULTS = Path(__file__).with_name("results.json")


@dataclass(frozen=True)
class Sizes:
    dispatch_events: int
    saga_count: int
    kafka_events: int
    memory_states: int  # sagas run to harvest the tracker's states and input
    memory_records: int  # barrier records traced
    warmup: int


FULL = Sizes(
    dispatch_events=30_000,
    saga_count=3_000,
    kafka_events=20_000,
    memory_states=1_000,
    memory_records=1_000,
    warmup=500,
)
QUICK = Sizes(
    dispatch_events=5_000,
    saga_count=500,
    kafka_events=3_000,
    memory_states=1_000,
    memory_records=1_000,
    warmup=200,
)


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- 1. dispatch on the memory transport ----------------------------------------------


async def dispatch_memory(sizes: Sizes, repeat: int) -> Comparison:
    def fresh() -> MemoryTransport:
        return MemoryTransport(MemoryBroker(dispatch.PARTITIONS))

    async def ours(_: int) -> float:
        workload = dispatch.make_workload(sizes.dispatch_events)
        return await dispatch.choreo_run(fresh(), MemoryStore(), workload)

    async def theirs(_: int) -> float:
        workload = dispatch.make_workload(sizes.dispatch_events)
        return await dispatch.bare_run(fresh(), workload)

    await dispatch.choreo_run(fresh(), MemoryStore(), dispatch.make_workload(sizes.warmup))
    await dispatch.bare_run(fresh(), dispatch.make_workload(sizes.warmup))
    choreo, baseline = await alternate(repeat, ours, theirs, "events/s")
    return Comparison(
        name="dispatch, memory transport + memory store",
        description=(
            f"{sizes.dispatch_events:,} events, one gid each, through a Service handler "
            "that returns one event: decode, route, barrier check, handler, barrier "
            "commit with outbox, publish, offset commit"
        ),
        choreo=choreo,
        baseline=baseline,
        baseline_description=(
            "bare loop: per poll, the same handler on the pre-decoded event for every "
            "record, every record sent on at once (acks awaited together), commit"
        ),
        extra={"events": sizes.dispatch_events, "partitions": dispatch.PARTITIONS},
    )


# -- 2. dispatch on Kafka + Redis ---------------------------------------------------------


async def dispatch_kafka(
    sizes: Sizes, repeat: int, kafka_url: str, redis_url: str, linger_ms: int
) -> Comparison:
    from choreo.store.redis import RedisStore
    from choreo.transport.kafka import KafkaTransport

    transport = KafkaTransport(kafka_url, partitions=dispatch.PARTITIONS, linger_ms=linger_ms)
    store = RedisStore(redis_url)
    async with transport, store:

        async def ours(_: int) -> float:
            workload = dispatch.make_workload(sizes.kafka_events)
            return await dispatch.choreo_run(transport, store, workload)

        async def theirs(_: int) -> float:
            workload = dispatch.make_workload(sizes.kafka_events)
            return await dispatch.bare_run(transport, workload)

        warmup = max(50, sizes.warmup // 4)
        await dispatch.choreo_run(transport, store, dispatch.make_workload(warmup))
        await dispatch.bare_run(transport, dispatch.make_workload(warmup))
        choreo, baseline = await alternate(repeat, ours, theirs, "events/s")
    default = " (KafkaTransport's default)" if linger_ms == 5 else ""
    return Comparison(
        name=f"dispatch, Kafka + Redis, linger_ms={linger_ms}",
        description=(
            f"{sizes.kafka_events:,} events through the same Service on a local "
            f"single-node Kafka (acks=all, idempotent, linger_ms={linger_ms}{default}) "
            "and the Redis store (one barrier check and one Lua commit per batch)"
        ),
        choreo=choreo,
        baseline=baseline,
        baseline_description=(
            "bare loop on the same KafkaTransport: per poll, the same handler for every "
            "record, every output sent, the acks awaited together (acks=all, idempotent), "
            "commit; no codec, no Redis"
        ),
        extra={
            "events": sizes.kafka_events,
            "partitions": dispatch.PARTITIONS,
            "linger_ms": linger_ms,
        },
    )


# -- 3. end-to-end saga -----------------------------------------------------------------


async def saga_end_to_end(sizes: Sizes, repeat: int) -> Comparison:
    shape: dict[str, float] = {}

    async def ours(_: int) -> float:
        result = await saga.saga_run(sizes.saga_count)
        shape["records_per_saga"] = result.records_per_saga
        shape["reads_per_saga"] = result.reads_per_saga
        return result.sagas_per_second

    async def theirs(_: int) -> float:
        return await saga.echo_chain(sizes.saga_count, round(shape["records_per_saga"]))

    warm = await saga.saga_run(sizes.warmup)
    await saga.echo_chain(sizes.warmup, round(warm.records_per_saga))
    choreo, baseline = await alternate(repeat, ours, theirs, "sagas/s")
    length = round(shape["records_per_saga"])
    return Comparison(
        name="order saga end to end, memory transport",
        description=(
            f"{sizes.saga_count:,} order sagas (services_demo: orders, inventory, payment, "
            "shipping and a MemoryTracker in one process), all completing; from start-up "
            "to the orders service recording the last SagaCompleted"
        ),
        choreo=choreo,
        baseline=baseline,
        baseline_description=(
            f"{sizes.saga_count:,} records through a bare echo chain of {length} stages "
            f"({length} records per chain, as many as a saga writes), same transport"
        ),
        extra={"sagas": sizes.saga_count, **shape, "baseline_reads_per_chain": length},
    )


# -- 4. memory ----------------------------------------------------------------------------


def _per(traced: list[memory.Traced], attr: str, items: int, per: int, unit: str) -> Samples:
    return Samples(unit, [getattr(t, attr) * per / items for t in traced])


async def _traced_pair(
    repeat: int,
    ours: Callable[[], Awaitable[memory.Traced]],
    theirs: Callable[[], Awaitable[memory.Traced]],
) -> tuple[list[memory.Traced], list[memory.Traced]]:
    a, b = [], []
    for _ in range(repeat):
        a.append(await ours())
        b.append(await theirs())
    return a, b


async def memory_benchmarks(sizes: Sizes, repeat: int) -> list[Comparison]:
    harvest = await saga.saga_run(sizes.memory_states)
    states = list(harvest.states.values())
    blobs = memory.state_blobs(states)
    count = len(states)
    folded, dicts = await _traced_pair(
        repeat,
        lambda: memory.tracker_states(harvest.tracker_input, [order_saga]),
        lambda: memory.saga_states_dicts(blobs),
    )
    inputs = memory.barrier_inputs(sizes.memory_records)
    stored, plain = await _traced_pair(
        repeat, lambda: memory.barrier_store(inputs), lambda: memory.barrier_dict(inputs)
    )
    records = sizes.memory_records
    avg_json = sum(len(blob) for _, blob in blobs) / count
    state_desc = (
        f"{count:,} completed order sagas as the tracker holds them: their records "
        "decoded and folded (TrackerCore.fold) into a dict of SagaState"
    )
    dict_desc = "the final states' JSON parsed into plain dicts (orjson.loads), by gid"
    store_desc = (
        f"{records:,} barrier records written by MemoryStore.commit, each with a "
        "one-event outbox as the dispatcher packs it"
    )
    plain_desc = "dict {(gid, step, op): (status, outputs)} holding the same bytes"
    return [
        Comparison(
            name="tracker states, peak per 1,000 sagas",
            description=state_desc + " (peak includes the folds' short-lived garbage)",
            choreo=_per(folded, "peak", count, 1000, "KiB/1k"),
            baseline=_per(dicts, "peak", count, 1000, "KiB/1k"),
            baseline_description=dict_desc,
            extra={"sagas": count, "json_bytes_per_state": avg_json},
        ),
        Comparison(
            name="tracker states, retained per saga",
            description=state_desc,
            choreo=_per(folded, "retained", count, 1, "bytes"),
            baseline=_per(dicts, "retained", count, 1, "bytes"),
            baseline_description=dict_desc,
            extra={"sagas": count, "json_bytes_per_state": avg_json},
        ),
        Comparison(
            name="barrier store, peak per 1,000 records",
            description=store_desc,
            choreo=_per(stored, "peak", records, 1000, "KiB/1k"),
            baseline=_per(plain, "peak", records, 1000, "KiB/1k"),
            baseline_description=plain_desc,
            extra={"records": records, "outbox_bytes": len(inputs[0][1])},
        ),
        Comparison(
            name="barrier store, retained per record",
            description=store_desc,
            choreo=_per(stored, "retained", records, 1, "bytes"),
            baseline=_per(plain, "retained", records, 1, "bytes"),
            baseline_description=plain_desc,
            extra={"records": records, "outbox_bytes": len(inputs[0][1])},
        ),
    ]


# -- reporting ------------------------------------------------------------------------------


def _fmt(samples: Samples) -> str:
    value = samples.median
    if samples.unit == "KiB/1k":
        value /= 1024
    text = f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
    return f"{text} ({samples.spread * 100:.1f}%)"


def table(results: list[Comparison]) -> str:
    lines = [
        "| benchmark | unit | choreo | baseline | choreo / baseline |",
        "|---|---|---:|---:|---:|",
    ]
    for row in results:
        unit = row.choreo.unit
        lines.append(
            f"| {row.name} | {unit} | {_fmt(row.choreo)} | {_fmt(row.baseline)} | {row.ratio:.2f} |"
        )
    return "\n".join(lines)


def _loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages: other work on the machine skews every number."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def machine_lines(info: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"- CPU: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable)",
            f"- memory: {info['memory_total_gib']} GiB",
            f"- platform: {info['platform']}",
            f"- Python: {info['python']} ({info['python_build']})",
            f"- load average before / after: {info.get('load_average_before')} / "
            f"{info.get('load_average_after')}",
        ]
    )


async def run_local(args: argparse.Namespace) -> list[Comparison]:
    """Everything in-process; run before Kafka starts, whose JVM would compete for CPU."""
    sizes = QUICK if args.quick else FULL
    results = []
    _progress("dispatch on the memory transport")
    results.append(await dispatch_memory(sizes, args.repeat))
    _progress("order saga end to end")
    results.append(await saga_end_to_end(sizes, args.repeat))
    _progress("memory")
    results.extend(await memory_benchmarks(sizes, args.repeat))
    return results


async def run_kafka(args: argparse.Namespace, kafka_url: str, redis_url: str) -> list[Comparison]:
    sizes = QUICK if args.quick else FULL
    results = []
    for linger in (5, 0):
        _progress(f"dispatch on Kafka + Redis, linger_ms={linger}")
        results.append(await dispatch_kafka(sizes, args.repeat, kafka_url, redis_url, linger))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (~30 s)")
    parser.add_argument(
        "--kafka", action="store_true", help="also run on a local Kafka broker and Redis"
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    # Leader moves on freshly created topics make aiokafka log retries; they are harmless.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    started = time.monotonic()
    info = machine()
    load_before = _loadavg()
    results = asyncio.run(run_local(args))
    servers: dict[str, Any] = {}
    if args.kafka:
        from benchmarks.servers import local_servers

        with local_servers() as kafka:
            servers = {
                "kafka_startup_seconds": kafka.kafka_startup_seconds,
                "redis_startup_seconds": kafka.redis_startup_seconds,
            }
            # Next to the memory transport's row, so the dispatch rows read together.
            results[1:1] = asyncio.run(run_kafka(args, kafka.kafka_url, kafka.redis_url))
    elapsed = time.monotonic() - started
    info["load_average_before"] = load_before
    info["load_average_after"] = _loadavg()
    report = {
        "machine": info,
        "mode": "quick" if args.quick else "full",
        "kafka": args.kafka,
        "repeat": args.repeat,
        "elapsed_seconds": round(elapsed, 1),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"servers": servers} if servers else {}),
        "results": [row.to_json() for row in results],
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nmachine:\n{machine_lines(info)}\n")
    print(table(results))
    print(
        f"\nmedian of {args.repeat} runs (spread: (max - min) / median); ratio of the medians; "
        "throughput ratios above 1 and memory ratios below 1 would favour choreo."
        f"\n{'quick' if args.quick else 'full'} run in {elapsed:.0f}s; "
        f"written to {args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
