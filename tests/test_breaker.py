"""The consumer-side circuit breaker: its state machine on a fake clock, the rule that it
must open within a record's retry budget, and a dependency outage on memory and on real
Kafka + Redis: zero dead letters, every record applied once after the dependency is back,
and the handler left alone while the breaker is open."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from choreo import (
    CircuitBreaker,
    CircuitOpen,
    ConfigurationError,
    Context,
    Event,
    RetryPolicy,
    Service,
)
from choreo.breaker import BreakerState
from choreo.testing import Harness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_failures_within_the_window_and_probes_after_the_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker("api", failures=3, window=10, cooldown=5, clock=clock)
    breaker.before_call()
    assert breaker.failure() is False
    clock.now += 20  # outside the window: the first failure no longer counts
    assert breaker.failure() is False
    assert breaker.failure() is False
    assert breaker.failure() is True  # three within 10 s
    assert breaker.state is BreakerState.OPEN
    assert breaker.trips == 1
    with pytest.raises(CircuitOpen, match=r"open for 5\.0 s more"):
        breaker.before_call()
    clock.now += 5
    breaker.before_call()  # the one half-open probe
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpen, match="half_open"):
        breaker.before_call()  # a second caller while the probe is out
    assert breaker.failure() is True  # the probe failed: open again
    assert breaker.state is BreakerState.OPEN
    assert breaker.trips == 2
    clock.now += 5
    breaker.before_call()
    breaker.abandon()  # the probe ended without a verdict: the next call probes
    breaker.before_call()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    breaker.before_call()


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker("api", failures=2, window=60, clock=Clock())
    assert breaker.failure() is False
    breaker.success()
    assert breaker.failure() is False
    assert breaker.state is BreakerState.CLOSED


def test_it_must_open_within_the_retry_budget() -> None:
    class Ping(Event, type="breaker.Ping", topic="breaker.rule"):
        n: int

    app = Service("rule")
    with pytest.raises(ConfigurationError, match="opens after 6 failures"):

        @app.on_event(Ping, breaker=CircuitBreaker("api", failures=6))
        async def handler(event: Ping) -> None: ...

    with pytest.raises(ConfigurationError, match="failures >= 1"):
        CircuitBreaker("api", failures=0)


class Dependency:
    """A remote service that is down until ``up_at`` (monotonic seconds)."""

    def __init__(self) -> None:
        self.up_at = 0.0
        self.calls_while_down = 0
        self.calls = 0

    def call(self) -> None:
        self.calls += 1
        if time.monotonic() < self.up_at:
            self.calls_while_down += 1
            raise ConnectionError("payments API unreachable")


ORDERS = 20
DOWN_SECONDS = 4.0
COOLDOWN = 0.5


async def test_an_outage_costs_no_dead_letters(backend: tuple[str, str]) -> None:
    tag = uuid.uuid4().hex[:8]

    class Placed(Event, type=f"breaker.{tag}.Placed", topic=f"breaker.{tag}.in"):
        n: int

    class Charged(Event, type=f"breaker.{tag}.Charged", topic=f"breaker.{tag}.out"):
        n: int

    dependency = Dependency()
    breaker = CircuitBreaker("payments-api", failures=3, window=30, cooldown=COOLDOWN)
    app = Service(f"charge{tag}")
    app.register_events(Charged)
    applied: dict[str, int] = {}

    @app.on_event(
        Placed,
        step="charge",
        breaker=breaker,
        retry=RetryPolicy(max_attempts=5, backoff=0.01, backoff_max=0.05),
    )
    async def charge(event: Placed, ctx: Context) -> Charged:
        dependency.call()
        applied[ctx.gid] = applied.get(ctx.gid, 0) + 1
        ctx.tx.incr(f"breaker:{tag}:charged", 1)
        return Charged(n=event.n)

    broker, store = backend
    async with Harness(app, broker=broker, store=store) as h:
        dependency.up_at = time.monotonic() + DOWN_SECONDS
        gids = [await h.publish(Placed(n=n)) for n in range(ORDERS)]
        await asyncio.sleep(1.0)
        problems = await app.readiness()
        assert "circuits" in problems, problems  # open or probing while the API is down
        await h.drain(timeout=60)
        # (the dead-letter topic is shared with other tests on a real broker: look at ours)
        assert [letter for gid in gids for letter in h.dead_letters(gid)] == []
        assert sorted(applied) == sorted(gids)
        assert set(applied.values()) == {1}
        assert await h.store.get_int(f"breaker:{tag}:charged") == ORDERS
        assert len(h.published(Charged)) == ORDERS
        assert breaker.trips >= 1
        assert breaker.state is BreakerState.CLOSED
        assert "circuits" not in await app.readiness()
    # While open, records waited instead of calling the API: the calls that failed are
    # the ones that opened it (3) and about one probe per cooldown, not every record's
    # whole retry budget (20 x 5).
    assert dependency.calls_while_down <= 3 + DOWN_SECONDS / COOLDOWN + 4, (
        dependency.calls_while_down
    )
