"""``choreo`` under cProfile, switched on and off by signals (the profile mode's fallback
when py-spy cannot attach).

    BENCH_SBS_CPROFILE=out.prof python -m benchmarks.saga_side_by_side.cprofile_run run mod:app

SIGUSR1 starts profiling, SIGUSR2 stops it and writes the stats to ``$BENCH_SBS_CPROFILE``,
so only the measured window is profiled, not start-up. cProfile follows the main thread
(the event loop, where choreo's work runs) and slows small functions most: read its
numbers as a ranking.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from types import FrameType

from choreo.cli.main import main

profiler = cProfile.Profile()


def _start(signum: int, frame: FrameType | None) -> None:
    profiler.enable()


def _stop(signum: int, frame: FrameType | None) -> None:
    profiler.disable()
    profiler.dump_stats(os.environ["BENCH_SBS_CPROFILE"])


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    sys.argv = ["choreo", *sys.argv[1:]]
    sys.exit(main())
