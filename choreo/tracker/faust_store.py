"""The faust tracker's local table store: memory, or RocksDB (faust's ``rocksdb://`` with
``rocksdict``) so states need not fit in memory and a restart opens its local state
instead of replaying the whole changelog.

The tracker writes the store itself, after the changelog has acknowledged the states
(``FaustTracker._save``), never through faust's ``table[key] = value``: with RocksDB the
states and the changelog offset they reach go into one ``WriteBatch`` per partition, so
after a SIGKILL the local database is never ahead of the changelog (faust's own path
wrote the key before the changelog send was acknowledged). A local database that is
ahead anyway (its changelog topic was deleted and made again, or the directory belongs
to another tracker) is removed before faust opens it (``stale_partitions``), and the
partition is rebuilt from the changelog; faust would otherwise stop on it or miss
records (faust-streaming issue 158).

Each RocksDB partition database also holds indexes of its states (``faust_index``: the
sagas with a deadline, the settled ones by when they settled, the counts), written in
the same WriteBatch as the states by the tracker's writes and by faust's recovery, so a
restart reads those instead of every state.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faust.types import TP

from choreo.errors import ConfigurationError
from choreo.tracker import faust_index
from choreo.tracker.faust_index import OFFSET_KEY, CountKey
from choreo.tracker.offsets import MARKER_PREFIX, is_marker, marker_partition
from choreo.tracker.states import TIMELINE_PREFIX, is_timeline_key, timeline_gid
from choreo.transport.partitioner import partition_for

log = logging.getLogger("choreo.tracker")

STORES = ("memory", "rocksdb")
MIB = 1024**2


@dataclass(frozen=True)
class RocksDBSizing:
    """Per partition database (a tracker opens one per partition it owns). faust's
    defaults are a 2 GiB block cache and three 64 MiB write buffers *per partition*: 12
    partitions could take 26 GiB. These keep a partition at most 32 MiB of cache plus
    2 x 16 MiB of memtables; a packed saga state is a few hundred bytes, so a
    partition's hot sagas fit."""

    block_cache_mb: int = 32
    write_buffer_mb: int = 16
    write_buffers: int = 2
    max_open_files: int = 256

    def options(self) -> dict[str, Any]:
        return {
            "block_cache_size": self.block_cache_mb * MIB,
            "write_buffer_size": self.write_buffer_mb * MIB,
            "max_write_buffer_number": self.write_buffers,
            "target_file_size_base": 2 * self.write_buffer_mb * MIB,
            "max_open_files": self.max_open_files,
            "driver": "rocksdict",
        }


def store_url(kind: str) -> str:
    if kind not in STORES:
        raise ConfigurationError(f"tracker store {kind!r} is not one of {', '.join(STORES)}")
    return f"{kind}://"


def key_partition(key: bytes, partitions: int) -> int:
    if is_marker(key):
        return marker_partition(key)
    return partition_for(timeline_gid(key) if is_timeline_key(key) else key, partitions)


