"""Where the faust tracker reads: by its folded markers (``choreo.tracker.offsets``), not
by faust's offsets. This is the part that talks to faust's consumer: it judges each
delivered event, seeks a partition back when faust delivered past a record never folded,
and after a rebalance seeks back every partition whose group offset ran past its marker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from choreo.tracker.faust_io import faust_tp
from choreo.tracker.offsets import FoldedOffsets, Verdict, decode_marker, marker_key
from choreo.transport.base import TopicPartition

log = logging.getLogger("choreo.tracker")


class ReadPosition:
    """``read``: the table's value of a key (markers included); ``consumer``: faust's
    consumer (asked for when needed: the app is built after this)."""

    def __init__(self, read: Callable[[bytes], bytes | None], consumer: Callable[[], Any]):
        self.folded = FoldedOffsets()
        self._read = read
        self._consumer = consumer

    async def judge(self, events: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        """(events to fold, events to ack once they are durable): the next records of
        their partitions are folded; records already folded are acked, not folded again;
        records past a gap are neither, and their partition is sought back."""
        folding: list[Any] = []
        done: list[Any] = []
        for event in events:
            message = event.message
            tp = TopicPartition(str(message.topic), int(message.partition))
            if not self.folded.knows(tp):
                await self._learn_start(tp)
            verdict, seek_to = self.folded.verdict(tp, int(message.offset))
            if verdict is Verdict.FOLD:
                folding.append(event)
                done.append(event)
            elif verdict is Verdict.SKIP:
                done.append(event)
            elif seek_to is not None:
                await self._consumer().seek(faust_tp(tp.topic, tp.partition), seek_to)
        return folding, done

    def marker_of(self, tp: TopicPartition) -> int | None:
        raw = self._read(marker_key(tp.partition))
        marker = decode_marker(raw) if raw is not None else {}
        return marker.get(tp.topic)

    async def _learn_start(self, tp: TopicPartition) -> None:
        """The next offset of ``tp`` to fold: its changelog partition's marker, else (never
        folded) the partition's first offset."""
        raw = self._read(marker_key(tp.partition))
        if raw is not None:
            self.folded.load(tp.partition, decode_marker(raw))
        if not self.folded.knows(tp):
            first = await self._consumer().earliest_offsets(faust_tp(tp.topic, tp.partition))
            self.folded.start_at(tp, int(next(iter(first.values()), 0) or 0))

    async def realign(
        self, tps: Sequence[TopicPartition], committed: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """After a rebalance: seek each partition whose group offset is past its marker
        back to the marker (faust then starts past records never folded, and with nothing
        newer arriving no delivery would show the gap); a partition never folded goes to
        its first offset. Returns the next offset to fold of each partition."""
        folded: dict[TopicPartition, int] = {}
        unknown: list[TopicPartition] = []
        for tp in tps:
            offset = self.marker_of(tp)
            if offset is None:
                unknown.append(tp)
            else:
                folded[tp] = offset
        if unknown:
            first = await self._consumer().earliest_offsets(
                *(faust_tp(tp.topic, tp.partition) for tp in unknown)
            )
            for tp in unknown:
                folded[tp] = int(first.get(faust_tp(tp.topic, tp.partition)) or 0)
        for tp, offset in folded.items():
            if offset < committed.get(tp, 0):
                log.warning("tracker: the group committed %s up to %d, but it is folded up to "
                            "%d only: seeking back", tp, committed[tp], offset)  # fmt: skip
                self.folded.gaps += 1
                await self._consumer().seek(faust_tp(tp.topic, tp.partition), offset)
        return folded
