"""Retention for the faust tracker on RocksDB: a sweep of the store for settled sagas whose
retention is over, instead of a deadline-index entry per finished saga (issue 11: at 1M
finished sagas those entries were most of a worker's memory and of its restart).

Each owned partition database keeps its settled sagas without a deadline in the order
they settled (``faust_index``). The sweep reads each from where it stopped up to
``now - retention`` and sends every saga found a ``DeadlineCheck`` through the log, as the
timer does for deadlines; the agent folds it into the saga's removal (tombstones in the
changelog), so expiry is never a local delete. A check that comes early changes nothing
and a repeat is harmless, so the sweep keeps no durable bookkeeping: it reads each index
from its start again now and then and after every rebalance.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from choreo.errors import TransportError
from choreo.tracker.core import TrackerCore
from choreo.tracker.faust_store import TableStore
from choreo.tracker.states import SagaTable
from choreo.transport.base import OutgoingRecord

log = logging.getLogger("choreo.tracker")

Send = Callable[[Sequence[OutgoingRecord]], Awaitable[object]]

# How often the sweep looks for expired sagas, at most how many it sends checks for per
# call (the next call goes on at once when there were more), and how often it reads each
# partition's index from its start again (a check that was lost or folded early is then
# sent again).
INTERVAL = 1.0
LIMIT = 2000
RESTART = 60.0


class RetentionSweep:
    def __init__(
        self,
        store: TableStore,
        states: SagaTable,
        core: TrackerCore,
        send: Send,
        owned: Callable[[], set[int]],
        *,
        limit: int = LIMIT,
    ) -> None:
        """``send``: one attempt to send records (``TransportError`` when it fails)."""
        self.store, self.states, self.core = store, states, core
        self._send = send
        self._owned = owned
        self.limit = limit
        self._after: dict[int, bytes] = {}  # each partition's last index key swept
        self._next = 0.0
        self._restart = 0.0

    def reset(self) -> None:
        """Read every index from its start at the next sweep (a rebalance, a rebuild)."""
        self._after.clear()

    async def __call__(self, now: float, retention: float) -> int:
        """Send a ``DeadlineCheck`` for each settled saga without a deadline whose
        retention ended by ``now`` (the time the checks are sent at, or earlier), at most
        ``limit``; returns how many were sent."""
        if now < self._next:
            return 0
        if now >= self._restart:
            self._after.clear()
            self._restart = now + RESTART
        checks, reached = [], {}
        room = self.limit
        for partition in sorted(self._owned()):
            found = self.store.settled_until(partition, now - retention,
                                             self._after.get(partition), room)  # fmt: skip
            room -= len(found)
            if found:
                reached[partition] = found[-1][0]
            for _key, gid in found:
                state = self.states.hot(gid)
                settled = None if state is None else state.settled_at()
                if state is not None and settled is not None and settled + retention <= now:
                    checks.append(self.core.deadline_check(state))
        if checks:
            try:
                await self._send(checks)
            except TransportError as exc:
                log.warning("cannot send %d retention checks, will retry: %s", len(checks),
                            exc)  # fmt: skip
                return 0
        self._after.update(reached)
        self._next = now if room <= 0 else now + INTERVAL
        return len(checks)
