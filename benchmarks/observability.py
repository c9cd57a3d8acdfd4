"""What metrics and tracing cost: the dispatch benchmark's workload (one handler, one
output per record) through a Service four ways, alternated round by round in one
process: plain; with ``ServiceMetrics`` (prometheus_client); with OpenTelemetry's SDK
recording every span into a processor that drops it (the SDK's cost without an
exporter's); with both. Reported as events/s and CPU microseconds per event
(``time.process_time``: this process only, so a shared machine disturbs it least; on
Kafka the broker's and Redis's CPU are not in it), medians over the rounds, with the
ratio to plain.

``--kafka`` runs the same on a local Kafka broker and Redis store (``choreo.local``)
after the memory transport and store. ``--tracker`` measures the tracker's pipeline
(``TrackerPipeline.handle_batch``, the fold every tracker shell runs) folding 5-event
sagas (benchmarks.tracker_fold's) in batches of 500 into a no-op send, without and with
the SDK: the cost of its fold and publish spans (``choreo.tracker.tracing``).

    python -m benchmarks.observability [EVENTS] [ROUNDS] [--kafka] [--tracker]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from benchmarks import dispatch
from choreo.metrics import ServiceMetrics
from choreo.middleware import Middleware
from choreo.store.memory import MemoryStore
from choreo.transport.base import Record
from choreo.transport.memory import MemoryBroker, MemoryTransport


class _Drop(SpanProcessor):
    """Receives every finished span and keeps none: the SDK's work, no exporter's."""

    def on_end(self, span: ReadableSpan) -> None:
        return None


def _provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(_Drop())
    return provider


VARIANTS: dict[str, tuple[bool, bool]] = {
    "plain": (False, False),
    "metrics": (True, False),
    "tracing": (False, True),
    "metrics+tracing": (True, True),
}
Run = Callable[[int, bool, bool], Awaitable[tuple[float, float]]]


async def one(events: int, metrics: bool, tracing: bool) -> tuple[float, float]:
    """(events/s, CPU us/event) of one run on the memory transport and store."""
    workload = dispatch.make_workload(events)
    transport = MemoryTransport(MemoryBroker(dispatch.PARTITIONS))
    await dispatch.prefill(transport, workload)
    return await _measure(transport, MemoryStore(), workload, metrics, tracing)


async def _measure(
    transport: Any, store: Any, workload: dispatch.Workload, metrics: bool, tracing: bool
) -> tuple[float, float]:
    middleware: Sequence[Middleware] = [ServiceMetrics("bench")] if metrics else []
    provider: Any = _provider() if tracing else None
    cpu = time.process_time()
    rate = await dispatch.choreo_run(
        transport, store, workload, prefilled=True, middleware=middleware,
        tracer_provider=provider,
    )  # fmt: skip
    return rate, (time.process_time() - cpu) / workload.count * 1e6


def on_kafka(kafka_url: str, redis_url: str) -> Run:
    """``one`` on Kafka + Redis: each run opens its own transport and store, and
    prefills its fresh topics before the clocks start."""
    from choreo.store.redis import RedisStore
    from choreo.transport.kafka import KafkaTransport

    async def run(events: int, metrics: bool, tracing: bool) -> tuple[float, float]:
        transport = KafkaTransport(kafka_url, partitions=dispatch.PARTITIONS)
        store = RedisStore(redis_url)
        async with transport, store:
            workload = dispatch.make_workload(events)
            await dispatch.prefill(transport, workload)
            return await _measure(transport, store, workload, metrics, tracing)

    return run


async def tracker(sagas: int, _metrics: bool, tracing: bool) -> tuple[float, float]:
    """(events/s, CPU us/event) of the tracker's pipeline folding ``sagas`` sagas."""
    from benchmarks import tracker_fold
    from choreo.tracker.core import TrackerCore
    from choreo.tracker.pipeline import TrackerPipeline

    async def send(_records: Any) -> None:
        return None

    pipeline = TrackerPipeline(
        TrackerCore([tracker_fold.saga]), send=send, clock=time.time,
        tracer_provider=_provider() if tracing else None,
    )  # fmt: skip
    records = [
        Record(out.topic, 0, n, out.key, out.value, out.headers)
        for n, out in enumerate(
            out
            for gid, amount in tracker_fold.gids(0, sagas)
            for out in tracker_fold.saga_records(tracker_fold.PREFIX, gid, amount)
        )
    ]
    # A saga's events spread over batches, as when they arrive a hop apart.
    records.sort(key=lambda r: (r.offset % tracker_fold.EVENTS_PER_SAGA, r.offset))
    now = time.time()
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(records), 500):
        await pipeline.handle_batch([(record, now) for record in records[i : i + 500]])
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    assert pipeline.processed == len(records)
    return len(records) / elapsed, used / len(records) * 1e6


def rounds(
    label: str, run: Run, size: int, count: int, variants: dict[str, tuple[bool, bool]]
) -> None:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    asyncio.run(run(max(1, size // 10), True, True))  # warm-up: imports, first-call caches
    for _ in range(count):
        for name, (metrics, tracing) in variants.items():
            results[name].append(asyncio.run(run(size, metrics, tracing)))
    machine = platform.processor() or platform.machine()
    print(f"{label}: {size:,} x {count} rounds; {machine}, Python {platform.python_version()}")
    base = statistics.median(rate for rate, _ in results["plain"])
    base_cpu = statistics.median(c for _, c in results["plain"])
    print(f"{'variant':<18} {'events/s':>9} {'cpu us/event':>13} {'vs plain':>9} {'cpu x':>6}")
    for name, samples in results.items():
        rate = statistics.median(r for r, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        print(f"{name:<18} {rate:>9,.0f} {cpu:>13.1f} {rate / base:>9.2f} {cpu / base_cpu:>6.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.observability")
    parser.add_argument("events", nargs="?", type=int, default=20_000)
    parser.add_argument("rounds", nargs="?", type=int, default=3)
    parser.add_argument("--kafka", action="store_true", help="also on local Kafka + Redis")
    parser.add_argument("--tracker", action="store_true", help="also the tracker's pipeline")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory run")
    args = parser.parse_args(argv)
    if not args.no_memory:
        rounds("dispatch, memory transport + store", one, args.events, args.rounds, VARIANTS)
    if args.tracker:
        plain_or_traced = {"plain": (False, False), "tracing": (False, True)}
        sagas = max(1, args.events // 5)
        rounds("tracker pipeline, 5-event sagas (events)", tracker, sagas, args.rounds,
               plain_or_traced)  # fmt: skip
    if args.kafka:
        from benchmarks.servers import local_servers

        logging.getLogger("aiokafka").setLevel(logging.ERROR)  # leader moves: harmless
        with local_servers() as servers:
            run = on_kafka(servers.kafka_url, servers.redis_url)
            rounds("dispatch, Kafka + Redis", run, args.events, args.rounds, VARIANTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
