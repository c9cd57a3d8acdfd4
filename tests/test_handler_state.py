"""Resources opened in ``lifespan`` reach handlers as ``ctx.state``, without globals: the
default namespace, or a state object of the user's own class."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from choreo import Context, Event, Service
from choreo.testing import Harness


@dataclass
class Rates:
    """Stands for a client opened at start (an HTTP client, a pool)."""

    opened: bool = False
    closed: bool = False
    asked: list[str] = field(default_factory=list)

    def rate(self, currency: str) -> int:
        if not self.opened or self.closed:
            raise RuntimeError("used outside the service's lifespan")
        self.asked.append(currency)
        return {"EUR": 2, "USD": 3}[currency]


@dataclass
class Deps:
    rates: Rates


async def test_lifespan_resources_reach_handlers(backend: tuple[str, str]) -> None:
    tag = uuid.uuid4().hex[:8]

    class Priced(Event, type=f"state.{tag}.Priced", topic=f"state.{tag}"):
        currency: str
        amount: int

    rates = Rates()

    @contextlib.asynccontextmanager
    async def lifespan(app: Service) -> AsyncIterator[None]:
        rates.opened = True
        app.state.rates = rates  # the default state: a namespace
        yield
        rates.closed = True

    untyped = Service(f"untyped{tag}", lifespan=lifespan)
    typed = Service(f"typed{tag}", state=Deps(rates=Rates(opened=True)))

    @untyped.on_event(Priced)
    async def convert(event: Priced, ctx: Context) -> None:
        ctx.tx.incr(f"state:{tag}:untyped", event.amount * ctx.state.rates.rate(event.currency))

    @typed.on_event(Priced)
    async def convert_typed(event: Priced, ctx: Context) -> None:
        deps: Deps = ctx.state
        ctx.tx.incr(f"state:{tag}:typed", event.amount * deps.rates.rate(event.currency))

    broker, store = backend
    async with Harness(untyped, typed, broker=broker, store=store) as h:
        await h.publish(Priced(currency="EUR", amount=5))
        await h.publish(Priced(currency="USD", amount=1))
        await h.drain(timeout=60)
        assert await h.store.get_int(f"state:{tag}:untyped") == 13
        assert await h.store.get_int(f"state:{tag}:typed") == 13
    assert sorted(rates.asked) == ["EUR", "USD"]
    assert sorted(typed.state.rates.asked) == ["EUR", "USD"]
    assert rates.closed
