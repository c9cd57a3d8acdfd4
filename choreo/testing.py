"""A harness for testing services together, in memory or against a real broker.

    async with Harness(orders, inventory, payment) as h:
        gid = await h.publish(OrderPlaced(order_id="o1", amount=5))
        await h.drain()
        assert [m.envelope.event_type for m in h.history(gid)] == [...]

    async with Harness(orders, inventory, payment, MemoryTracker([order_saga])) as h:
        gid = await h.publish(OrderPlaced(order_id="o2", amount=5))
        state = await h.wait(gid)              # COMPLETED, COMPENSATED or STUCK
        assert state.status is SagaStatus.COMPLETED

Every participant shares one transport and one store. ``broker=`` (or the
``CHOREO_TEST_BROKER`` environment variable) switches the same test to a real broker,
e.g. ``kafka://127.0.0.1:9092``; ``store=`` (``CHOREO_TEST_STORE``) to ``redis://...``.

A ``MemoryTracker([contract])`` is a participant too: the saga tracker with its states in
a dict (``tracker.states()``), for tests and for demos that run in one process.

``Harness(..., clock=VirtualClock())`` skips time: ``await h.advance(600)`` makes a
10-minute deadline due (the tracker compensates) and ends handler retry sleeps, at once.

Faults (``choreo.faults``), on memory and on real Kafka alike: ``h.faults.fail(handler,
times=2)``, ``h.faults.drop/duplicate/delay(topic or Event class)``,
``h.faults.crash_after(handler)``; ``await h.kill(service)`` / ``await h.restart(service)``;
``h.pause(h.tracker)`` / ``h.resume(h.tracker)`` (or ``async with h.paused(h.tracker)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from choreo import codec
from choreo.app import Service
from choreo.clock import VirtualClock
from choreo.errors import ConfigurationError, PoisonEvent
from choreo.events import Event, EventRegistry, Message
from choreo.faults import Faults, FaultyTransport
from choreo.handlers import Handler
from choreo.saga.state import SagaState, SagaStatus
from choreo.store.base import Store
from choreo.system_events import DeadlineCheck
from choreo.tracker.memory import MemoryTracker
from choreo.transport.base import Consumer, OutgoingRecord, Record, TopicPartition, Transport
from choreo.urls import open_store, open_transport

log = logging.getLogger("choreo.testing")

# Records the tracker sends to itself: plumbing, not part of a saga's story.
INTERNAL_TYPES = frozenset({DeadlineCheck.event_type})

__all__ = ["Faults", "Harness", "MemoryTracker", "Participant", "VirtualClock"]


class Participant(Protocol):
    """What the harness needs of a service or a tracker."""

    name: str
    group: str

    def running(
        self, *, broker: str | Transport | None = None, store: str | Store | None = None
    ) -> contextlib.AbstractAsyncContextManager[Any]: ...

    def subscribed_topics(self) -> list[str]: ...

    def known_topics(self) -> list[str]: ...

    def registry(self) -> EventRegistry: ...


class Harness:
    def __init__(
        self,
        *participants: Participant,
        broker: str | None = None,
        store: str | None = None,
        partitions: int = 4,
        clock: VirtualClock | None = None,
    ) -> None:
        if not participants:
            raise ConfigurationError("Harness needs at least one service")
        self.participants = participants
        self.clock = clock
        if clock is not None:
            for participant in participants:
                if isinstance(participant, MemoryTracker):
                    participant.use_clock(clock.now)
                elif isinstance(participant, Service):
                    participant.sleep = clock.sleep
        self.broker_url = broker or os.environ.get("CHOREO_TEST_BROKER", "memory://")
        self.store_url = store or os.environ.get("CHOREO_TEST_STORE", "memory://")
        self.partitions = partitions
        self.registry = EventRegistry()
        for participant in participants:
            self.registry.merge(participant.registry())
        self.transport: Transport = open_transport(self.broker_url, partitions=partitions)
        self.store: Store = open_store(self.store_url)
        self.messages: list[Message] = []
        self.dead: list[Record] = []
        self.undecodable: list[Record] = []
        self._spy: Consumer | None = None
        self._seen: dict[TopicPartition, int] = {}
        self._stack = contextlib.AsyncExitStack()
        self.faults = Faults(clock.sleep if clock is not None else asyncio.sleep)
        self.faults.crash = self._crash
        # Per running participant: its exit stack and its view of the transport.
        self._alive: dict[int, tuple[contextlib.AsyncExitStack, FaultyTransport]] = {}
        self._original: dict[int, list[Handler]] = {}
        self._crashes: set[asyncio.Task[None]] = set()

    @property
    def topics(self) -> list[str]:
        return sorted({t for p in self.participants for t in p.known_topics()})

    async def __aenter__(self) -> Harness:
        await self._stack.enter_async_context(self._lifespan())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    @contextlib.asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        async with self.transport, self.store:
            await self.transport.ensure_topics(self.topics, self.partitions)
            self._wrap_handlers()
            try:
                for participant in self.participants:
                    await self._start(participant)
                self._spy = self.transport.consumer(f"choreo.harness.{uuid.uuid4()}", self.topics)
                await self._spy.start()
                try:
                    yield
                finally:
                    await self._spy.stop()
            finally:
                await asyncio.gather(*self._crashes, return_exceptions=True)
                for _, transport in self._alive.values():
                    transport.resume()  # a frozen participant could not stop
                for participant in reversed(self.participants):
                    if id(participant) in self._alive:
                        stack, _ = self._alive.pop(id(participant))
                        await stack.aclose()
                self._unwrap_handlers()

    # -- participants' lives (kill, restart, pause) -------------------------------------
    def _wrap_handlers(self) -> None:
        """Put every service's handlers behind ``self.faults`` (undone on exit)."""
        for participant in self.participants:
            if isinstance(participant, Service):
                self._original[id(participant)] = list(participant.handlers)
                participant.handlers[:] = [
                    self.faults.wrap(participant.name, handler) for handler in participant.handlers
                ]

    def _unwrap_handlers(self) -> None:
        for participant in self.participants:
            original = self._original.pop(id(participant), None)
            if isinstance(participant, Service) and original is not None:
                participant.handlers[:] = original

    async def _start(self, participant: Participant) -> None:
        transport = FaultyTransport(self.transport, self.faults)
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(participant.running(broker=transport, store=self.store))
        self._alive[id(participant)] = (stack, transport)

    def participant(self, which: str | Participant) -> Participant:
        """A participant by its name (a service's, or ``h.tracker.name``) or itself."""
        for participant in self.participants:
            if participant is which or participant.name == which:
                return participant
        names = ", ".join(p.name for p in self.participants)
        raise ConfigurationError(f"{which!r} is not a participant of this harness ({names})")

    def _life(self, which: str | Participant) -> FaultyTransport:
        participant = self.participant(which)
        alive = self._alive.get(id(participant))
        if alive is None:
            raise ConfigurationError(f"{participant.name} is not running (killed?)")
        return alive[1]

    async def kill(self, which: str | Participant) -> None:
        """Kill a participant as a crash would: its handler calls in progress are
        cancelled (their effects never reach the store), nothing it sends from now on
        reaches the log and no offset it commits counts; it leaves its consumer group.
        What it had not committed is redelivered to whoever reads next (``restart``)."""
        participant = self.participant(which)
        self._life(participant).kill()
        self.faults.cancel_calls(participant.name)
        await self._stop_dead(participant)

    async def _stop_dead(self, participant: Participant) -> None:
        stack, _ = self._alive.pop(id(participant))
        await stack.aclose()

    async def restart(self, which: str | Participant) -> None:
        """Start a killed participant again, on a fresh connection to the log."""
        participant = self.participant(which)
        if id(participant) in self._alive:
            raise ConfigurationError(f"{participant.name} is running; kill it first")
        await self._start(participant)

    def _crash(self, service: str, restart: bool) -> None:
        """A ``crash_after`` fired: dead at once (the send and the offset commit that
        follow are lost), stopped and maybe restarted in the background."""
        participant = self.participant(service)
        self._life(participant).kill()

        async def stop_and_restart() -> None:
            await self._stop_dead(participant)
            if restart:
                await self._start(participant)

        task = asyncio.create_task(stop_and_restart(), name=f"harness-crash-{service}")
        self._crashes.add(task)
        task.add_done_callback(self._crashes.discard)
        task.add_done_callback(_report_failed_restart)

    def pause(self, which: str | Participant) -> None:
        """Freeze a participant (``h.tracker`` for one): it fetches nothing and what it
        sends waits, as a stopped process; deadlines due meanwhile fire on ``resume``."""
        self._life(which).pause()

    def resume(self, which: str | Participant) -> None:
        self._life(which).resume()

    @contextlib.asynccontextmanager
    async def paused(self, which: str | Participant) -> AsyncIterator[None]:
        """``pause`` for the block, ``resume`` after it."""
        self.pause(which)
        try:
            yield
        finally:
            if id(self.participant(which)) in self._alive:
                self.resume(which)

    async def publish(
        self, event: Event, *, gid: str | None = None, saga: str | None = None
    ) -> str:
        """Publish through the first running participant that can (a Service)."""
        for participant in self.participants:
            publish = getattr(participant, "publish", None)
            if publish is not None and id(participant) in self._alive:
                envelope = await publish(event, gid=gid, saga=saga)
                return str(envelope.gid)
        raise ConfigurationError("no running participant of this harness can publish")

    async def _collect(self) -> None:
        assert self._spy is not None
        batch = await self._spy.getmany(timeout=0.05)
        for records in batch.values():
            for record in records:
                self._seen[record.tp] = record.offset + 1
                if record.topic.endswith(".dlq"):
                    self.dead.append(record)
                    continue
                try:
                    self.messages.append(codec.decode(record, self.registry))
                except PoisonEvent:
                    self.undecodable.append(record)

    async def _lag(self) -> dict[str, int]:
        """Unprocessed records per group (the harness's own reader included)."""
        ends = await self.transport.end_offsets(await self.transport.topic_partitions(self.topics))
        lag: dict[str, int] = {}
        for participant in self.participants:
            committed = await self.transport.group_offsets(participant.group)
            subscribed = set(participant.subscribed_topics())
            lag[participant.group] = sum(
                end - committed.get(tp, 0) for tp, end in ends.items() if tp.topic in subscribed
            )
        lag["harness"] = sum(end - self._seen.get(tp, 0) for tp, end in ends.items())
        return lag

    async def drain(self, timeout: float = 15.0, settle: float = 0.05) -> None:
        """Wait until every participant has committed everything there is to read and the
        harness has seen every record; raises TimeoutError naming who lags."""
        deadline = time.monotonic() + timeout
        idle_rounds = 0
        lag: dict[str, int] = {}
        while time.monotonic() < deadline:
            await self._collect()
            lag = await self._lag()
            idle_rounds = idle_rounds + 1 if not any(lag.values()) else 0
            if idle_rounds >= 3:
                return
            await asyncio.sleep(settle)
        raise TimeoutError(f"not idle after {timeout}s; records behind per group: {lag}")

    def history(self, gid: str, *, internal: bool = False) -> list[Message]:
        """A saga's messages in causal order: each after the event that caused it, else
        by the time it occurred. (The harness reads several topics at once, so arrival
        order across topics means nothing.) The tracker's own timer records
        (``choreo.DeadlineCheck``) only with ``internal=True``."""
        return causal_order(
            [
                m
                for m in self.messages
                if m.gid == gid and (internal or m.envelope.event_type not in INTERNAL_TYPES)
            ]
        )

    def published(self, event: type[Event] | None = None) -> list[Message]:
        if event is None:
            return list(self.messages)
        return [m for m in self.messages if m.envelope.event_type == event.event_type]

    @property
    def tracker(self) -> MemoryTracker:
        """The harness's ``MemoryTracker`` participant (ConfigurationError without one)."""
        for participant in self.participants:
            if isinstance(participant, MemoryTracker):
                return participant
        raise ConfigurationError(
            "this harness has no tracker: add MemoryTracker([contract]) to its participants"
        )

    async def advance(self, seconds: float) -> None:
        """Move the harness's ``VirtualClock`` ahead (deadlines due, retry sleeps over),
        then give the tracker a tick to act on it."""
        if self.clock is None:
            raise ConfigurationError("advance() needs Harness(..., clock=VirtualClock())")
        await self.clock.advance(seconds)
        ticks = [p.tick for p in self.participants if isinstance(p, MemoryTracker)]
        await asyncio.sleep(2 * max(ticks, default=0.0))

    async def wait_for(self, gid: str, *statuses: SagaStatus, timeout: float = 30.0) -> SagaState:
        """The saga's state once the tracker has it in one of ``statuses`` (default: any
        final one: COMPLETED, COMPENSATED or STUCK); TimeoutError naming where it is
        otherwise. Records are collected meanwhile, so ``history`` is current."""
        wanted = set(statuses) or {
            SagaStatus.COMPLETED,
            SagaStatus.COMPENSATED,
            SagaStatus.STUCK,
        }
        tracker = self.tracker
        deadline = time.monotonic() + timeout
        while True:
            await self._collect()
            state = tracker.get(gid)
            if state is not None and state.status in wanted:
                return state
            if time.monotonic() > deadline:
                where = "unknown to the tracker" if state is None else state.status.value
                raise TimeoutError(
                    f"saga {gid} is {where} after {timeout}s, waiting for "
                    + ", ".join(sorted(s.value for s in wanted))
                )
            await asyncio.sleep(0.02)

    async def wait(self, gid: str, timeout: float = 30.0) -> SagaState:
        """The saga's final state (COMPLETED, COMPENSATED or STUCK), see ``wait_for``."""
        return await self.wait_for(gid, timeout=timeout)

    def dead_letters(self, gid: str | None = None) -> list[Record]:
        """Dead-lettered records, optionally of one saga (the record key is its gid)."""
        if gid is None:
            return list(self.dead)
        return [record for record in self.dead if record.key == gid.encode()]

    def types(self, gid: str, *, internal: bool = False) -> list[str]:
        """The event types of ``history(gid)``."""
        return [m.envelope.event_type for m in self.history(gid, internal=internal)]

    async def send_raw(
        self, topic: str, value: bytes, headers: Sequence[tuple[str, bytes]], key: bytes | None
    ) -> None:
        """Put arbitrary bytes on a topic, for poison-event tests."""
        await self.transport.send(OutgoingRecord(topic, key, value, tuple(headers)))


def _report_failed_restart(task: asyncio.Task[None]) -> None:
    """A test waiting for the crashed service would only see a timeout: say why."""
    if not task.cancelled() and task.exception() is not None:
        log.error("stopping or restarting a crashed service failed", exc_info=task.exception())


def causal_order(messages: Sequence[Message]) -> list[Message]:
    timed = sorted(range(len(messages)), key=lambda i: messages[i].envelope.occurred_at)
    first_with_id: dict[str, int] = {}
    for index in timed:
        first_with_id.setdefault(messages[index].envelope.event_id, index)
    ordered: list[Message] = []
    placed: set[int] = set()

    def place(index: int, depth: int = 0) -> None:
        if index in placed:
            return
        placed.add(index)
        cause = first_with_id.get(messages[index].envelope.causation_id)
        if cause is not None and depth < 1000:
            place(cause, depth + 1)
        ordered.append(messages[index])

    for index in timed:
        place(index)
    return ordered
