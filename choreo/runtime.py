"""Process-wide settings for a process that runs choreo's hot paths (``choreo run``,
``choreo tracker``). A library must not change a host process's interpreter behind its
back, so ``Service.running`` leaves them alone; the commands that own their process call
``tune_gc`` once the service is up, and an embedding program may call it too.
"""

from __future__ import annotations

import gc

# Container allocations between two young-generation collections of CPython's cyclic
# garbage collector (its default is 700). Every record choreo handles allocates a few
# hundred short-lived containers (headers, envelopes, outbox entries) that reference
# counting frees anyway; with the default threshold a young collection ran every two or
# three records, and each also scanned the survivors of earlier ones: on the Kafka + Redis
# dispatch benchmark the collector took 90-130 us of a record's 250-295 us of CPU, and
# 8-20 us with this threshold and the start-up objects frozen (benchmarks in
# docs/benchmarks.md). The cost is memory: up to this many unreachable cycles wait a little
# longer to be freed.
GC_YOUNG_THRESHOLD = 50_000


def tune_gc(young: int = GC_YOUNG_THRESHOLD) -> None:
    """Raise the collector's young threshold (never lower it) and move every object alive
    now (modules, classes, the app and its clients: nothing a collection could free) to
    the permanent generation, so full collections stop rescanning them."""
    threshold, *older = gc.get_threshold()
    gc.set_threshold(max(threshold, young), *older)
    gc.freeze()
