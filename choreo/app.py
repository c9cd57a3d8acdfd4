"""The service app: a router with a name, a broker, a store and a lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from choreo import codec
from choreo.breaker import BreakerState, CircuitBreaker
from choreo.deadletter import DLQ_TOPIC
from choreo.dispatch import Dispatcher
from choreo.errors import ConfigurationError, StoreLost, TransportError
from choreo.events import Envelope, Event, EventRegistry, Message
from choreo.handlers import Handler
from choreo.middleware import Middleware
from choreo.redact import redact_text, redact_url
from choreo.retry import Backoff, RetryPolicy
from choreo.router import Router
from choreo.routes import RouteTable, resolve
from choreo.store.base import Store
from choreo.system_events import SYSTEM_EVENTS
from choreo.transport.base import Transport
from choreo.urls import open_store, open_transport
from choreo.worker import Worker

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from choreo.outbox import LocalTransaction
    from choreo.saga.contract import SagaContract

log = logging.getLogger("choreo.app")


class Service(Router):
    """One choreography participant::

        inventory = Service("inventory", broker="kafka://localhost:9092",
                            store="redis://localhost:6379", contracts=[order_saga])

        @inventory.on_event(OrderPlaced)
        async def reserve_stock(event: OrderPlaced, ctx: Context) -> StockReserved: ...

    ``broker`` and ``store`` take a URL or a ready object (a test harness passes a shared
    in-memory broker). Contracts let handlers omit ``step=``: a handler for a step's
    trigger is that step's action, one for its compensation event its compensation.
    """

    def __init__(
        self,
        name: str,
        *,
        broker: str | Transport = "memory://",
        store: str | Store = "memory://",
        contracts: Sequence[SagaContract] = (),
        partitions: int = 4,
        dlq_topic: str = DLQ_TOPIC,
        limits: codec.Limits | None = None,
        middleware: Sequence[Middleware] = (),
        group: str | None = None,
        transport_options: Mapping[str, Any] | None = None,
        store_options: Mapping[str, Any] | None = None,
        lifespan: Callable[[Service], contextlib.AbstractAsyncContextManager[None]] | None = None,
        batch_size: int = 500,
        outbox_relay: bool = True,
        tracer_provider: TracerProvider | None = None,
        state: Any = None,
    ) -> None:
        """``transport_options`` go to the transport (for Kafka: ``security`` with SASL/TLS
        settings, ``consumer_options``, ``producer_options``...), ``store_options`` to the
        store (``retention_seconds`` of barrier records). ``lifespan`` wraps the running
        service, like Starlette's: open your own clients before consuming starts.
        ``batch_size`` bounds the records taken per poll and handled per batch of a
        partition (one store round trip to check them, one to commit them, one wait for
        their outgoing records' acknowledgements); a rebalance waits for the batch in
        hand. Larger batches trade latency for throughput under load; a light load makes
        small batches by itself. On a ``postgresql://`` store, ``outbox_relay`` runs the
        relay of the outbox (``transaction()``'s events) in the service; turn it off when
        relays run on their own (``choreo db relay``). ``tracer_provider``: where the
        spans of handled records go (default: OpenTelemetry's global provider, looked up
        at start; see ``choreo.tracing``). ``state``: what handlers reach as ``ctx.state``,
        for resources opened in ``lifespan`` (a client, a pool) without globals; by
        default an empty ``types.SimpleNamespace`` to set attributes on
        (``app.state.http = client``), or an object of your own class for types."""
        super().__init__()
        if not name or any(c in name for c in " /:"):
            raise ConfigurationError(f"service name {name!r} must be non-empty, without ' /:'")
        if batch_size < 1:
            raise ConfigurationError("batch_size must be >= 1")
        if partitions < 1:
            raise ConfigurationError("partitions must be >= 1")
        self.name = name
        self.broker = broker
        self.store = store
        self.contracts = tuple(contracts)
        self.partitions = partitions
        self.dlq_topic = dlq_topic
        self.limits = limits or codec.Limits()
        self.middleware = list(middleware)
        self.tracer_provider = tracer_provider
        self.state: Any = types.SimpleNamespace() if state is None else state
        # What handler retries sleep on; a test harness swaps in a virtual clock's.
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.group = group or f"choreo.{name}"
        self.transport_options = dict(transport_options or {})
        self.store_options = dict(store_options or {})
        self.lifespan = lifespan
        self.batch_size = batch_size
        self.outbox_relay = outbox_relay
        self._extra_events: list[type[Event]] = []
        self._transport: Transport | None = None
        self._store: Store | None = None
        self.worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Service({self.name!r}, handlers={len(self.handlers)})"

    def add_handler(self, handler: Handler) -> None:
        resolve(self.name, handler, self.contracts)  # refuse now what start-up would refuse
        super().add_handler(handler)

    def register_events(self, *events: type[Event]) -> None:
        """Declare events this service only sees on shared topics, so they are skipped
        instead of dead-lettered as unknown."""
        self._extra_events.extend(events)

    # -- derived views ---------------------------------------------------------
    def resolved_handlers(self) -> list[Handler]:
        """The handlers with their barrier step and op settled (see ``choreo.routes``)."""
        return [route.handler for route in self.routes()]

    def registry(self) -> EventRegistry:
        registry = EventRegistry()
        for cls in SYSTEM_EVENTS:
            registry.add(cls)
        for contract in self.contracts:
            for cls in contract.event_types():
                registry.add(cls)
        for handler in self.handlers:
            registry.add(handler.event)
            for cls in handler.emits:
                registry.add(cls)
        for cls in self._extra_events:
            registry.add(cls)
        return registry

    def routes(self) -> RouteTable:
        return RouteTable.build(self.name, self.handlers, self.contracts)

    def subscribed_topics(self) -> list[str]:
        return sorted({handler.event.topic for handler in self.handlers})

    def known_topics(self) -> list[str]:
        return sorted({cls.topic for cls in self.registry()} | {self.dlq_topic})

    # -- lifespan ----------------------------------------------------------------
    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise ConfigurationError(f"{self.name} is not running; use `async with app.running()`")
        return self._transport

    @contextlib.asynccontextmanager
    async def running(
        self, *, broker: str | Transport | None = None, store: str | Store | None = None
    ) -> AsyncIterator[Service]:
        """Start consuming; on exit stop, finishing the batch in hand. ``broker`` and
        ``store`` override the constructor's (the test harness swaps them here)."""
        broker = broker if broker is not None else self.broker
        store = store if store is not None else self.store
        transport = (
            open_transport(broker, partitions=self.partitions, **self.transport_options)
            if isinstance(broker, str)
            else broker
        )
        kv = open_store(store, **self.store_options) if isinstance(store, str) else store
        owns_transport, owns_store = isinstance(broker, str), isinstance(store, str)
        stopping = asyncio.Event()
        task: asyncio.Task[None] | None = None
        relay: asyncio.Task[None] | None = None
        stack = contextlib.AsyncExitStack()
        if owns_transport:
            await transport.start()
        try:
            if owns_store:
                await kv.start()
            try:
                self._transport, self._store = transport, kv
                await transport.ensure_topics(self.known_topics(), self.partitions)
                await self._check_store_remembers(transport, kv)
                if self.lifespan is not None:
                    await stack.enter_async_context(self.lifespan(self))
                relay = self._start_relay(kv, transport, stopping)
                if self.handlers:
                    self.worker = Worker(
                        transport=transport,
                        group=self.group,
                        topics=self.subscribed_topics(),
                        dispatcher=Dispatcher(
                            service=self.name,
                            routes=self.routes(),
                            registry=self.registry(),
                            store=kv,
                            transport=transport,
                            dlq_topic=self.dlq_topic,
                            limits=self.limits,
                            middleware=self.middleware,
                            tracer_provider=self.tracer_provider,
                            sleep=self.sleep,
                            state=self.state,
                        ),
                        middleware=self.middleware,
                        batch_size=self.batch_size,
                    )
                    task = asyncio.create_task(
                        self.worker.run(stopping), name=f"{self.name}-worker"
                    )
                self._worker_task = task
                yield self
            finally:
                stopping.set()
                self._worker_task = None
                if task is not None:
                    await task
                if relay is not None:
                    await relay
                await stack.aclose()
                self._transport = self._store = None
                if owns_store:
                    await kv.stop()
        finally:
            if owns_transport:
                await transport.stop()

    def _start_relay(
        self, store: Store, transport: Transport, stopping: asyncio.Event
    ) -> asyncio.Task[None] | None:
        from choreo.store.base import TransactionalStore

        if not (self.outbox_relay and isinstance(store, TransactionalStore)):
            return None
        from choreo.outbox import OutboxRelay
        from choreo.store.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        relay = OutboxRelay(store, transport)
        return asyncio.create_task(relay.run(stopping), name=f"{self.name}-outbox-relay")

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[LocalTransaction]:
        """A transaction on the service's PostgreSQL store for a local write and the events
        it causes, committed together (DTM's two-phase message)::

            async with shop.transaction() as tx:
                await tx.db.execute("INSERT INTO orders VALUES ($1, $2)", order_id, amount)
                await tx.start(OrderPlaced(order_id=order_id, amount=amount), key=order_id)

        No saga without its order row, no order row without its saga; ``key`` makes the
        start idempotent (docs/postgres.md). The outbox relay publishes after the commit."""
        from choreo.outbox import LocalTransaction
        from choreo.store.postgres import PostgresStore

        store = self._store
        if not isinstance(store, PostgresStore):
            raise ConfigurationError(
                f"{self.name}: transaction() needs a running service on a postgresql:// store"
            )
        async with store.pool.acquire() as conn, conn.transaction():
            yield LocalTransaction(conn, store.tables, self.name, self._saga_of)

    def _saga_of(self, event: Event) -> str:
        return next((c.name for c in self.contracts if type(event) is c.start), "")

    async def _check_store_remembers(self, transport: Transport, store: Store) -> None:
        """An empty store under a group that has consumed before means the barrier records
        are gone (Redis restarted without persistence): redeliveries would run twice."""
        if not (store.fresh and self.handlers) or store.accept_empty:
            return
        backoff = Backoff(RetryPolicy(backoff=0.1, backoff_max=2.0))
        while True:
            try:  # a broker just started may not have a group coordinator yet
                committed = await transport.group_offsets(self.group)
                break
            except TransportError:
                if backoff.attempt >= 20:
                    raise
                await backoff.wait()
        if any(offset > 0 for offset in committed.values()):
            raise StoreLost(
                f"{self.name}: the store at {redact_url(store.url)} is empty, but consumer group "
                f"{self.group!r} has committed offsets: the barrier records it relied on are "
                "lost. Restore the store from its persistence files, or start with "
                "store_options={'accept_empty': True} if you emptied it on purpose "
                "(docs/delivery.md, 'The store must not forget')"
            )
        # Checked once per store: from here on this store holds what the group writes,
        # so services started later on the same store object must not take it for lost.
        store.fresh = False

    async def publish(
        self,
        event: Event,
        *,
        gid: str | None = None,
        saga: str | None = None,
        key: str | None = None,
    ) -> Envelope:
        """Publish an event outside a handler, typically the one that starts a saga.
        Without ``gid`` a new saga id is made; ``saga`` defaults to the contract whose
        start event this is. ``key`` makes a start idempotent: the gid (unless given) and
        the event id are derived from it, so publishing again after an ambiguous failure
        repeats the same event, which the first step's barrier and the tracker take for
        a duplicate instead of a second saga."""
        if saga is None:
            saga = self._saga_of(event)
        envelope = Envelope.keyed(event, key=key, gid=gid, saga=saga, source=self.name)
        await self.transport.send(codec.encode(Message(envelope, event, event.topic)))
        return envelope

    async def serve(self, stopping: asyncio.Event) -> None:
        """Run until ``stopping`` is set (``choreo run`` sets it on SIGTERM/SIGINT)."""
        async with self.running():
            log.info("%s consuming %s as group %s", self.name, self.subscribed_topics(), self.group)
            await self.until_stopped(stopping)

    def breakers(self) -> dict[str, CircuitBreaker]:
        """The circuit breakers of this service's handlers, by name."""
        return {h.breaker.name: h.breaker for h in self.handlers if h.breaker is not None}

    def alive(self) -> bool:
        """Inside ``running()``: False once the worker has ended (only a failure ends it)."""
        task = self._worker_task
        return self._transport is not None and (task is None or not task.done())

    async def readiness(self, timeout: float = 2.0) -> dict[str, str]:
        """Inside ``running()``: what keeps the service from doing its work, by part
        (empty when ready): the worker ended or holds no partition yet, the store or the
        broker did not answer within ``timeout`` seconds."""
        transport, store = self._transport, self._store
        if transport is None or store is None:
            return {"service": "not running"}
        problems: dict[str, str] = {}
        if not self.alive():
            problems["worker"] = "the worker has ended"
        elif self.worker is not None and not (
            self.worker.consumer and self.worker.consumer.assignment()
        ):
            problems["worker"] = "no partition assigned yet (joining the consumer group)"
        elif self.worker is not None and self.worker.consumer is not None:
            blocked = self.worker.consumer.blocked()
            if blocked:
                problems["partitions"] = "; ".join(f"{tp}: {why}" for tp, why in blocked.items())
        open_circuits = [
            f"{name} ({breaker.state.value})"
            for name, breaker in self.breakers().items()
            if breaker.state is not BreakerState.CLOSED
        ]
        if open_circuits:
            problems["circuits"] = "not closed: " + ", ".join(open_circuits)
        probes = {
            "store": store.get("choreo:readiness-probe"),
            "broker": transport.partitions_for(self.dlq_topic),
        }
        for part, probe in probes.items():
            try:
                async with asyncio.timeout(timeout):
                    await probe
            except TimeoutError:
                problems[part] = f"no answer within {timeout:g} s"
            except Exception as exc:  # what is wrong is the answer; the probe must not fail
                problems[part] = redact_text(f"{type(exc).__name__}: {exc}")[:300]
        return problems

    async def until_stopped(self, stopping: asyncio.Event) -> None:
        """Inside ``running()``: wait for ``stopping``, or for the worker to end on its
        own, which only a failure does; its error is then raised when ``running()``
        exits, so the process ends non-zero and an orchestrator restarts it."""
        waiting = asyncio.create_task(stopping.wait())
        watched = [waiting] + ([self._worker_task] if self._worker_task is not None else [])
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
