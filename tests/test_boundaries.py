"""Barrier records of different services never meet: two services that both call a step
``reserve`` each run their own handler for the same saga (memory and real Kafka + Redis)."""

from __future__ import annotations

import uuid

from choreo import Context, Event, Service
from choreo.testing import Harness


async def test_two_services_with_a_step_of_the_same_name_keep_their_own_barrier(
    backend: tuple[str, str],
) -> None:
    broker, store = backend
    tag = uuid.uuid4().hex[:8]

    class Placed(Event, type=f"bnd.{tag}.Placed", topic=f"bnd.{tag}"):
        order_id: str

    class Held(Event, type=f"bnd.{tag}.Held", topic=f"bnd.{tag}"):
        by: str

    ran: list[str] = []

    def service(name: str) -> Service:
        app = Service(f"{name}-{tag}")
        app.register_events(Held)

        @app.on_event(Placed, step="reserve")
        async def reserve(event: Placed, ctx: Context) -> Held:
            ran.append(name)
            ctx.tx.incr(f"held:{tag}:{name}", 1)
            return Held(by=name)

        return app

    async with Harness(service("seats"), service("rooms"), broker=broker, store=store) as h:
        gid = await h.publish(Placed(order_id="o-1"))
        await h.drain()
        assert sorted(ran) == ["rooms", "seats"]
        held = [m.event.by for m in h.history(gid) if isinstance(m.event, Held)]
        assert sorted(held) == ["rooms", "seats"]  # neither re-published the other's outbox
        assert await h.store.get(f"held:{tag}:seats") == "1"
        assert await h.store.get(f"held:{tag}:rooms") == "1"
