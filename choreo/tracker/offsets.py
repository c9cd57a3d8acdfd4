"""Where the tracker's folds have reached, kept with the states, checked on every record.

faust decides where a restarted worker starts reading and which offsets it commits, and
in faust-streaming 0.15.3 both can run past records that were never folded: a restarted
tracker was seen reading from near the end of its partitions instead of its committed
offsets (``tests/test_tracker_kill_loop.py`` reproduced it on the first SIGKILL), and
faust acks events it skips during a rebalance and commits past a batch whose agent
raised (faust-streaming issue 606). So the tracker does not take faust's word for it:

- with each batch's states, the changelog gets a *folded marker* per changelog partition:
  for each source topic of that partition number, the next offset to fold. It is written
  by the same idempotent producer to the same partition after the states, so a marker in
  the log implies the states before it are there too; recovery restores it with the table.
- every record delivered is checked against it (``FoldedOffsets.verdict``): an offset
  already folded is acked without folding again; the next one is folded; one past it is a
  *gap*: records were skipped. The shell then seeks the partition back to the marker and
  drops (never acks) what faust had already queued for it, until the records come again.
  A gap that is still there when the records come again is in the log itself (transaction
  markers, records deleted by retention) and is accepted, with a warning.

A source partition without a marker (a tracker that never folded it) starts at the
partition's first offset.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from choreo.transport.base import TopicPartition

log = logging.getLogger("choreo.tracker")

MARKER_PREFIX = b"\x00choreo.folded."
# A rewind that has not seen its records come again after this long is sought again
# (the seek can be undone by a fetch faust had in flight).
REWIND_RETRY = 5.0


def marker_key(partition: int) -> bytes:
    """The table key of a changelog partition's folded marker (never a gid: NUL first)."""
    return MARKER_PREFIX + str(partition).encode()


def is_marker(key: bytes) -> bool:
    return key.startswith(MARKER_PREFIX)


def marker_partition(key: bytes) -> int:
    return int(key[len(MARKER_PREFIX) :])


def encode_marker(offsets: Mapping[str, int]) -> bytes:
    return json.dumps(dict(sorted(offsets.items())), separators=(",", ":")).encode()


def decode_marker(raw: bytes) -> dict[str, int]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"folded marker is not an object: {raw[:80]!r}")
    return {str(topic): int(offset) for topic, offset in value.items()}


class Verdict(enum.Enum):
    FOLD = "fold"  # the next record of its partition
    SKIP = "skip"  # already folded: ack it, do not fold it again
    DROP = "drop"  # past a gap: neither fold nor ack; the partition is being rewound


@dataclass
class _Rewind:
    expected: int  # where the partition was sought back to
    gap_at: int  # the first offset delivered past the gap
    last: int  # the last offset delivered since
    since: float
    seeks: int = 1
    came_again: bool = False


class FoldedOffsets:
    """Per source partition, the next offset to fold: what the markers say, advanced as
    batches become durable. ``verdict`` judges a batch's records in order (tentatively);
    ``commit`` keeps the batch's progress once its states and markers are durable."""

    def __init__(self) -> None:
        self._next: dict[TopicPartition, int] = {}
        self._pending: dict[TopicPartition, int] = {}
        self._rewinds: dict[TopicPartition, _Rewind] = {}
        self.gaps = 0  # gaps seen (each one a rewind), for the logs and the tests
        self.accepted_gaps = 0  # gaps found in the log itself

    # -- what is known -------------------------------------------------------------------
    def knows(self, tp: TopicPartition) -> bool:
        return tp in self._next

    def load(self, partition: int, marker: Mapping[str, int]) -> None:
        """A changelog partition's marker, as recovered with the table."""
        for topic, offset in marker.items():
            self._next[TopicPartition(topic, partition)] = offset

    def start_at(self, tp: TopicPartition, offset: int) -> None:
        """A partition never folded: its first offset is the next to fold."""
        self._next.setdefault(tp, offset)

    def next_offsets(self) -> dict[TopicPartition, int]:
        return dict(self._next)

    def clear(self) -> None:
        """A rebalance: markers are read again from the table for the new assignment."""
        self._next.clear()
        self._pending.clear()
        self._rewinds.clear()

    # -- judging a batch -----------------------------------------------------------------
    def verdict(self, tp: TopicPartition, offset: int) -> tuple[Verdict, int | None]:
        """What to do with the record at ``offset`` of ``tp``; with ``DROP``, the offset
        to seek ``tp`` back to when a seek is due (None: one is in progress)."""
        expected = self._pending.get(tp, self._next.get(tp))
        if expected is None or offset == expected:
            self._rewinds.pop(tp, None)
            self._pending[tp] = offset + 1
            return Verdict.FOLD, None
        if offset < expected:
            self._note_refetch(tp, offset)
            return Verdict.SKIP, None
        return self._gap(tp, offset, expected)

    def _note_refetch(self, tp: TopicPartition, offset: int) -> None:
        rewind = self._rewinds.get(tp)
        if rewind is not None:
            rewind.came_again = True
            rewind.last = offset

    def _gap(self, tp: TopicPartition, offset: int, expected: int) -> tuple[Verdict, int | None]:
        rewind = self._rewinds.get(tp)
        if rewind is None or rewind.expected != expected:
            self.gaps += 1
            log.warning("tracker: %s[%d] delivered offset %d, but the next to fold is %d: "
                        "seeking back", tp.topic, tp.partition, offset, expected)  # fmt: skip
            self._rewinds[tp] = _Rewind(expected, offset, offset, time.monotonic())
            return Verdict.DROP, expected
        if offset <= rewind.last:
            rewind.came_again = True  # faust delivers the partition again from the seek
        rewind.last = offset
        if rewind.came_again and offset == rewind.gap_at:
            # Read again from ``expected`` and the first record is still this one: the
            # offsets in between hold no records (transaction markers, deleted records).
            del self._rewinds[tp]
            self.accepted_gaps += 1
            log.warning("tracker: %s[%d] has no records in [%d, %d): going on", tp.topic,
                        tp.partition, expected, offset)  # fmt: skip
            self._pending[tp] = offset + 1
            return Verdict.FOLD, None
        if rewind.came_again or time.monotonic() - rewind.since > REWIND_RETRY:
            # Delivered again but not from ``expected``: faust dropped part of the re-read
            # (a fetch it had in flight moved its read offset); seek once more.
            rewind.came_again = False
            rewind.since = time.monotonic()
            rewind.seeks += 1
            return Verdict.DROP, expected
        return Verdict.DROP, None

    def changed_partitions(self) -> set[int]:
        return {tp.partition for tp in self._pending}

    def marker(self, partition: int) -> dict[str, int]:
        """The marker of ``partition`` with the batch's progress."""
        merged = {tp.topic: n for tp, n in self._next.items() if tp.partition == partition}
        merged.update((tp.topic, n) for tp, n in self._pending.items() if tp.partition == partition)
        return merged

    def commit(self) -> None:
        """The batch's states and markers are durable."""
        self._next.update(self._pending)
        self._pending.clear()

    def abandon(self) -> None:
        """The batch was not made durable: it will be read again."""
        self._pending.clear()

    def rewinding(self) -> Iterable[TopicPartition]:
        return list(self._rewinds)
