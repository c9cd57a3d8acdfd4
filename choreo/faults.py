"""Fault controls for ``choreo.testing.Harness``: what a test arms, and the transport
wrapper that carries it out.

A test arms faults on ``h.faults``; each fires for the next ``times`` matching calls or
records and is then spent::

    h.faults.fail("charge", times=2)                 # retriable: retried, then succeeds
    h.faults.fail("charge", retriable=False)         # a BusinessFailure: the saga compensates
    h.faults.drop(PaymentCharged)                    # never reaches the log
    h.faults.duplicate("payments", times=3)          # written twice
    h.faults.delay(PaymentCharged, seconds=600)      # written 10 minutes later
    h.faults.crash_after("charge")                   # the service dies after the handler's
                                                     # effects commit, then restarts

Every participant of a harness talks to the log through its own ``FaultyTransport``
around the harness's transport, so the same faults work on ``memory://`` and on real
Kafka. Handler faults wrap the handler functions of the harness's services for the
harness's lifetime. ``h.faults.fired`` lists what fired, so a test can check that its
fault really happened instead of passing because it never did.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from choreo import codec
from choreo.errors import BusinessFailure, ConfigurationError, RetriableError
from choreo.events import Event
from choreo.handlers import Handler, HandlerFunc
from choreo.transport.base import (
    Consumer,
    Delivered,
    OutgoingRecord,
    Record,
    RevokeCallback,
    TopicPartition,
    Transport,
)

Sleep = Callable[[float], Awaitable[None]]


@dataclasses.dataclass
class _RecordFault:
    kind: str  # "drop", "duplicate" or "delay"
    topic: str
    event_type: str | None  # None: any record of the topic
    remaining: int
    seconds: float = 0.0

    def matches(self, record: OutgoingRecord) -> bool:
        if record.topic != self.topic:
            return False
        return self.event_type is None or _type_of(record) == self.event_type


@dataclasses.dataclass
class _CallFault:
    remaining: int
    error: BaseException | None  # None: crash the service after the call instead
    restart: bool = True


def _type_of(record: OutgoingRecord) -> str:
    for name, value in record.headers:
        if name == codec.H_TYPE:
            return value.decode(errors="replace")
    return ""


def _target(topic: str | type[Event]) -> tuple[str, str | None]:
    if isinstance(topic, str):
        return topic, None
    if isinstance(topic, type) and issubclass(topic, Event):
        return topic.topic, topic.event_type
    raise ConfigurationError(f"a fault targets a topic name or an Event class, not {topic!r}")


def _times(times: int) -> int:
    if times < 1:
        raise ConfigurationError("times must be >= 1")
    return times


class Faults:
    """The faults armed on one harness. ``sleep`` is what delays wait on (the harness's
    virtual clock, when it has one); ``crash`` is called with a service's name when a
    ``crash_after`` fires (the harness kills, and maybe restarts, that service)."""

    def __init__(self, sleep: Sleep = asyncio.sleep) -> None:
        self.sleep = sleep
        self.crash: Callable[[str, bool], None] = _no_crash
        self.fired: list[str] = []
        self._records: list[_RecordFault] = []
        self._calls: dict[tuple[str, str], list[_CallFault]] = {}
        self._in_flight: dict[str, set[asyncio.Task[Any]]] = {}
        self._handlers: dict[str, set[tuple[str, str]]] = {}  # name -> {(service, handler)}

    # -- arming ------------------------------------------------------------------------
    def fail(
        self,
        handler: str | Callable[..., Any],
        times: int = 1,
        *,
        retriable: bool = True,
        error: BaseException | None = None,
    ) -> None:
        """The next ``times`` calls of ``handler`` raise instead of running it: a
        ``RetriableError`` (the service retries within the handler's budget, a circuit
        breaker counts it) or, with ``retriable=False``, a ``BusinessFailure`` (the step
        fails and the saga compensates); or ``error`` as given. ``handler`` is the
        function, its name, or ``"service.name"`` when several services share a name."""
        if error is None:
            error = (
                RetriableError("injected fault: retriable failure")
                if retriable
                else BusinessFailure("injected fault: business failure")
            )
        self._arm_call(handler, _CallFault(_times(times), error))

    def crash_after(self, handler: str | Callable[..., Any], *, restart: bool = True) -> None:
        """The service of ``handler`` dies right after the handler's next call returns:
        that call's effects commit with its barrier record, but its outgoing events never
        reach the log and its offset is never committed (a crash between the store commit
        and the send). With ``restart`` the harness starts the service again; the record
        is redelivered and the barrier replays the recorded events instead of running the
        handler a second time."""
        self._arm_call(handler, _CallFault(1, None, restart))

    def drop(self, topic: str | type[Event], times: int = 1) -> None:
        """The next ``times`` records sent to ``topic`` (or of that Event class) are lost:
        the sender is told they were written (at offset -1), nobody ever reads them."""
        self._arm_record("drop", topic, times)

    def duplicate(self, topic: str | type[Event], times: int = 1) -> None:
        """The next ``times`` records sent to ``topic`` (or of that Event class) are
        written twice, as a producer retry without idempotence would."""
        self._arm_record("duplicate", topic, times)

    def delay(self, topic: str | type[Event], seconds: float, times: int = 1) -> None:
        """The next ``times`` records sent to ``topic`` (or of that Event class) are
        written ``seconds`` late on the harness's clock (a ``VirtualClock``'s ``advance``
        ends the wait). The sender waits meanwhile, as on a broker slow to acknowledge,
        so what it sends after them comes after them."""
        if seconds < 0:
            raise ConfigurationError("a delay is not negative")
        self._arm_record("delay", topic, times, seconds)

    def clear(self) -> None:
        """Disarm every fault not yet spent."""
        self._records.clear()
        self._calls.clear()

    @property
    def armed(self) -> bool:
        return bool(self._records or self._calls)

    @property
    def records_armed(self) -> bool:
        return bool(self._records)

    def _arm_record(
        self, kind: str, topic: str | type[Event], times: int, seconds: float = 0.0
    ) -> None:
        name, event_type = _target(topic)
        self._records.append(_RecordFault(kind, name, event_type, _times(times), seconds))

    def _arm_call(self, handler: str | Callable[..., Any], fault: _CallFault) -> None:
        key = self._resolve(handler)
        self._calls.setdefault(key, []).append(fault)

    def _resolve(self, handler: str | Callable[..., Any]) -> tuple[str, str]:
        name = handler if isinstance(handler, str) else getattr(handler, "__name__", "")
        if "." in name and name.split(".", 1)[1] in self._handlers:
            service, short = name.split(".", 1)
            if (service, short) in self._handlers[short]:
                return service, short
        found = self._handlers.get(name, set())
        if len(found) != 1:
            known = sorted(f"{s}.{h}" for keys in self._handlers.values() for s, h in keys)
            why = "no handler of this harness" if not found else "several handlers"
            raise ConfigurationError(f"{name!r} names {why}; known: {', '.join(known) or 'none'}")
        return next(iter(found))

    # -- handlers ----------------------------------------------------------------------
    def wrap(self, service: str, handler: Handler) -> Handler:
        """``handler`` with its function behind this object's call faults."""
        key = (service, handler.name)
        self._handlers.setdefault(handler.name, set()).add(key)
        func = handler.func
        in_flight = self._in_flight.setdefault(service, set())

        async def faulty(*args: Any) -> Any:
            fault = self._take_call(key)
            if fault is not None and fault.error is not None:
                self.fired.append(f"fail {service}.{handler.name}: {fault.error!r}")
                raise copy.copy(fault.error)  # a fresh one each time: no traceback piles up
            task = asyncio.current_task()
            if task is not None:
                in_flight.add(task)
            try:
                result = await func(*args)
            finally:
                if task is not None:
                    in_flight.discard(task)
            if fault is not None:
                self.fired.append(f"crash {service} after {handler.name}")
                self.crash(service, fault.restart)
            return result

        faulty.__name__ = handler.name
        wrapped: HandlerFunc = faulty
        return dataclasses.replace(handler, func=wrapped)

    def cancel_calls(self, service: str) -> None:
        """Cancel the handler calls of ``service`` in progress (it is being killed)."""
        for task in list(self._in_flight.get(service, ())):
            task.cancel()

    def _take_call(self, key: tuple[str, str]) -> _CallFault | None:
        faults = self._calls.get(key)
        if not faults:
            return None
        fault = faults[0]
        fault.remaining -= 1
        if fault.remaining == 0:
            faults.pop(0)
            if not faults:
                del self._calls[key]
        return fault

    # -- records -----------------------------------------------------------------------
    def take_record(self, record: OutgoingRecord) -> _RecordFault | None:
        for index, fault in enumerate(self._records):
            if fault.matches(record):
                fault.remaining -= 1
                if fault.remaining == 0:
                    del self._records[index]
                self.fired.append(f"{fault.kind} {_type_of(record) or 'record'} on {record.topic}")
                return fault
        return None


