"""The runtime's scenario suite: every test runs on the in-memory transport and store,
on real Kafka + Redis and on real Kafka + PostgreSQL, with the same assertions."""

from __future__ import annotations

import uuid

import orjson
import pytest

from choreo import CompensationSkipped
from choreo.deadletter import H_ATTEMPTS, H_KIND, H_OFFSET, H_REASON, H_TOPIC
from choreo.testing import Harness
from tests.scenarios.shop import (
    OrderPlaced,
    PaymentCharged,
    PaymentDeclined,
    ReleaseStock,
    Shop,
    StockReleased,
    StockReserved,
    build_shop,
)


@pytest.fixture(params=["memory", "kafka", "kafka-postgres"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(broker URL, store URL): conftest's pairs, and real Kafka with the SQL barrier."""
    if request.param == "memory":
        return "memory://", "memory://"
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    store = "postgres_url" if request.param == "kafka-postgres" else "redis_url"
    return f"kafka://{bootstrap}", request.getfixturevalue(store)


@pytest.fixture
def shop() -> Shop:
    return build_shop(f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def harness(backend: tuple[str, str], shop: Shop):  # type: ignore[no-untyped-def]
    broker, store = backend
    async with Harness(*shop.services, broker=broker, store=store) as h:
        yield h


def order(**overrides: object) -> OrderPlaced:
    fields: dict[str, object] = {
        "order_id": uuid.uuid4().hex,
        "sku": f"sku-{uuid.uuid4().hex[:6]}",
        "qty": 2,
        "amount": 30,
    }
    fields.update(overrides)
    return OrderPlaced.model_validate(fields)


async def stock(h: Harness, sku: str) -> int:
    return await h.store.get_int(f"stock:{sku}")


async def seed(h: Harness, sku: str, qty: int) -> None:
    from choreo.store.base import Put

    assert await h.store.apply([Put(f"stock:{sku}", str(qty))]) == ""


@pytest.mark.timeout(90)
async def test_happy_path(harness: Harness) -> None:
    placed = order()
    await seed(harness, placed.sku, 10)
    gid = await harness.publish(placed)
    await harness.drain()
    assert harness.types(gid) == ["OrderPlaced", "StockReserved", "PaymentCharged"]
    assert await stock(harness, placed.sku) == 8
    assert harness.dead_letters(gid) == []
    reserved, charged = harness.history(gid)[1:]
    assert reserved.envelope.causation_id == harness.history(gid)[0].envelope.event_id
    assert (reserved.envelope.step, reserved.envelope.op, reserved.envelope.outcome) == (
        "stock", "action", "done",
    )  # fmt: skip
    assert charged.envelope.source == "payment"
    assert charged.event == PaymentCharged(order_id=placed.order_id, amount=30)


async def test_business_failure_compensates(harness: Harness) -> None:
    placed = order(amount=500)
    await seed(harness, placed.sku, 10)
    gid = await harness.publish(placed)
    await harness.drain()
    assert harness.types(gid) == [
        "OrderPlaced", "StockReserved", "PaymentDeclined", "ReleaseStock", "StockReleased",
    ]  # fmt: skip
    declined = harness.history(gid)[2]
    assert declined.envelope.outcome == "failed"
    assert await stock(harness, placed.sku) == 10
    assert await harness.store.get(f"balance:{placed.order_id}") is None


async def test_duplicate_delivery_applies_once(harness: Harness) -> None:
    placed = order()
    await seed(harness, placed.sku, 10)
    gid = await harness.publish(placed)
    await harness.drain()
    first = [m.envelope.event_id for m in harness.history(gid)]
    # The same record again, as a producer retry or a redelivery would bring it.
    original = harness.history(gid)[0]
    from choreo import codec
    from choreo.events import Message

    await harness.transport.send(codec.encode(Message(original.envelope, original.event,
                                                      original.topic)))  # fmt: skip
    await harness.drain()
    assert await stock(harness, placed.sku) == 8
    ids = [m.envelope.event_id for m in harness.history(gid)]
    # The outbox is re-published with the same ids: downstream sees a duplicate, not a fact.
    assert len(set(ids)) == len(set(first)) == 3


async def test_compensation_before_action_then_hanging_action(harness: Harness) -> None:
    placed = order()
    await seed(harness, placed.sku, 10)
    gid = str(uuid.uuid4())
    await harness.publish(ReleaseStock(order_id=placed.order_id, sku=placed.sku, qty=2), gid=gid)
    await harness.drain()
    skipped = [m for m in harness.published(CompensationSkipped) if m.gid == gid]
    assert len(skipped) == 1
    assert skipped[0].event == CompensationSkipped(
        step="stock", reason="null compensation: the action never ran"
    )
    assert await stock(harness, placed.sku) == 10  # nothing was released
    await harness.publish(placed, gid=gid)
    await harness.drain()
    assert await stock(harness, placed.sku) == 10  # the late action did not run
    assert "StockReserved" not in harness.types(gid)


async def test_action_then_compensation_undoes(harness: Harness) -> None:
    placed = order()
    await seed(harness, placed.sku, 10)
    gid = await harness.publish(placed)
    await harness.drain()
    assert await stock(harness, placed.sku) == 8
    await harness.publish(ReleaseStock(order_id=placed.order_id, sku=placed.sku, qty=2), gid=gid)
    await harness.publish(ReleaseStock(order_id=placed.order_id, sku=placed.sku, qty=2), gid=gid)
    await harness.drain()
    assert await stock(harness, placed.sku) == 10  # released once despite two requests
    assert harness.types(gid).count("StockReleased") == 2  # the outbox, re-published


async def test_retriable_error_then_success(harness: Harness, shop: Shop) -> None:
    placed = order(flaky=2)
    await seed(harness, placed.sku, 10)
    gid = await harness.publish(placed)
    await harness.drain()
    assert shop.attempts[placed.order_id] == 3
    assert harness.types(gid) == ["OrderPlaced", "StockReserved", "PaymentCharged"]
    assert await stock(harness, placed.sku) == 8
    assert harness.dead_letters(gid) == []


async def test_retry_budget_spent_dead_letters(harness: Harness, shop: Shop) -> None:
    placed = order(flaky=10)
    await seed(harness, placed.sku, 10)
    gid = await harness.publish(placed)
    await harness.drain()
    assert shop.attempts[placed.order_id] == 3
    [dead] = harness.dead_letters(gid)
    headers = dict(dead.headers)
    assert headers[H_KIND] == b"budget"
    assert headers[H_ATTEMPTS] == b"3"
    assert b"ConnectionError" in headers[H_REASON]
    assert headers[H_TOPIC] == b"test.shop"
    assert harness.types(gid) == ["OrderPlaced"]
    assert await stock(harness, placed.sku) == 10


async def test_guard_refusal_is_a_business_failure(harness: Harness) -> None:
    placed = order(qty=5)
    await seed(harness, placed.sku, 3)
    gid = await harness.publish(placed)
    await harness.drain()
    assert harness.types(gid) == ["OrderPlaced", "choreo.StepFailed"]
    failed = harness.history(gid)[1]
    assert failed.envelope.outcome == "failed"
    assert "below its minimum 0" in failed.event.reason  # type: ignore[attr-defined]
    assert await stock(harness, placed.sku) == 3


def _headers(event_type: str, gid: str) -> list[tuple[str, bytes]]:
    return [("choreo-type", event_type.encode()), ("choreo-gid", gid.encode()),
            ("choreo-id", str(uuid.uuid4()).encode())]  # fmt: skip


POISON = {
    "not utf-8": (b"\xff\xfe{}", "OrderPlaced", "not UTF-8"),
    "not json": (b"{nope", "OrderPlaced", "not JSON"),
    "schema": (orjson.dumps({"order_id": 1}), "OrderPlaced", "does not fit OrderPlaced"),
    "unknown type": (b"{}", "Nonsense", "unknown event type 'Nonsense'"),
    "too large": (b'{"pad": "' + b"x" * 100_000 + b'"}', "OrderPlaced", "over the"),
    "too deep": (b'{"a":' * 40 + b"1" + b"}" * 40, "OrderPlaced", "nesting deeper than 32"),
    "no type": (b"{}", "", "missing 'choreo-type' header"),
}


async def test_poison_events_are_dead_lettered_and_the_partition_flows(harness: Harness) -> None:
    gid = str(uuid.uuid4())
    for value, event_type, _ in POISON.values():
        headers = _headers(event_type, gid) if event_type else [("choreo-gid", gid.encode())]
        await harness.send_raw("test.shop", value, headers, gid.encode())
    placed = order()
    await seed(harness, placed.sku, 10)
    await harness.publish(placed, gid=gid)  # same gid: same partition, after the poison
    await harness.drain()
    reasons = [dict(d.headers)[H_REASON].decode() for d in harness.dead_letters(gid)]
    for name, (_, _, expected) in POISON.items():
        assert sum(expected in r for r in reasons) >= 1, f"{name}: {expected!r} not in {reasons}"
    # Each service that reads the topic dead-letters what it cannot read: the payment
    # service does not handle OrderPlaced, so only inventory reports payload problems.
    assert all(dict(d.headers)[H_OFFSET].isdigit() for d in harness.dead_letters(gid))
    assert harness.types(gid)[-2:] == ["StockReserved", "PaymentCharged"]
    assert await stock(harness, placed.sku) == 8


async def test_non_retriable_error_dead_letters_at_once(harness: Harness, shop: Shop) -> None:
    placed = order(broken=True)
    gid = await harness.publish(placed)
    await harness.drain()
    assert shop.attempts[placed.order_id] == 1
    [dead] = harness.dead_letters(gid)
    assert dict(dead.headers)[H_KIND] == b"failed"
    assert b"ValueError: bad data" in dict(dead.headers)[H_REASON]
    assert harness.types(gid) == ["OrderPlaced"]


def test_unused_imports_are_real() -> None:
    assert StockReleased.event_type == "StockReleased"
    assert PaymentDeclined.topic == StockReserved.topic == "test.shop"


def _header_poison(gid: str) -> dict[str, tuple[list[tuple[str, bytes]], str]]:
    placed = orjson.dumps(order().model_dump())
    base = _headers("OrderPlaced", gid)
    return {
        "key and gid disagree": (
            [*base[:1], ("choreo-gid", b"another-saga"), *base[2:]],
            "name different gids",
        ),
        "repeated envelope header": ([*base, ("choreo-type", b"OrderPlaced")], "more than once"),
        "huge header": ([*base, ("traceparent", b"0" * 5000)], "over the 1024 byte limit"),
        "400-digit time": ([*base, ("choreo-occurred-at", b"9" * 400)], "not a number"),
        "newer schema": ([*base, ("choreo-version", b"7")], "is newer than this service"),
    } | {"_value": ([], placed.decode())}


async def test_bad_envelopes_are_dead_lettered_and_the_partition_flows(harness: Harness) -> None:
    """Strict headers: a record whose envelope could let it pass for another saga, or cost
    the consumer out of proportion, is poison; the partition keeps flowing."""
    gid = str(uuid.uuid4())
    cases = _header_poison(gid)
    value = cases.pop("_value")[1].encode()
    for headers, _ in cases.values():
        await harness.send_raw("test.shop", value, headers, gid.encode())
    placed = order()
    await seed(harness, placed.sku, 10)
    await harness.publish(placed, gid=gid)
    await harness.drain()
    reasons = [dict(d.headers)[H_REASON].decode() for d in harness.dead_letters(gid)]
    for name, (_, expected) in cases.items():
        assert sum(expected in r for r in reasons) >= 1, f"{name}: {expected!r} not in {reasons}"
    assert harness.types(gid)[-2:] == ["StockReserved", "PaymentCharged"]
    assert await stock(harness, placed.sku) == 8  # none of the poison was applied