class TableStore:
    """Reads and writes of the table's local store, memory or RocksDB alike. ``owned``:
    the partitions the worker owns now (what ``states`` lists)."""

    def __init__(
        self, data: Any, kind: str, partitions: int, owned: Callable[[], set[int]] | None = None
    ) -> None:
        self.data = data  # faust's Store of the table
        self.kind = kind
        self.partitions = partitions
        self.owned = owned or (lambda: set(range(partitions)))

    def get(self, key: bytes) -> bytes | None:
        if self.kind == "memory":
            value: bytes | None = self.data.get(key)
            return value
        db = self.data._db_for_partition(key_partition(key, self.partitions))
        found: bytes | None = db.get(key)
        return found

    def write(
        self,
        topic: str,
        writes: Sequence[tuple[int, bytes, bytes | None]],
        offsets: Mapping[int, int],
    ) -> None:
        """Put acknowledged changelog records in the store (None: delete the key) with the
        offsets they reached (RocksDB: with the index entries and counts they change, in
        one WriteBatch per partition)."""
        if self.kind == "memory":
            for _partition, key, value in writes:
                if value is None:
                    self.data.data.pop(key, None)  # faust's memory store holds a dict
                else:
                    self.data[key] = value
            for partition, offset in offsets.items():
                self.data.set_persisted_offset(TP(topic, partition), offset)
            return
        by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for partition, key, value in writes:
            by_partition.setdefault(partition, []).append((key, value))
        for partition, items in by_partition.items():
            db = self.data._db_for_partition(partition)
            faust_index.write_indexed(db, items, offsets[partition])

    def install_recovery(self) -> None:
        """Make faust's changelog recovery (and its standbys' reading) write RocksDB as
        ``write`` does: the records, the index entries and counts they change and the
        offset reached, in one WriteBatch per partition (faust's own writes the records,
        then the offset apart)."""
        if self.kind != "rocksdb":
            return
        store = self.data

        def apply_changelog_batch(batch: Iterable[Any], to_key: Any, to_value: Any) -> None:
            items: dict[int, list[tuple[bytes, bytes | None]]] = {}
            offsets: dict[int, int] = {}
            for event in batch:
                message = event.message
                partition = message.partition
                items.setdefault(partition, []).append((message.key, message.value))
                offsets[partition] = max(message.offset, offsets.get(partition, -1))
            for partition, found in items.items():
                db = store._db_for_partition(partition)
                faust_index.write_indexed(db, found, offsets[partition])

        store.apply_changelog_batch = apply_changelog_batch

    # -- the indexes (RocksDB) -----------------------------------------------------------
    def _indexed_db(self, partition: int) -> Any:
        db = self.data._db_for_partition(partition)
        if not faust_index.indexed(db):  # written by an earlier version (or empty)
            began = time.process_time()
            read = faust_index.reindex(db)
            if read:
                log.info("tracker: indexed the %d states of partition %d, written by an "
                         "earlier version (%.2f CPU-s)", read, partition,
                         time.process_time() - began)  # fmt: skip
        return db

    @property
    def counting(self) -> bool:
        return self.kind == "rocksdb"

    def counts(self, owned: set[int] | None = None) -> Counter[CountKey] | None:
        """Sagas of the owned partitions by (saga, status, STUCK and unresolved), as
        their databases count them (the memory store: None, not counted)."""
        if self.kind != "rocksdb":
            return None
        counts: Counter[CountKey] = Counter()
        for partition in sorted(self.owned() if owned is None else owned):
            counts.update(faust_index.read_counts(self._indexed_db(partition)))
        return counts

    def due(self, owned: set[int]) -> Iterator[tuple[str, int, float, float | None]]:
        """(gid, version, next deadline, settled at) of the owned sagas with a deadline."""
        for partition in sorted(owned):
            yield from faust_index.due(self._indexed_db(partition))

    def settled_until(
        self, partition: int, until: float, after: bytes | None, limit: int
    ) -> list[tuple[bytes, str]]:
        """(index key, gid) of the partition's settled sagas without a deadline that
        settled at or before ``until``, oldest first, after the index key ``after``."""
        return faust_index.settled_until(self._indexed_db(partition), until, after, limit)

    def states(self, owned: set[int] | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, packed state) of every saga in the owned partitions (default: ``owned``),
        in no particular order: no timeline record, folded marker or faust offset. In
        RocksDB a partition's keys are read in order and the reading stops at the first
        timeline key (``TIMELINE_PREFIX`` sorts after every gid), so the timeline records,
        several per saga, are never read."""
        parts = self.owned() if owned is None else owned
        if self.kind == "memory":
            for key, raw in list(self.data.data.items()):
                if raw is None or key == OFFSET_KEY or is_marker(key) or is_timeline_key(key):
                    continue
                if key_partition(key, self.partitions) in parts:
                    yield key, raw
            return
        for partition in sorted(parts):
            db = self.data._db_for_partition(partition)
            for key, raw in db.items():
                if key >= TIMELINE_PREFIX:
                    break
                if raw is None or key == OFFSET_KEY or key.startswith(MARKER_PREFIX):
                    continue
                yield key, raw

    def applied(self, partition: int) -> int | None:
        """The changelog offset the partition's local database has applied, as faust
        and ``write`` persist it with the records (RocksDB; the memory store: None)."""
        if self.kind != "rocksdb":
            return None
        raw = self.data._db_for_partition(partition).get(OFFSET_KEY)
        return None if raw is None else int(raw)

    def drop_unowned(self, owned: set[int]) -> None:
        """A memory store keeps the keys it wrote after their partition moved to another
        worker: drop them (RocksDB keeps a database per partition: nothing to do)."""
        if self.kind != "memory":
            return
        for key in list(self.data.data):
            if key != OFFSET_KEY and key_partition(key, self.partitions) not in owned:
                del self.data.data[key]


def stale_partitions(
    paths: Mapping[int, Path], changelog_ends: Mapping[int, int]
) -> Iterable[tuple[int, int | None]]:
    """Partition databases whose applied offset is not below their changelog's end:
    (partition, offset). Each database is opened read-only and closed again."""
    from rocksdict import AccessType, Options, Rdict

    for partition, path in sorted(paths.items()):
        if not path.exists():
            continue
        try:
            db = Rdict(str(path), options=Options(raw_mode=True),
                       access_type=AccessType.read_only())  # fmt: skip
        except Exception as exc:  # unreadable: rebuilt from the changelog
            log.warning("tracker: local state %s unreadable (%s)", path, exc)
            yield partition, None
            continue
        try:
            raw = db.get(OFFSET_KEY)
        finally:
            db.close()
        if raw is not None and int(raw) >= changelog_ends.get(partition, 0):
            yield partition, int(raw)


def remove_stale(paths: Mapping[int, Path], changelog_ends: Mapping[int, int]) -> list[int]:
    """Remove the local databases ahead of their changelog; returns their partitions."""
    removed = []
    for partition, offset in list(stale_partitions(paths, changelog_ends)):
        log.warning("tracker: local state of partition %d (offset %s) is not behind its "
                    "changelog (end %d): rebuilding it from the changelog", partition,
                    offset, changelog_ends.get(partition, 0))  # fmt: skip
        shutil.rmtree(paths[partition], ignore_errors=True)
        removed.append(partition)
    return removed