def _no_crash(service: str, restart: bool) -> None:
    raise ConfigurationError("crash_after needs a harness to kill the service")


class _Life:
    """A participant's process as its transport sees it: running, paused or dead."""

    def __init__(self) -> None:
        self.dead = False
        self.unpaused = asyncio.Event()
        self.unpaused.set()

    async def wait_unpaused(self, timeout: float | None = None) -> bool:
        if self.unpaused.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self.unpaused.wait()
        except TimeoutError:
            return False
        return True


class FaultyTransport(Transport):
    """One participant's view of the harness's transport, with the armed record faults
    applied to what it sends, and the participant's life: ``pause`` freezes it (polls
    return nothing, sends wait), ``kill`` makes it dead (sends and offset commits are
    lost, polls return nothing). It never starts or stops the transport it wraps."""

    def __init__(self, inner: Transport, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults
        self.url = inner.url
        self.life = _Life()

    def pause(self) -> None:
        self.life.unpaused.clear()

    def resume(self) -> None:
        self.life.unpaused.set()

    def kill(self) -> None:
        self.life.dead = True
        self.life.unpaused.set()  # wake the waiters: they find the process dead

    @property
    def paused(self) -> bool:
        return not self.life.unpaused.is_set()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def ensure_topics(self, topics: Sequence[str], partitions: int | None = None) -> None:
        await self.inner.ensure_topics(topics, partitions)

    async def send(self, record: OutgoingRecord) -> Delivered:
        return (await self.send_many([record]))[0]

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        await self.life.wait_unpaused()
        if self.life.dead:
            return [_lost(record) for record in records]
        if not self.faults.records_armed:  # nothing armed: straight through
            return await self.inner.send_many(records)
        delivered: list[Delivered] = []
        chunk: list[OutgoingRecord] = []
        firsts: list[int] = []  # per input record: its index in what the chunk returns

        async def flush() -> None:
            sent = await self.inner.send_many(chunk) if chunk else []
            delivered.extend(sent[i] for i in firsts)
            chunk.clear()
            firsts.clear()

        for record in records:
            fault = self.faults.take_record(record)
            kind = fault.kind if fault is not None else ""
            if kind == "drop":
                await flush()
                delivered.append(_lost(record))
                continue
            if kind == "delay" and fault is not None:
                await flush()  # what came before is not held back with it
                await self.faults.sleep(fault.seconds)
                if self.life.dead:
                    delivered.extend(_lost(r) for r in records[len(delivered) :])
                    return delivered
            firsts.append(len(chunk))
            chunk.append(record)
            if kind == "duplicate":
                chunk.append(record)
        await flush()
        return delivered

    def consumer(
        self, group: str, topics: Sequence[str], *, on_revoke: RevokeCallback | None = None
    ) -> Consumer:
        return FaultyConsumer(self.inner.consumer(group, topics, on_revoke=on_revoke), self.life)

    async def group_offsets(self, group: str) -> dict[TopicPartition, int]:
        return await self.inner.group_offsets(group)

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return await self.inner.end_offsets(tps)

    async def partitions_for(self, topic: str) -> int:
        return await self.inner.partitions_for(topic)

    def __getattr__(self, name: str) -> Any:
        # What a transport offers beyond the interface (the memory broker, Kafka's
        # settings) stays reachable through the wrapper.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _lost(record: OutgoingRecord) -> Delivered:
    return Delivered(record.topic, -1, -1)


class FaultyConsumer(Consumer):
    """A consumer that stops fetching while its participant is paused or dead, and whose
    commits are lost once it is dead (the next owner of its partitions reads again)."""

    def __init__(self, inner: Consumer, life: _Life) -> None:
        self.inner = inner
        self.life = life

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()  # a dead process leaves its group too (session timeout)

    async def getmany(
        self, timeout: float = 0.2, max_records: int = 500
    ) -> Mapping[TopicPartition, Sequence[Record]]:
        if not await self.life.wait_unpaused(timeout) or self.life.dead:
            if self.life.dead:
                await asyncio.sleep(timeout)
            return {}
        return await self.inner.getmany(timeout, max_records)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not self.life.dead:
            await self.inner.commit(offsets)

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        self.inner.pause(tps)

    def resume(self, tps: Sequence[TopicPartition]) -> None:
        self.inner.resume(tps)

    def assignment(self) -> frozenset[TopicPartition]:
        return self.inner.assignment()

    def blocked(self) -> dict[TopicPartition, str]:
        return self.inner.blocked()

    async def committed(self, tp: TopicPartition) -> int | None:
        return await self.inner.committed(tp)

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return await self.inner.end_offsets(tps)
