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
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faust.types import TP

from choreo.errors import ConfigurationError
from choreo.tracker.offsets import MARKER_PREFIX, is_marker, marker_partition
from choreo.tracker.states import TIMELINE_PREFIX, is_timeline_key, timeline_gid
from choreo.transport.partitioner import partition_for

log = logging.getLogger("choreo.tracker")

STORES = ("memory", "rocksdb")
MIB = 1024**2
# faust's key of the changelog offset each partition database has applied.
OFFSET_KEY = b"__faust\0offset__"


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
        offsets they reached."""
        if self.kind == "memory":
            for _partition, key, value in writes:
                if value is None:
                    self.data.data.pop(key, None)  # faust's memory store holds a dict
                else:
                    self.data[key] = value
            for partition, offset in offsets.items():
                self.data.set_persisted_offset(TP(topic, partition), offset)
            return
        from rocksdict import WriteBatch

        batches: dict[int, Any] = {}
        for partition, key, value in writes:
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = WriteBatch(raw_mode=True)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for partition, batch in batches.items():
            batch.put(OFFSET_KEY, str(offsets[partition]).encode())
            self.data._db_for_partition(partition).write(batch)

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
