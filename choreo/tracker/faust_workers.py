"""Which faust tracker worker owns which saga, from faust's own assignment.

Every worker of one app id advertises its state API's URL as faust's ``canonical_url``;
faust's partition assignor hands every member, with each assignment, the map of URL ->
the table's changelog partitions it owns (``app.router.table_metadata``, what faust's own
``table_route`` reads). The tracker writes a saga's state to the changelog partition of
its source records, which is the gid's partition under Kafka's default partitioner
(``choreo.transport.partitioner``, murmur2 of the key: faust's ``key_store`` would
partition the same bytes with its producer, which has no metadata of a changelog the
tracker writes with its own producer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from choreo.transport.partitioner import partition_for

log = logging.getLogger("choreo.tracker")


class FaustWorkers:
    """``choreo.tracker.routing.Workers`` over a faust app's assignment."""

    def __init__(
        self,
        app: Any,
        table_name: str,
        partitions: int,
        owned: Callable[[], set[int]],
    ) -> None:
        self._app = app
        self._table_name = table_name
        self._partitions = partitions
        self._owned = owned  # the partitions this worker's consumer holds now
        self._warned: set[tuple[str, int]] = set()

    def me(self) -> str:
        return str(self._app.conf.canonical_url)

    def distribution(self) -> dict[str, list[int]]:
        """URL -> the table partitions that worker owns, as of the group's last
        assignment (empty before this worker's first)."""
        found: dict[str, list[int]] = {}
        metadata = self._app.router.table_metadata(self._table_name)
        for url, topics in metadata.items():
            found[str(url)] = sorted(int(p) for parts in topics.values() for p in parts)
        return found

    def owner(self, gid: str) -> str | None:
        partition = partition_for(gid.encode(), self._partitions)
        for url, partitions in self.distribution().items():
            if partition not in partitions:
                continue
            if url == self.me() and partition not in self._owned():
                # The group's map says ours while this worker does not hold it: a
                # rebalance is under way, or another worker advertises our URL.
                if (url, partition) not in self._warned:
                    self._warned.add((url, partition))
                    log.warning(
                        "partition %d is mapped to this worker's URL %s but not held here: "
                        "do two workers share one URL?",
                        partition,
                        url,
                    )
                return None
            return url
        return None

    def others(self) -> list[str]:
        me = self.me()
        return [url for url in self.distribution() if url != me]
