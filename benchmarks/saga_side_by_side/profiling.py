"""Profiling one step process during the saturation window: py-spy when it can attach,
else cProfile switched on and off by signals (``cprofile_run``).

py-spy samples the running process from outside (``record --format raw --function``,
idle frames left out), so the shares are of the CPU the step spent, without slowing its
small functions the way cProfile does.
"""

from __future__ import annotations

import math
import os
import pstats
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

TOP = 25


def find_py_spy(install: bool) -> str | None:
    """py-spy beside this interpreter or on PATH; with ``install``, pip-installs it into
    this environment first when missing (a prebuilt binary wheel from PyPI)."""
    for candidate in (Path(sys.executable).parent / "py-spy", shutil.which("py-spy")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    if not install:
        return None
    print("py-spy not found; installing it with pip into this environment ...", file=sys.stderr)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "py-spy"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        print(f"pip install py-spy failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return find_py_spy(install=False)


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", str(Path.cwd()) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


class PySpy:
    name = "py-spy"

    def __init__(self, binary: str, output: Path, rate: int = 100) -> None:
        self.binary = binary
        self.output = output
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.seconds = 0.0
        self.pid = 0

    def command(self, cmd: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        return cmd, env

    def works(self) -> bool:
        """py-spy needs ptrace on the target; try it on a throwaway child first."""
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            time.sleep(0.3)
            done = subprocess.run(
                [self.binary, "dump", "--pid", str(child.pid)],
                capture_output=True,
                timeout=30,
                check=False,
            )
            return done.returncode == 0
        finally:
            child.kill()
            child.wait()

    def start(self, pid: int, seconds: float) -> None:
        self.pid, self.seconds = pid, seconds
        self.output.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, math.floor(seconds))),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--function",
                "--output",
                str(self.output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            _, err = self.proc.communicate(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if self.proc.returncode != 0:
            print(
                f"py-spy exited with {self.proc.returncode}: {err.decode()[-1000:]}",
                file=sys.stderr,
            )

    def summary(self, top: int = TOP) -> dict[str, Any]:
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = 0
        for line in self.output.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_frame(f) for f in stack.split(";") if f]
            if not frames:
                continue
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
        return {
            "profiler": "py-spy",
            "samples": total,
            "rate": self.rate,
            "unit": "share of py-spy's non-idle samples",
            "top_own": [
                {"function": f, "own": n / total, "inclusive": inclusive[f] / total}
                for f, n in own.most_common(top)
            ]
            if total
            else [],
            "top_inclusive": [
                {"function": f, "inclusive": n / total} for f, n in inclusive.most_common(top)
            ]
            if total
            else [],
        }


def _frame(text: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (to/file.py:12)`` with shorter paths."""
    name, sep, where = text.partition(" (")
    return f"{name} ({_short(where)}" if sep else text


class CProfiler:
    name = "cProfile"

    def __init__(self, output: Path) -> None:
        self.output = output
        self.pid = 0

    def command(self, cmd: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        # [python, -m, choreo.cli.main, run, ...] -> [python, -m, ...cprofile_run, run, ...]
        index = cmd.index("choreo.cli.main")
        wrapped = [*cmd[:index], "benchmarks.saga_side_by_side.cprofile_run", *cmd[index + 1 :]]
        return wrapped, {**env, "BENCH_SBS_CPROFILE": str(self.output)}

    def start(self, pid: int, seconds: float) -> None:
        self.pid = pid
        self.output.unlink(missing_ok=True)
        os.kill(pid, signal.SIGUSR1)

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not self.output.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def summary(self, top: int = TOP) -> dict[str, Any]:
        stats = pstats.Stats(str(self.output))
        raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
        # The event loop's wait for I/O is wall time, not work: left out of the shares.
        idle = {key: value for key, value in raw.items() if "of 'select." in key[2]}
        work = {key: value for key, value in raw.items() if key not in idle}
        total = sum(entry[2] for entry in work.values()) or 1.0
        rows = sorted(work.items(), key=lambda item: item[1][2], reverse=True)[:top]
        return {
            "profiler": "cProfile",
            "unit": "share of the main thread's own time, waiting in select() left out",
            "total_seconds": total,
            "idle_seconds": sum(entry[2] for entry in idle.values()),
            "top_own": [
                {
                    "function": f"{func} ({_short(file)}:{line})",
                    "own": tottime / total,
                    "inclusive": cumtime / total,
                    "calls": calls,
                }
                for (file, line, func), (_, calls, tottime, cumtime, _) in rows
            ],
        }


def print_summary(summary: dict[str, Any], title: str) -> None:
    print(f"\n{title}: {summary['profiler']}, {summary['unit']}")
    if "samples" in summary:
        print(f"  {summary['samples']} samples at {summary['rate']} Hz")
    print(f"  {'own':>6} {'incl':>6}  function")
    for row in summary["top_own"]:
        print(f"  {100 * row['own']:5.1f}% {100 * row['inclusive']:5.1f}%  {row['function']}")
