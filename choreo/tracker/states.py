"""The sagas a tracker holds, stored compactly, and the store records that keep them.

Each saga is two kinds of store records under its gid (key = the gid as UTF-8, the value
``choreo.saga.packing.pack_state``): the hot state, rewritten by every event; and its
timeline, one record per write of the saga (key ``TIMELINE_PREFIX + gid + version``,
the entries that write added), so an event writes only its own lines and no fold reads
them. The last ``TIMELINE_LIMIT`` versions' records are kept; older ones are removed
(tombstones), and all of them go with the saga at its retention.

``SagaTable`` gives a worker's hot states, with counts by saga and status kept as states
change: an in-memory copy of them (bytes, a few hundred per saga in flight; the memory
tracker), or, given a ``HotStore`` (the faust tracker's table store), no copy at all: it
reads them from the store, so a saga costs the tracker no memory beyond its store's
(issue 11: with RocksDB the copy was most of the Python memory per saga in flight). As a
mapping it gives whole states, timeline included (read through ``read``: the faust
table's store, or a dict of its own in the memory tracker).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from choreo.saga.packing import Peek, pack_entries, peek, unpack_entries, unpack_state
from choreo.saga.state import TIMELINE_LIMIT, SagaState, SagaStatus, TimelineEntry
from choreo.tracker.offsets import is_marker

# 0xFF never occurs in UTF-8, so no gid's key starts with it.
TIMELINE_PREFIX = b"\xfft"
_VERSION_BYTES = 4

Write = tuple[int, bytes, bytes | None]
"""A store record: (partition, key, value); a None value removes the key (a tombstone)."""
Read = Callable[[bytes], bytes | None]


class HotStore(Protocol):
    """Where a ``SagaTable`` without a copy of its own reads the hot states."""

    def get(self, key: bytes) -> bytes | None: ...

    def states(self) -> Iterable[tuple[bytes, bytes]]:
        """(key, packed state) of every saga the worker holds (no timeline records)."""
        ...

    @property
    def counting(self) -> bool:
        """Whether the store counts its sagas (``counts``); else the table does."""
        ...

    def counts(self) -> Counter[tuple[str, str, bool]] | None:
        """Sagas held by (saga, status, STUCK and unresolved) as the store keeps them
        (RocksDB, ``faust_index``); None: the table counts them itself."""
        ...


def state_key(gid: str) -> bytes:
    return gid.encode()


def timeline_key(gid: str, version: int) -> bytes:
    return TIMELINE_PREFIX + gid.encode() + version.to_bytes(_VERSION_BYTES, "big")


def is_timeline_key(key: bytes) -> bool:
    return key.startswith(TIMELINE_PREFIX)


def timeline_gid(key: bytes) -> bytes:
    """The gid (as UTF-8) a timeline record belongs to: its partition's key."""
    return key[len(TIMELINE_PREFIX) : -_VERSION_BYTES]


def saga_writes(
    changed: Sequence[tuple[int, SagaState, bytes, int]],
    removed: Sequence[tuple[int, str, int]],
    lines: Mapping[str, bytes] | None = None,
) -> list[Write]:
    """The records of a batch: for each changed saga (partition, its new state, the state
    packed, the version it had before the batch), its hot state, its timeline's new
    lines (the state's ``timeline`` holds only what the batch added; ``lines``: already
    packed, by gid) and tombstones of timeline records that fell out of the last
    ``TIMELINE_LIMIT`` versions; for each removed saga (partition, gid, its last
    version), tombstones of all its records."""
    writes: list[Write] = []
    # Removals first: a saga removed and started again in one batch keeps its new state.
    for partition, gid, version in removed:
        writes.append((partition, state_key(gid), None))
        for old in range(max(1, version + 1 - TIMELINE_LIMIT), version + 1):
            writes.append((partition, timeline_key(gid, old), None))
    for partition, state, packed, before in changed:
        gid, version = state.gid, state.version
        writes.append((partition, state_key(gid), packed))
        if state.timeline:
            packed_lines = (lines or {}).get(gid) or pack_entries(state.timeline)
            writes.append((partition, timeline_key(gid, version), packed_lines))
        for old in range(max(1, before + 1 - TIMELINE_LIMIT), version + 1 - TIMELINE_LIMIT):
            writes.append((partition, timeline_key(gid, old), None))
    return writes


