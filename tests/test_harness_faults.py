"""The harness's fault controls (``h.faults``, ``h.kill``/``restart``, ``h.pause``/``resume``):
each fault is checked to have fired (``h.faults.fired``), then what the framework promises
despite it: effects applied once, sagas completed or compensated.

A 3-step shop saga (stock -> payment -> shipping) with its own topic and event types per
test, so on the session's shared Kafka broker no other test's records meet these faults.
The tests taking ``backend`` run on memory and on real Kafka + Redis with the same
assertions; the others on memory only, for speed, or all of them on Kafka + Redis with
``CHOREO_FAULTS_ON_KAFKA=1 .venv/bin/python -m pytest tests/test_harness_faults.py``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from choreo import (
    ConfigurationError,
    Context,
    Event,
    RetryPolicy,
    SagaContract,
    SagaStatus,
    Service,
    Step,
)
from choreo.deadletter import H_REASON
from choreo.testing import Harness, MemoryTracker, VirtualClock

pytestmark = pytest.mark.timeout(120)

HOUR = 3600.0


@dataclass
class Shop:
    tag: str
    contract: SagaContract
    services: tuple[Service, Service, Service]
    start: Callable[[str], Event]
    types: dict[str, type[Event]]
    calls: collections.Counter[str]
    gate: asyncio.Event  # the payment action waits on it when the order id says so
    entered: asyncio.Event


def build_shop(tag: str, deadline: float = HOUR) -> Shop:
    topic = f"faults.{tag}"

    class ShopEvent(Event, topic=topic):
        order_id: str

    names = [
        "OrderPlaced", "StockReserved", "ReleaseStock", "StockReleased", "PaymentCharged",
        "RefundPayment", "PaymentRefunded", "Shipped", "CancelShipment", "ShipmentCancelled",
    ]  # fmt: skip
    types: dict[str, type[Event]] = {
        name: type(name, (ShopEvent,), {}, type=f"{tag}.{name}") for name in names
    }
    t = types
    contract = SagaContract(
        f"shop{tag}",
        start=t["OrderPlaced"],
        steps=[
            Step("stock", on=t["OrderPlaced"], done=t["StockReserved"],
                 compensation=t["ReleaseStock"], compensated=t["StockReleased"],
                 deadline=deadline, service="stock"),
            Step("payment", on=t["StockReserved"], done=t["PaymentCharged"],
                 compensation=t["RefundPayment"], compensated=t["PaymentRefunded"],
                 deadline=deadline, service="payment"),
            Step("shipping", on=t["PaymentCharged"], done=t["Shipped"],
                 compensation=t["CancelShipment"], compensated=t["ShipmentCancelled"],
                 deadline=deadline, service="shipping"),
        ],
        retry_backoff=0.1,
        retry_backoff_max=0.2,
    )  # fmt: skip
    retry = RetryPolicy(max_attempts=3, backoff=0.01, backoff_max=0.02)
    services = tuple(
        Service(name, group=f"{tag}.{name}", contracts=[contract])
        for name in ("stock", "payment", "shipping")
    )
    stock, payment, shipping = services
    calls: collections.Counter[str] = collections.Counter()
    gate, entered = asyncio.Event(), asyncio.Event()

    def step(service: Service, trigger: str, done: str, undo: str, undone: str, key: str) -> None:
        async def act(event: Event, ctx: Context) -> Any:
            order_id: str = event.order_id  # type: ignore[attr-defined]
            calls[key] += 1
            if key == "payment" and order_id.startswith("gated"):
                entered.set()
                await gate.wait()
            ctx.tx.incr(f"{tag}:{key}:{order_id}", 1)
            return t[done](order_id=order_id)

        async def compensate(event: Event, ctx: Context) -> Any:
            order_id: str = event.order_id  # type: ignore[attr-defined]
            calls[f"undo {key}"] += 1
            ctx.tx.incr(f"{tag}:{key}:{order_id}", -1)
            return t[undone](order_id=order_id)

        act.__name__, compensate.__name__ = key, f"undo_{key}"
        service.on_event(t[trigger], retry=retry)(act)
        service.on_event(t[undo], retry=retry)(compensate)

    step(stock, "OrderPlaced", "StockReserved", "ReleaseStock", "StockReleased", "stock")
    step(payment, "StockReserved", "PaymentCharged", "RefundPayment", "PaymentRefunded", "payment")
    step(shipping, "PaymentCharged", "Shipped", "CancelShipment", "ShipmentCancelled", "shipping")
    return Shop(
        tag,
        contract,
        (stock, payment, shipping),
        lambda order_id: t["OrderPlaced"](order_id=order_id),
        types,
        calls,
        gate,
        entered,
    )


@dataclass
class Env:
    h: Harness
    shop: Shop
    tracker: MemoryTracker

    def type(self, name: str) -> type[Event]:
        return self.shop.types[name]

    async def effects(self, order_id: str) -> dict[str, int]:
        return {
            key: await self.h.store.get_int(f"{self.shop.tag}:{key}:{order_id}")
            for key in ("stock", "payment", "shipping")
        }

    def count(self, gid: str, name: str) -> int:
        return self.h.types(gid).count(self.type(name).event_type)


@pytest.fixture
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """Memory unless the test takes ``backend`` (or ``CHOREO_FAULTS_ON_KAFKA=1`` puts
    every test of this module on Kafka + Redis); a VirtualClock always."""
    if "backend" in request.fixturenames:
        broker, store = request.getfixturevalue("backend")
    elif os.environ.get("CHOREO_FAULTS_ON_KAFKA") == "1":
        broker = f"kafka://{request.getfixturevalue('kafka_bootstrap')}"
        store = request.getfixturevalue("redis_url")
    else:
        broker, store = "memory://", "memory://"
    tag = f"f{uuid.uuid4().hex[:8]}"
    shop = build_shop(tag)
    tracker = MemoryTracker([shop.contract], group=f"{tag}.tracker")
    clock = VirtualClock()
    async with Harness(*shop.services, tracker, broker=broker, store=store, clock=clock) as h:
        await h.drain(timeout=60)  # new groups on a shared broker: let them settle first
        yield Env(h, shop, tracker)


async def test_duplicated_records_apply_once(env: Env, backend: tuple[str, str]) -> None:
    h = env.h
    h.faults.duplicate(env.shop.contract.start.topic, times=3)
    gid = await h.publish(env.shop.start("o1"))
    assert (await h.wait(gid)).status is SagaStatus.COMPLETED
    await h.drain(timeout=30)
    assert len(h.faults.fired) == 3
    # Each really written twice at least (a duplicate's handler replays its recorded
    # events, so later ones may come three times).
    for name in ("OrderPlaced", "StockReserved", "PaymentCharged"):
        assert env.count(gid, name) >= 2, h.types(gid)
    assert await env.effects("o1") == {"stock": 1, "payment": 1, "shipping": 1}
    assert env.shop.calls == {"stock": 1, "payment": 1, "shipping": 1}  # the barrier held


async def test_retriable_failures_are_retried_and_the_saga_completes(env: Env) -> None:
    h = env.h
    h.faults.fail("payment", times=2)
    gid = await h.publish(env.shop.start("o1"))
    assert (await h.wait(gid)).status is SagaStatus.COMPLETED
    assert [f.split(":")[0] for f in h.faults.fired] == ["fail payment.payment"] * 2
    assert env.shop.calls["payment"] == 1  # the third attempt ran the handler
    assert await env.effects("o1") == {"stock": 1, "payment": 1, "shipping": 1}
    assert h.dead_letters(gid) == []


async def test_a_business_failure_compensates(env: Env) -> None:
    h = env.h
    h.faults.fail(env.shop.services[2].handlers[0].func, retriable=False)  # by function
    gid = await h.publish(env.shop.start("o1"))
    state = await h.wait(gid)
    assert state.status is SagaStatus.COMPENSATED
    assert "choreo.StepFailed" in h.types(gid)
    assert env.shop.calls["shipping"] == 0
    assert await env.effects("o1") == {"stock": 0, "payment": 0, "shipping": 0}


async def test_failures_past_the_retry_budget_are_dead_lettered(env: Env) -> None:
    h = env.h
    h.faults.fail("stock", times=3, error=ConnectionError("warehouse down"))
    gid = await h.publish(env.shop.start("o1"))
    await h.drain()
    (letter,) = h.dead_letters(gid)
    assert b"warehouse down" in (letter.header(H_REASON) or b"")
    assert env.shop.calls["stock"] == 0


async def test_a_dropped_record_stalls_the_saga_until_its_deadline(env: Env) -> None:
    h = env.h
    h.faults.drop(env.type("PaymentCharged"))
    gid = await h.publish(env.shop.start("o1"))
    await h.wait_for(gid, SagaStatus.RUNNING)
    await h.drain()
    assert h.faults.fired == [
        f"drop {env.type('PaymentCharged').event_type} on {env.shop.contract.start.topic}"
    ]
    assert env.count(gid, "PaymentCharged") == 0
    await h.advance(HOUR + 1)
    assert (await h.wait(gid)).status is SagaStatus.COMPENSATED
    assert env.shop.calls["shipping"] == 0
    # The tracker's timer record shows only when asked for.
    assert "choreo.DeadlineCheck" in h.types(gid, internal=True)
    assert "choreo.DeadlineCheck" not in h.types(gid)
    assert await env.effects("o1") == {"stock": 0, "payment": 0, "shipping": 0}


async def test_a_delayed_record_arrives_when_its_delay_is_over(env: Env) -> None:
    h = env.h
    h.faults.delay(env.type("StockReserved"), seconds=600)
    gid = await h.publish(env.shop.start("o1"))
    with pytest.raises(TimeoutError):
        await h.wait(gid, timeout=1.0)
    assert env.count(gid, "StockReserved") == 0
    await h.advance(600)  # far below the hour's deadline: no compensation
    assert (await h.wait(gid)).status is SagaStatus.COMPLETED
    assert await env.effects("o1") == {"stock": 1, "payment": 1, "shipping": 1}


async def test_a_service_killed_mid_handler_gets_the_record_again(env: Env) -> None:
    h, shop = env.h, env.shop
    gid = await h.publish(shop.start("gated-1"))
    await asyncio.wait_for(shop.entered.wait(), 30)
    await h.kill("payment")  # the call in progress is cancelled; nothing was committed
    shop.gate.set()
    await h.restart("payment")
    assert (await h.wait(gid)).status is SagaStatus.COMPLETED
    assert shop.calls["payment"] == 2  # redelivered and run again
    assert await env.effects("gated-1") == {"stock": 1, "payment": 1, "shipping": 1}
    assert env.count(gid, "PaymentCharged") == 1


async def test_a_killed_service_misses_what_is_published_meanwhile(env: Env) -> None:
    h, shop = env.h, env.shop
    await h.kill("stock")  # publishing goes through the next running service
    gid = await h.publish(shop.start("o1"))
    with pytest.raises(TimeoutError):
        await h.wait_for(gid, SagaStatus.COMPLETED, timeout=1.0)
    assert shop.calls["stock"] == 0
    await h.restart("stock")
    assert (await h.wait(gid)).status is SagaStatus.COMPLETED
    assert await env.effects("o1") == {"stock": 1, "payment": 1, "shipping": 1}


async def test_a_crash_after_the_store_commit_replays_the_recorded_events(
    env: Env, backend: tuple[str, str]
) -> None:
    h, shop = env.h, env.shop
    h.faults.crash_after("payment")
    gid = await h.publish(shop.start("o1"))
    assert (await h.wait(gid)).status is SagaStatus.COMPLETED
    assert h.faults.fired == ["crash payment after payment"]
    # The handler ran once: the redelivery found its barrier record and sent the events
    # it had recorded, which the crash had kept from the log.
    assert shop.calls["payment"] == 1
    assert env.count(gid, "PaymentCharged") == 1
    assert await env.effects("o1") == {"stock": 1, "payment": 1, "shipping": 1}


async def test_a_paused_tracker_compensates_when_resumed(env: Env) -> None:
    h, tracker = env.h, env.tracker
    h.faults.drop(env.type("Shipped"))  # shipping never answers
    gid = await h.publish(env.shop.start("o1"))
    await h.drain()
    async with h.paused(tracker):
        await h.advance(HOUR + 1)
        with pytest.raises(TimeoutError):
            await h.wait(gid, timeout=1.0)  # due, but the tracker is frozen
        assert "RefundPayment" not in " ".join(h.types(gid))
    state = await h.wait(gid)
    assert state.status is SagaStatus.COMPENSATED
    assert await env.effects("o1") == {"stock": 0, "payment": 0, "shipping": 0}


async def test_fault_targets_are_checked(env: Env) -> None:
    h = env.h
    with pytest.raises(ConfigurationError, match="no handler"):
        h.faults.fail("nope")
    with pytest.raises(ConfigurationError, match="times"):
        h.faults.drop("t", times=0)
    with pytest.raises(ConfigurationError, match="not a participant"):
        await h.kill("nobody")
    with pytest.raises(ConfigurationError, match="kill it first"):
        await h.restart("payment")
    assert not h.faults.armed
