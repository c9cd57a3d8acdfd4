"""A service's metrics, with prometheus_client: a middleware that counts what the
dispatcher and the worker report, and the consumer lag read from the broker when scraped.

Every label is bounded by the code, never by the data: service and handler names come
from the registration, decisions and dead-letter kinds from fixed sets, topics and
partitions from the subscription. A gid never becomes a label.

Each ``ServiceMetrics`` owns its ``CollectorRegistry`` (no process-wide default), so two
services in one process, or one per test, never share or collide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from choreo.breaker import BreakerState, CircuitBreaker
from choreo.middleware import Middleware

if TYPE_CHECKING:
    from choreo.deadletter import DeadLetter
    from choreo.events import Message
    from choreo.handlers import Handler
    from choreo.store.base import Decision
    from choreo.transport.base import Record, TopicPartition, Transport

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds from taking a batch to its last acknowledgement: a few ms on an idle broker,
# up to seconds while a handler retries.
BATCH_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_RECORDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ServiceMetrics(Middleware):
    """Add it to a service's middleware (``choreo run --http`` does) and serve
    ``exposition()``; ``await refresh_lag(...)`` before each scrape updates the lag."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.handled = Counter(
            "choreo_records_handled",
            "Handler routes settled, by the barrier's decision (applied, failed, duplicate, "
            "hanging, null_compensation)",
            ["service", "handler", "decision"],
            registry=r,
        )
        self.attempts = Counter(
            "choreo_handler_attempts",
            "Handler calls, retries included (attempts minus handled routes are retries)",
            ["service", "handler"],
            registry=r,
        )
        self.dead_letters = Counter(
            "choreo_dead_letters",
            "Records written to the dead-letter topic, by kind (poison, failed, budget)",
            ["service", "kind"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "choreo_batch_seconds",
            "Seconds from taking a partition's batch to the acknowledgement of its outputs",
            ["service"],
            buckets=BATCH_SECONDS,
            registry=r,
        )
        self.batch_records = Histogram(
            "choreo_batch_records",
            "Records per handled batch",
            ["service"],
            buckets=BATCH_RECORDS,
            registry=r,
        )
        self.commits = Counter(
            "choreo_offset_commits",
            "Offset commits of the service's consumer group",
            ["service"],
            registry=r,
        )
        self.circuit_open = Gauge(
            "choreo_circuit_open",
            "1 while a handler's circuit breaker is open or half-open (consuming waits)",
            ["service", "breaker"],
            registry=r,
        )
        self.circuit_trips = Gauge(
            "choreo_circuit_trips",
            "Times a circuit breaker opened since the service started",
            ["service", "breaker"],
            registry=r,
        )
        self.lag = Gauge(
            "choreo_consumer_lag",
            "Records in a subscribed partition not yet committed by the service's group",
            ["service", "topic", "partition"],
            registry=r,
        )

        self._attempts: dict[str, Counter] = {}
        self._handled: dict[tuple[str, Decision], Counter] = {}

    # -- middleware ------------------------------------------------------------------------

    async def before_handle(self, message: Message, handler: Handler) -> None:
        # These two run for every record: the labelled children are looked up once each
        # (prometheus_client's labels() takes a lock and checks the values every call).
        child = self._attempts.get(handler.name)
        if child is None:
            child = self._attempts[handler.name] = self.attempts.labels(self.service, handler.name)
        child.inc()

    async def after_handle(self, message: Message, handler: Handler, decision: Decision) -> None:
        key = (handler.name, decision)
        child = self._handled.get(key)
        if child is None:
            child = self._handled[key] = self.handled.labels(
                self.service, handler.name, decision.value
            )
        child.inc()

    async def on_dead_letter(self, record: Record, letter: DeadLetter) -> None:
        self.dead_letters.labels(self.service, letter.kind).inc()

    async def after_batch(self, tp: TopicPartition, records: int, seconds: float) -> None:
        self.batch_seconds.labels(self.service).observe(seconds)
        self.batch_records.labels(self.service).observe(records)

    async def after_commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.labels(self.service).inc()

    # -- scraping --------------------------------------------------------------------------

    async def refresh_lag(self, transport: Transport, group: str, topics: Sequence[str]) -> None:
        """Lag of every partition of ``topics`` for ``group``: the log's end offset minus
        the group's committed offset (all of it while the group has committed nothing)."""
        tps = await transport.topic_partitions(topics)
        ends = await transport.end_offsets(tps)
        committed = await transport.group_offsets(group)
        for tp in tps:
            lag = max(0, ends.get(tp, 0) - committed.get(tp, 0))
            self.lag.labels(self.service, tp.topic, str(tp.partition)).set(lag)

    def refresh_breakers(self, breakers: Mapping[str, CircuitBreaker]) -> None:
        for name, breaker in breakers.items():
            closed = breaker.state is BreakerState.CLOSED
            self.circuit_open.labels(self.service, name).set(0 if closed else 1)
            self.circuit_trips.labels(self.service, name).set(breaker.trips)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
