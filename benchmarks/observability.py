"""What metrics and tracing cost: the dispatch benchmark's workload (one handler, one
output per record, memory transport and store) through a Service four ways, alternated
round by round in one process: plain; with ``ServiceMetrics`` (prometheus_client);
with OpenTelemetry's SDK recording every span into a processor that drops it (the SDK's
cost without an exporter's); with both. Reported as events/s and CPU microseconds per
event (``time.process_time``), medians over the rounds, with the ratio to plain.

    python -m benchmarks.observability [EVENTS] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from benchmarks import dispatch
from choreo.metrics import ServiceMetrics
from choreo.middleware import Middleware
from choreo.store.memory import MemoryStore
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


async def one(events: int, metrics: bool, tracing: bool) -> tuple[float, float]:
    workload = dispatch.make_workload(events)
    transport = MemoryTransport(MemoryBroker(dispatch.PARTITIONS))
    await dispatch.prefill(transport, workload)
    middleware: Sequence[Middleware] = [ServiceMetrics("bench")] if metrics else []
    provider: Any = _provider() if tracing else None
    cpu = time.process_time()
    rate = await dispatch.choreo_run(
        transport, MemoryStore(), workload, prefilled=True, middleware=middleware,
        tracer_provider=provider,
    )  # fmt: skip
    return rate, (time.process_time() - cpu) / events * 1e6


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    events = int(args[0]) if args else 20_000
    rounds = int(args[1]) if len(args) > 1 else 3
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    asyncio.run(one(2_000, True, True))  # warm-up: imports, first-call caches
    for _ in range(rounds):
        for name, (metrics, tracing) in VARIANTS.items():
            results[name].append(asyncio.run(one(events, metrics, tracing)))
    machine = platform.processor() or platform.machine()
    print(f"{events:,} events x {rounds} rounds, memory transport + store; "
          f"{machine}, Python {platform.python_version()}")  # fmt: skip
    base = statistics.median(rate for rate, _ in results["plain"])
    print(f"{'variant':<18} {'events/s':>9} {'cpu us/event':>13} {'vs plain':>9}")
    for name, samples in results.items():
        rate = statistics.median(r for r, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        print(f"{name:<18} {rate:>9,.0f} {cpu:>13.1f} {rate / base:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
