"""Calls made in one turn of the event loop, sent as one.

A worker's partitions are handled by concurrent lanes (``choreo.worker``); the lanes fed
by one poll check their batches, and later commit them, in the same turn of the loop. On
Redis each of those calls is a round trip whose fixed cost (the client's command path, a
wake-up, the script's start in Redis) is about one record's worth of CPU, paid per lane:
with six partitions at a moderate load that fixed cost was most of the work. ``Coalesced``
gathers the calls of one turn into one call of the underlying batch operation, in the
order they were made, and hands each caller its own slice of the answers.

A failure of the joint call is not assumed to be every caller's: the parts are sent
again one by one, so each caller gets its own answer or its own error, and one lane's
trouble never holds back another's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalesced(Generic[T, R]):
    """``send`` (items in, one answer per item out, in order), called once per loop turn
    for everything asked of it in that turn."""

    def __init__(self, send: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._send = send
        self._waiting: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        self._running: set[asyncio.Task[None]] = set()  # referenced until done

    async def __call__(self, items: Sequence[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[R]] = loop.create_future()
        if not self._waiting:
            # After the callbacks already queued: the other lanes woken in this turn
            # reach their call before the joint one is sent.
            loop.call_soon(self._flush)
        self._waiting.append((list(items), future))
        return await future

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        task = asyncio.create_task(self._run(waiting))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, waiting: list[tuple[list[T], asyncio.Future[list[R]]]]) -> None:
        # A caller cancelled before its part was sent has nothing sent for it.
        waiting = [(part, future) for part, future in waiting if not future.done()]
        if not waiting:
            return
        try:
            if len(waiting) == 1:
                await self._alone(*waiting[0])
                return
            try:
                answers = await self._send([item for part, _ in waiting for item in part])
            except Exception:
                # Whose failure it was is not known: each part alone says.
                for part, future in waiting:
                    await self._alone(part, future)
                return
            start = 0
            for part, future in waiting:
                if not future.done():
                    future.set_result(answers[start : start + len(part)])
                start += len(part)
        finally:
            for _, future in waiting:  # only when this task itself was cancelled
                future.cancel()

    async def _alone(self, part: list[T], future: asyncio.Future[list[R]]) -> None:
        try:
            answer = await self._send(part)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(answer)
