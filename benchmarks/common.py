"""What every benchmark shares: repeated samples, their summary, and the machine."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any


@dataclass
class Samples:
    """Repeated measurements of one quantity (higher or lower is better: see ``unit``)."""

    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        """(max - min) / median: how far apart the repetitions landed."""
        return (max(self.values) - min(self.values)) / self.median if self.median else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "spread": self.spread,
            "runs": self.values,
        }


@dataclass
class Comparison:
    """One benchmark: choreo against its baseline, both measured in this run."""

    name: str
    description: str
    choreo: Samples
    baseline: Samples
    baseline_description: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """choreo / baseline, of the medians."""
        return self.choreo.median / self.baseline.median

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "baseline_description": self.baseline_description,
            "choreo": self.choreo.to_json(),
            "baseline": self.baseline.to_json(),
            "ratio": self.ratio,
            **({"extra": self.extra} if self.extra else {}),
        }


async def alternate(
    repeat: int,
    choreo: Callable[[int], Awaitable[float]],
    baseline: Callable[[int], Awaitable[float]],
    unit: str,
) -> tuple[Samples, Samples]:
    """Run choreo and baseline in turns (A B A B ...), so drift in the machine's speed
    during the run touches both alike. Each callable gets the repetition's index."""
    ours, theirs = Samples(unit), Samples(unit)
    for index in range(repeat):
        ours.values.append(await choreo(index))
        theirs.values.append(await baseline(index))
    return ours, theirs


def _cpuinfo_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _total_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


PACKAGES = ("choreo", "pydantic", "pydantic-core", "orjson", "aiokafka", "redis")


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, Any]:
    """The machine a run was measured on, reported with every result."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    memory = _total_memory_bytes()
    return {
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_build": " ".join(platform.python_build()),
        "cpu": _cpuinfo_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_total_gib": round(memory / 2**30, 1) if memory else None,
        "executable": sys.executable,
        "packages": _versions(),
    }
