"""Indexes kept in each RocksDB partition database beside the states, so a restart reads
the sagas waiting on a deadline and the partition's counts, not every state (issue 11: at
100k in flight plus 1M finished, reading every state's head was 14 CPU-s and the finished
sagas' ends of retention most of the tracker's memory).

Keys (``0xFF 'x' ...``: after the timeline records' ``0xFF 't'``, so no gid and no scan of
the states meets them; never in the changelog, so they cost no broker traffic):

- ``DUE + gid``: ``[version, next deadline, settled at]`` of each saga with a deadline (a
  step pending, a compensation to retry): what the in-memory deadline index holds;
- ``SETTLED + settled at (8 bytes, big-endian float) + gid``: each settled saga with no
  deadline (COMPLETED, COMPENSATED, a STUCK one resolved or clear), in the order they
  settled: the retention sweep reads its start up to ``now - retention``, O(expired);
- ``COUNTS``: ``[[saga, status, stuck and unresolved, sagas], ...]`` of the partition;
- ``VERSION``: the indexes are complete (written with the first records of a new
  database, or by ``reindex`` of a database an earlier version wrote).

They are derived from the states and written in the same ``WriteBatch`` as the states
they describe (``write_indexed``: the read of each replaced state and the new entries),
both by the tracker's own writes and by faust's changelog recovery and standby reads
(``TableStore.install_recovery``). A WriteBatch is atomic, so whatever a SIGKILL
interrupts, the indexes agree with the states in the database; a database removed
(``remove_stale``) is recovered, indexes included, from the changelog.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import msgpack

from choreo.saga.packing import Head, head_reader
from choreo.tracker.offsets import MARKER_PREFIX

log = logging.getLogger("choreo.tracker")

# faust's key of the changelog offset each partition database has applied.
OFFSET_KEY = b"__faust\0offset__"
INDEX_PREFIX = b"\xffx"
DUE = INDEX_PREFIX + b"d"
SETTLED = INDEX_PREFIX + b"r"
COUNTS = INDEX_PREFIX + b"c"
VERSION_KEY = INDEX_PREFIX + b"v"
VERSION = b"1"
_STATES_END = b"\xff"  # timeline records and indexes: every key from here on
_REINDEX_CHUNK = 20_000

CountKey = tuple[str, str, bool]
"""(saga, status, STUCK and unresolved)."""


def is_state_key(key: bytes) -> bool:
    return key < _STATES_END and key != OFFSET_KEY and not key.startswith(MARKER_PREFIX)


def _when(at: float) -> bytes:
    return struct.pack(">d", max(0.0, at))  # non-negative doubles sort as their bytes


def _entry(gid: bytes, found: Head) -> tuple[bytes, bytes] | None:
    if found.next_deadline is not None:
        value: bytes = msgpack.packb([found.version, found.next_deadline, found.settled_at])
        return DUE + gid, value
    if found.settled_at is not None:
        return SETTLED + _when(found.settled_at) + gid, b""
    return None


def _count_key(found: Head) -> CountKey:
    return (found.saga, found.status.value, found.stuck_unresolved)


def read_counts(db: Any) -> Counter[CountKey]:
    raw = db.get(COUNTS)
    counts: Counter[CountKey] = Counter()
    if raw is not None:
        for saga, status, stuck, n in msgpack.unpackb(raw):
            counts[(saga, status, bool(stuck))] += n
    return counts


def _pack_counts(counts: Counter[CountKey]) -> bytes:
    packed: bytes = msgpack.packb([[*key, n] for key, n in sorted(counts.items()) if n])
    return packed


class _Indexer:
    """Index entries and count changes of state writes, into one WriteBatch."""

    def __init__(self, batch: Any, counts: Counter[CountKey]) -> None:
        self.batch = batch
        self.counts = counts
        self.head = head_reader()

    def _head(self, key: bytes, raw: bytes) -> Head | None:
        try:
            return self.head(raw)
        except ValueError as exc:
            log.error("saga state of %r is unreadable, not indexed: %s", key, exc)
            return None

    def replace(self, key: bytes, old: bytes | None, new: bytes | None) -> None:
        if old is not None and (found := self._head(key, old)) is not None:
            self.counts[_count_key(found)] -= 1
            entry = _entry(key, found)
            if entry is not None:
                self.batch.delete(entry[0])
        if new is not None and (found := self._head(key, new)) is not None:
            self.counts[_count_key(found)] += 1
            entry = _entry(key, found)
            if entry is not None:
                self.batch.put(*entry)


def write_indexed(
    db: Any, items: Sequence[tuple[bytes, bytes | None]], offset: int | None = None
) -> None:
    """Write ``items`` (key, value; None deletes the key) and, with a changelog
    ``offset``, faust's applied offset, with the index entries and counts they change,
    in one WriteBatch."""
    from rocksdict import WriteBatch

    batch = WriteBatch(raw_mode=True)
    indexer: _Indexer | None = None
    pending: dict[bytes, bytes | None] = {}
    for key, value in items:
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
        if not is_state_key(key):
            continue
        if indexer is None:
            raw_counts = db.get(COUNTS)
            indexer = _Indexer(batch, read_counts(db))
            if raw_counts is None and not _holds_states(db):
                batch.put(VERSION_KEY, VERSION)  # a new database: indexed from the start
        old = pending[key] if key in pending else db.get(key)
        pending[key] = value
        indexer.replace(key, old, value)
    if indexer is not None:
        batch.put(COUNTS, _pack_counts(indexer.counts))
    if offset is not None:
        batch.put(OFFSET_KEY, str(offset).encode())
    db.write(batch)


def _states(db: Any) -> Iterator[tuple[bytes, bytes]]:
    for key, raw in db.items():
        if key >= _STATES_END:
            return
        if raw is not None and is_state_key(key):
            yield key, raw


def _holds_states(db: Any) -> bool:
    return next(_states(db), None) is not None


def indexed(db: Any) -> bool:
    return bool(db.get(VERSION_KEY) == VERSION)


def reindex(db: Any) -> int:
    """Make a database's indexes from its states (one written by an earlier version, or
    whose indexing was interrupted); returns the states read."""
    from rocksdict import WriteBatch

    stale = WriteBatch(raw_mode=True)
    for key in db.keys(from_key=INDEX_PREFIX):
        if not key.startswith(INDEX_PREFIX):
            break
        stale.delete(key)
    db.write(stale)
    counts: Counter[CountKey] = Counter()
    indexer = _Indexer(WriteBatch(raw_mode=True), counts)
    read = 0
    for key, raw in _states(db):
        indexer.replace(key, None, raw)
        read += 1
        if read % _REINDEX_CHUNK == 0:
            db.write(indexer.batch)
            indexer.batch = WriteBatch(raw_mode=True)
    indexer.batch.put(COUNTS, _pack_counts(counts))
    indexer.batch.put(VERSION_KEY, VERSION)  # last: an interrupted reindex starts again
    db.write(indexer.batch)
    return read


def due(db: Any) -> Iterator[tuple[str, int, float, float | None]]:
    """(gid, version, next deadline, settled at) of every saga with a deadline."""
    start = len(DUE)
    for key, value in db.items(from_key=DUE):
        if not key.startswith(DUE):
            return
        version, deadline, settled = msgpack.unpackb(value)
        yield key[start:].decode(), version, deadline, settled


def settled_until(
    db: Any, until: float, after: bytes | None, limit: int
) -> list[tuple[bytes, str]]:
    """(index key, gid) of the settled sagas without a deadline that settled at or before
    ``until``, oldest first, from the key after ``after``; at most ``limit``."""
    end = SETTLED + _when(until) + b"\xff"  # past every gid settled at ``until``
    start = len(SETTLED) + 8
    found: list[tuple[bytes, str]] = []
    if limit <= 0:
        return found
    for key in db.keys(from_key=SETTLED if after is None else after + b"\x00"):
        if key >= end or not key.startswith(SETTLED):
            break
        found.append((key, key[start:].decode()))
        if len(found) >= limit:
            break
    return found


def entries(items: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The index entries and counts ``items`` (key, packed state) give: what a
    database's indexes must equal (tests)."""
    counts: Counter[CountKey] = Counter()
    found: dict[bytes, bytes] = {}

    class Batch:
        def put(self, key: bytes, value: bytes) -> None:
            found[key] = value

        def delete(self, key: bytes) -> None:
            found.pop(key, None)

    indexer = _Indexer(Batch(), counts)
    for key, raw in items:
        indexer.replace(key, None, raw)
    found[COUNTS] = _pack_counts(counts)
    return found
