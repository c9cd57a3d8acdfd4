"""The public surface: ``__all__``, and options checked when the decorator runs."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import choreo
from choreo import ConfigurationError, Context, Event, RetryPolicy, Router, Service

EXPECTED_API = {
    "AdminCommand", "BusinessFailure", "ChoreoError", "CircuitBreaker", "CircuitOpen",
    "CompensationSkipped",
    "ConfigurationError", "Context", "ContractError", "Envelope", "Event", "Message",
    "Middleware", "PoisonEvent", "RetriableError", "RetryPolicy", "Router", "SagaCompensated",
    "SagaCompleted", "SagaContract", "SagaStuck", "SchemaViolation", "Service", "Step",
    "StepFailed", "TransportError", "UndecodableEvent", "UnknownEventType", "UsageError",
    # the store's effects and types, saga states, transports and stores by URL
    "Delete", "Incr", "Put", "Store", "Transaction", "SagaState", "SagaStatus", "Transport",
    "open_store", "open_transport",
    "PostgresStore",  # the SQL barrier in the user's database (docs/postgres.md)
}  # fmt: skip
# Modules besides ``choreo`` itself that users (and services_demo) may import.
PUBLIC_MODULES = ("choreo.testing", "choreo.client", "choreo.dashboard", "choreo.local")
ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports by name, at any depth (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


class Ping(Event):
    n: int


class Pong(Event):
    n: int


def test_public_api_is_exactly_all() -> None:
    assert set(choreo.__all__) == EXPECTED_API
    for name in choreo.__all__:
        assert getattr(choreo, name) is not None


def test_public_modules_export_what_they_name() -> None:
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        assert module.__all__, name
        for attribute in module.__all__:
            assert getattr(module, attribute) is not None, f"{name}.{attribute}"


def test_the_demo_uses_only_the_public_api_and_the_library_never_imports_it() -> None:
    allowed = {"choreo", *PUBLIC_MODULES}
    for path in sorted((ROOT / "services_demo").glob("*.py")):
        used = {m for m in imported_modules(path) if m.split(".")[0] == "choreo"}
        private = {m for m in used if m not in allowed and m.rsplit(".", 1)[0] not in allowed}
        assert not private, f"{path.name} imports {sorted(private)}"
    for path in sorted((ROOT / "choreo").rglob("*.py")):
        demo = {m for m in imported_modules(path) if m.split(".")[0] == "services_demo"}
        assert not demo, f"{path.relative_to(ROOT)} imports {sorted(demo)}"


def test_event_identity_from_class_keywords() -> None:
    class Shipped(Event, type="shipping.shipped", topic="shipping", version=2):
        parcel: str

    class Delayed(Shipped, type="shipping.delayed"):
        pass

    assert (Shipped.event_type, Shipped.topic, Shipped.schema_version) == (
        "shipping.shipped", "shipping", 2,
    )  # fmt: skip
    assert (Delayed.event_type, Delayed.topic) == ("shipping.delayed", "shipping")
    assert (Ping.event_type, Ping.topic) == ("Ping", "choreo.Ping")
    with pytest.raises(Exception, match="frozen"):
        Ping(n=1).n = 2  # type: ignore[misc]


def test_handler_must_be_async() -> None:
    app = Service("svc")
    with pytest.raises(ConfigurationError, match="must be an `async def`"):

        @app.on_event(Ping)
        def sync(event: Ping) -> None:  # type: ignore[type-var]
            return None


def test_handler_event_must_be_an_event_class() -> None:
    app = Service("svc")
    with pytest.raises(ConfigurationError, match=r"subclass of choreo\.Event"):

        @app.on_event(dict)  # type: ignore[arg-type]
        async def handler(event: dict) -> None:  # type: ignore[type-arg]
            return None


def test_handler_signature_is_checked() -> None:
    app = Service("svc")
    with pytest.raises(ConfigurationError, match="must take the event"):

        @app.on_event(Ping)
        async def too_many(event: Ping, ctx: Context, extra: int) -> None:
            return None

    with pytest.raises(ConfigurationError, match="annotated Pong but it handles Ping"):

        @app.on_event(Ping)
        async def wrong(event: Pong) -> None:
            return None

    with pytest.raises(ConfigurationError, match="must be annotated `Context`"):

        @app.on_event(Ping)
        async def bad_ctx(event: Ping, ctx: int) -> None:
            return None


def test_duplicate_handlers_are_refused() -> None:
    app = Service("svc")

    @app.on_event(Ping, step="s")
    async def first(event: Ping) -> Pong:
        return Pong(n=event.n)

    with pytest.raises(ConfigurationError, match="the barrier could not tell"):

        @app.on_event(Ping, step="s")
        async def second(event: Ping) -> None:
            return None

    with pytest.raises(ConfigurationError, match="already registered"):
        app.on_event(Ping, step="other")(first)


def test_bad_options_are_refused() -> None:
    app = Service("svc")

    async def handler(event: Ping) -> None:
        return None

    with pytest.raises(ConfigurationError, match="op must be"):
        app.on_event(Ping, op="undo")(handler)  # type: ignore[arg-type]

    with pytest.raises(ConfigurationError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigurationError, match="service name"):
        Service("has space")


def test_a_compensation_must_share_its_actions_step() -> None:
    """Without step= and a contract, the action and its compensation would get barrier
    steps ``svc.ping`` and ``svc.unping``: a late action would still run."""
    app = Service("svc")

    @app.on_event(Ping)
    async def ping(event: Ping) -> Pong:
        return Pong(n=event.n)

    async def unping(event: Pong) -> None:
        return None

    with pytest.raises(ConfigurationError) as refused:
        app.on_event(Pong, op="compensate")(unping)
    assert str(refused.value) == (
        "svc: unping, the compensation for Pong, names no step= and no saga contract of the "
        "service places it, so its barrier step would be 'svc.unping', apart from its "
        "action's: an action arriving after it would still run. Give it and its action the "
        'same step= (e.g. step="stock" on both), or give the service the saga\'s contract'
    )
    # Through a router the refusal comes when the service includes it (or builds routes).
    router = Router()
    router.on_event(Pong, op="compensate")(unping)
    with pytest.raises(ConfigurationError, match="names no step="):
        Service("other").include_router(router)
    # Named, it pairs with its action; placed by a contract, it needs no name.
    app.on_event(Pong, step="svc.ping", op="compensate")(unping)
    assert [(h.step, h.op) for h in app.resolved_handlers()] == [
        ("svc.ping", "action"),
        ("svc.ping", "compensate"),
    ]
    from choreo.saga import SagaContract, Step

    class Undo(Event):
        n: int

    contract = SagaContract(
        "ping", start=Ping, steps=[Step("ping", on=Ping, done=Pong, compensation=Undo)]
    )
    placed = Service("placed", contracts=[contract])

    @placed.on_event(Undo, op="compensate")
    async def undo(event: Undo) -> None:
        return None

    [handler] = placed.resolved_handlers()
    assert (handler.step, handler.op) == ("ping", "compensate")


def test_router_splits_handlers_across_modules() -> None:
    router = Router()

    @router.on_event(Ping)
    async def ping(event: Ping) -> Pong:
        return Pong(n=event.n)

    app = Service("svc")
    app.include_router(router)
    [handler] = app.resolved_handlers()
    assert (handler.step, handler.op, handler.emits) == ("svc.ping", "action", (Pong,))
    assert app.subscribed_topics() == ["choreo.Ping"]
    assert "Pong" in app.registry()


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(max_attempts=10, backoff=0.1, backoff_max=1.0)
    assert RetryPolicy(backoff=0.1, jitter=False).delay(3) == pytest.approx(0.4)
    for attempt in range(1, 10):
        ceiling = min(0.1 * 2 ** (attempt - 1), 1.0)
        assert ceiling / 2 <= policy.delay(attempt) <= ceiling


async def test_lifespan_wraps_the_running_service_and_context_carries_headers() -> None:
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from choreo.testing import Harness

    calls: list[str] = []
    seen: list[dict[str, str]] = []

    @asynccontextmanager
    async def lifespan(app: Service) -> AsyncIterator[None]:
        calls.append(f"start {app.name}")
        yield
        calls.append(f"stop {app.name}")

    app = Service("svc", lifespan=lifespan)

    @app.on_event(Ping)
    async def ping(event: Ping, ctx: Context) -> Pong:
        seen.append(ctx.headers)
        return Pong(n=event.n + 1)

    async with Harness(app) as h:
        assert calls == ["start svc"]
        gid = await h.publish(Ping(n=1))
        await h.drain()
        assert [m.event for m in h.history(gid)] == [Ping(n=1), Pong(n=2)]
    assert calls == ["start svc", "stop svc"]
    assert seen[0]["choreo-gid"] == gid
    assert seen[0]["choreo-type"] == "Ping"
    assert seen[0]["choreo-source"] == "svc"
