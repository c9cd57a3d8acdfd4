"""choreo's pytest plugin: fixtures for testing services with ``choreo.testing.Harness``.

Installed with choreo (the ``pytest11`` entry point ``choreo``), nothing to configure::

    async def test_order_completes(choreo_harness, choreo_clock):
        async with choreo_harness(inventory, payment, MemoryTracker([order_saga]),
                                  clock=choreo_clock) as h:
            gid = await h.publish(OrderPlaced(order_id="o1", amount=5))
            assert (await h.wait(gid)).status is SagaStatus.COMPLETED

Fixtures:

- ``choreo_harness``: a factory of ``Harness`` objects on the backend below; use the
  harness with ``async with`` (any async test runner: pytest-asyncio, anyio).
- ``choreo_backend``: the ``(broker, store)`` URLs those harnesses use.
- ``choreo_clock``: a fresh ``VirtualClock`` for ``Harness(clock=...)``.

The same tests run on real Kafka and Redis by one setting: ``pytest --choreo-broker
kafka://127.0.0.1:9092 --choreo-store redis://127.0.0.1:6379/0``, or the environment
variables ``CHOREO_TEST_BROKER`` and ``CHOREO_TEST_STORE``; the default is ``memory://``.
Turn the plugin off with ``-p no:choreo``.

choreo is imported when a fixture is first used, not when pytest starts, so the plugin
costs nothing to test suites that do not use it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple, Protocol

import pytest

if TYPE_CHECKING:
    from choreo.clock import VirtualClock
    from choreo.testing import Harness, Participant

BROKER_ENV = "CHOREO_TEST_BROKER"
STORE_ENV = "CHOREO_TEST_STORE"


class Backend(NamedTuple):
    broker: str
    store: str


class HarnessFactory(Protocol):
    def __call__(
        self, *participants: Participant, clock: VirtualClock | None = None, partitions: int = 4
    ) -> Harness: ...


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("choreo", "choreo test harness")
    group.addoption(
        "--choreo-broker",
        default=None,
        help=f"broker of choreo_harness (kafka://host:port); default ${BROKER_ENV} or memory://",
    )
    group.addoption(
        "--choreo-store",
        default=None,
        help=f"store of choreo_harness (redis://..., postgresql://...); default ${STORE_ENV} "
        "or memory://",
    )


@pytest.fixture
def choreo_backend(request: pytest.FixtureRequest) -> Backend:
    """The broker and store URLs of ``choreo_harness``: the command-line options, else
    the environment variables, else ``memory://``."""
    config = request.config
    broker = config.getoption("--choreo-broker") or os.environ.get(BROKER_ENV) or "memory://"
    store = config.getoption("--choreo-store") or os.environ.get(STORE_ENV) or "memory://"
    return Backend(str(broker), str(store))


@pytest.fixture
def choreo_clock() -> VirtualClock:
    """A ``VirtualClock``: pass it as ``clock=`` and ``await h.advance(seconds)``."""
    from choreo.clock import VirtualClock

    return VirtualClock()


@pytest.fixture
def choreo_harness(choreo_backend: Backend) -> HarnessFactory:
    """``choreo_harness(*participants, clock=None, partitions=4)``: a ``Harness`` of
    these services (and ``MemoryTracker``) on ``choreo_backend``, to enter with
    ``async with``."""
    from choreo.testing import Harness

    def make(
        *participants: Participant, clock: VirtualClock | None = None, partitions: int = 4
    ) -> Harness:
        return Harness(
            *participants,
            broker=choreo_backend.broker,
            store=choreo_backend.store,
            clock=clock,
            partitions=partitions,
        )

    return make
