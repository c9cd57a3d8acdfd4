"""A memory tracker with sagas in every state, for the ops and CLI tests.

``seeded()`` builds it in the running event loop: the trip services and a MemoryTracker
on one in-memory transport, then one saga per state (completed, compensated, stuck with
dead letters, running past its deadline, compensating). The last two need a tracker
that does not move on, so the tracker's clock is frozen a little in the past once the
terminal sagas have settled: its deadlines never fire again and the sagas stay stalled.

Run as a script it also serves the state API with the ops routes and prints one JSON
line ``{"url": ..., "gids": {...}}``; it runs until stdin closes or SIGTERM::

    python -m tests.procs.tracker_api [--port 0] [--token T]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from choreo.saga import SagaState
from choreo.testing import Harness
from choreo.tracker.memory import MemoryTracker
from tests.scenarios.trip import Plan, Travel, TripBooked, build_travel


@dataclass
class Clock:
    frozen: float | None = None

    def __call__(self) -> float:
        return time.time() if self.frozen is None else self.frozen


@dataclass
class Seeded:
    h: Harness
    tracker: MemoryTracker
    travel: Travel
    clock: Clock
    gids: dict[str, str] = field(default_factory=dict)

    @property
    def groups(self) -> dict[str, str]:
        """Service name -> consumer group (the trip services use prefixed groups)."""
        return {s.name: s.group for s in self.travel.services}

    async def start(self, **plan: str | float) -> str:
        event = TripBooked(trip_id=uuid.uuid4().hex, plan=Plan.model_validate(plan))
        return await self.h.publish(event)

    async def until(self, gid: str, status: str, timeout: float = 30.0) -> SagaState:
        limit = time.monotonic() + timeout
        while (state := self.tracker.get(gid)) is None or state.status != status:
            now = state.status if state else "unknown"
            assert time.monotonic() < limit, f"saga {gid} still {now}, not {status}"
            await asyncio.sleep(0.02)
        return state


@contextlib.asynccontextmanager
async def seeded() -> AsyncIterator[Seeded]:
    prefix = f"ops{uuid.uuid4().hex[:6]}"
    travel = build_travel(
        prefix, deadline=0.5, compensation_retries=2, retry_backoff=0.1, retry_backoff_max=0.2
    )
    clock = Clock()
    tracker = MemoryTracker([travel.contract], group=f"{prefix}.tracker", clock=clock)
    async with Harness(*travel.services, tracker, broker="memory://") as h:
        env = Seeded(h, tracker, travel, clock)
        gids = {
            "completed": await env.start(),
            "compensated": await env.start(fail="hotel"),
            "stuck": await env.start(lost="car", stuck="hotel"),
        }
        for name, status in (
            ("completed", "COMPLETED"),
            ("compensated", "COMPENSATED"),
            ("stuck", "STUCK"),
        ):
            await env.until(gids[name], status)
        await h.drain()
        clock.frozen = time.time() - 5.0  # every new deadline is already past, and never fires
        gids["running"] = await env.start(silent="hotel")
        gids["compensating"] = await env.start(fail="car", stuck="hotel")
        await env.until(gids["compensating"], "COMPENSATING")
        await h.drain()
        env.gids = gids
        yield env


@contextlib.asynccontextmanager
async def serving(env: Seeded, port: int = 0, token: str | None = None) -> AsyncIterator[str]:
    """The state API with the ops routes over ``env``'s tracker; yields its base URL.
    Without ``token`` it is served open (on loopback, as ``--no-auth`` would)."""
    from choreo.tracker.api import serve_api
    from choreo.tracker.api_ops import OpsContext

    ops = OpsContext(env.tracker.view(), env.h.transport, [env.travel.contract], env.groups)
    view = env.tracker.view()
    async with serve_api(view, "127.0.0.1", port, token, ops, open_access=token is None) as bound:
        yield f"http://127.0.0.1:{bound}"


@dataclass
class Served:
    url: str
    gids: dict[str, str]
    token: str | None = None


@contextlib.contextmanager
def served_in_thread(token: str | None = None, timeout: float = 60.0) -> Iterator[Served]:
    """A seeded tracker and its API on an event loop in a thread, for synchronous tests
    (the CLI blocks on HTTP, so the server cannot share the test's loop)."""
    ready: queue.Queue[Served | BaseException] = queue.Queue()
    loops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def run() -> None:
        stop = asyncio.Event()
        loops.append((asyncio.get_running_loop(), stop))
        try:
            async with seeded() as env, serving(env, token=token) as url:
                ready.put(Served(url, env.gids, token))
                await stop.wait()
        except BaseException as exc:
            ready.put(exc)
            raise

    thread = threading.Thread(target=asyncio.run, args=(run(),), name="tracker-api")
    thread.start()
    try:
        got = ready.get(timeout=timeout)
        if isinstance(got, BaseException):
            raise RuntimeError(f"the seeded tracker failed to start: {got!r}")
        yield got
    finally:
        if loops:
            loop, stop = loops[0]
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)


async def _serve(port: int, token: str | None) -> None:
    async with seeded() as env, serving(env, port, token) as url:
        print(json.dumps({"url": url, "gids": env.gids}), flush=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.read(1) or stopping.set())
        try:
            await stopping.wait()
        finally:
            loop.remove_reader(sys.stdin.fileno())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token")
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.token))


if __name__ == "__main__":
    main()