class SagaTable(Mapping[str, SagaState]):
    """gid -> hot state (packed), timelines read through ``read`` (None: this table keeps
    them itself, from the writes it is given).

    With a ``store`` the hot states are read from it and not copied; the store is written
    by the shell, which calls ``replacing`` with a batch's records just before they reach
    the store (the old states leave the counts), then ``put`` counts the new ones."""

    def __init__(self, read: Read | None = None, store: HotStore | None = None) -> None:
        self._hot: dict[str, bytes] | None = {} if store is None else None
        self._store = store
        self._size = 0  # sagas held, with a store
        self._own: dict[bytes, bytes] | None = {} if read is None else None
        self._read: Read = read if read is not None else self._own_read
        self._counts: Counter[tuple[str, str, bool]] = Counter()

    def use_store(self, store: HotStore) -> None:
        """Read the hot states from ``store`` from now on (the table must be empty)."""
        self.clear()
        self._hot, self._store = None, store

    def _own_read(self, key: bytes) -> bytes | None:
        assert self._own is not None
        return self._own.get(key)

    # -- the mapping: whole states -------------------------------------------------------
    def __getitem__(self, gid: str) -> SagaState:
        raw = self.raw(gid)
        if raw is None:
            raise KeyError(gid)
        state = unpack_state(raw)
        state.timeline = self.timeline(gid, state.version, state.timeline)
        return state

    def __iter__(self) -> Iterator[str]:
        if self._hot is not None:
            return iter(list(self._hot))
        assert self._store is not None
        return (key.decode() for key, _raw in self._store.states())

    def __len__(self) -> int:
        if self._hot is not None:
            return len(self._hot)
        stored = self._stored_counts()
        return self._size if stored is None else sum(stored.values())

    def _stored_counts(self) -> Counter[tuple[str, str, bool]] | None:
        return None if self._store is None else self._store.counts()

    def __contains__(self, gid: object) -> bool:
        if self._hot is not None:
            return gid in self._hot
        return isinstance(gid, str) and self.raw(gid) is not None

    def timeline(
        self, gid: str, version: int, before: Sequence[TimelineEntry] = ()
    ) -> list[TimelineEntry]:
        """The saga's history: ``before`` (a state stored by an earlier version carried
        its own) then its timeline records, oldest first, the last ``TIMELINE_LIMIT``."""
        entries = list(before)
        for number in range(max(1, version + 1 - TIMELINE_LIMIT), version + 1):
            raw = self._read(timeline_key(gid, number))
            if raw is not None:
                entries += unpack_entries(raw)
        return entries[-TIMELINE_LIMIT:]

    # -- the hot states --------------------------------------------------------------------
    def hot(self, gid: str) -> SagaState | None:
        """The state without its timeline: what a fold needs."""
        raw = self.raw(gid)
        return None if raw is None else unpack_state(raw)

    def raw(self, gid: str) -> bytes | None:
        if self._hot is not None:
            return self._hot.get(gid)
        assert self._store is not None
        return self._store.get(state_key(gid))

    def peeks(self) -> Iterator[tuple[str, Peek]]:
        if self._hot is not None:
            for gid, raw in list(self._hot.items()):
                yield gid, peek(raw)
            return
        assert self._store is not None
        for key, raw in self._store.states():
            try:
                found = peek(raw)
            except ValueError:
                continue  # unreadable: a rebuild logged it, and it is not counted
            yield key.decode(), found

    def counts(self) -> Counter[tuple[str, str, bool]]:
        """(saga, status, STUCK and unresolved) -> sagas: the store's counts when it
        keeps them (read at each call: they follow the partitions the worker owns)."""
        stored = self._stored_counts()
        return Counter(+(self._counts if stored is None else stored))

    def put(self, gid: str, raw: bytes, state: SagaState | None = None) -> None:
        """``state``: ``raw`` unpacked, when the caller has it (saves reading it). With a
        store, ``raw`` is already in it: only the counts change."""
        if self._hot is not None:
            self.discard(gid)
            self._hot[gid] = raw
        else:
            self._size += 1
        if state is None:
            self._count(raw, 1)
        else:
            unresolved = state.status == SagaStatus.STUCK and not state.resolved
            self._counts[(state.saga, state.status.value, unresolved)] += 1

    def counted(self, counts: Mapping[tuple[str, str, bool], int]) -> None:
        """With a store: sagas held, by (saga, status, STUCK and unresolved), as a
        rebuild read them from the store."""
        for key, count in counts.items():
            self._size += count
            self._counts[key] += count

    def discard(self, gid: str) -> None:
        """Forget a saga (with a store: nothing to do, ``replacing`` counted it out)."""
        if self._hot is None:
            return
        old = self._hot.pop(gid, None)
        if old is not None:
            self._count(old, -1)

    def replacing(self, writes: Sequence[Write]) -> None:
        """With a store that does not count (``HotStore.counts``): ``writes``
        (``saga_writes``) are about to reach it; the states they replace or remove leave
        the counts."""
        if self._store is None or self._store.counting:
            return
        keys = {key for _p, key, _v in writes if not is_timeline_key(key) and not is_marker(key)}
        for key in keys:
            old = self._store.get(key)
            if old is not None:
                self._size -= 1
                self._count(old, -1)

    def clear(self) -> None:
        """Forget every saga (with a store: the counts; the store is the shell's)."""
        if self._hot is not None:
            self._hot.clear()
        self._size = 0
        self._counts.clear()
        if self._own is not None:
            self._own.clear()

    def apply(self, writes: Sequence[Write], *, hot: bool = True) -> None:
        """Take a batch's records once they are durable (``saga_writes``); ``hot=False``:
        removals and timeline records only (the caller puts the new states itself)."""
        for _partition, key, value in writes:
            if is_timeline_key(key):
                if self._own is not None:
                    if value is None:
                        self._own.pop(key, None)
                    else:
                        self._own[key] = value
            elif value is None:
                self.discard(key.decode())
            elif hot:
                self.put(key.decode(), value)

    def _count(self, raw: bytes, delta: int) -> None:
        p = peek(raw)
        self._counts[(p.saga, p.status.value, p.stuck_unresolved)] += delta
