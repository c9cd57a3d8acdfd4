"""The shipped Prometheus alerting rules (docker/prometheus/choreo-alerts.yml) are valid,
fire when they should and not otherwise (promtool's own rule unit tests), and name only
metrics choreo exposes.

promtool comes from Debian's ``prometheus`` package, downloaded with ``apt-get download``
and unpacked into the cache (nothing installed, no server started) when it is not on
PATH; without apt the promtool tests are skipped, except on CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from choreo.local._process import cache_dir
from choreo.metrics import ServiceMetrics
from choreo.tracker.exposition import TrackerCollector
from choreo.tracker.view import TrackerMetrics

RULES_DIR = Path(__file__).resolve().parent.parent / "docker" / "prometheus"
RULES = RULES_DIR / "choreo-alerts.yml"
RULE_TESTS = RULES_DIR / "choreo-alerts.test.yml"


class _Idle:
    """What the tracker's collector reads, with nothing counted yet."""

    def counts(self) -> dict[str, object]:
        return {"by_status": {}}

    def metrics(self) -> TrackerMetrics:
        return TrackerMetrics()


def _tracker_metrics() -> set[str]:
    """The names the tracker's /metrics exposes, read from its real collector."""
    names: set[str] = set()
    for family in TrackerCollector(_Idle()).collect():  # type: ignore[arg-type]
        names |= _family_names(family.name, family.type)
    return names


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"promtool unavailable: {reason}", pytrace=False)
    pytest.skip(f"promtool unavailable: {reason}")


@pytest.fixture(scope="module")
def promtool() -> Path:
    found = shutil.which("promtool")
    if found:
        return Path(found)
    home = cache_dir() / "promtool"
    binary = home / "root" / "usr" / "bin" / "promtool"
    if binary.exists():
        return binary
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        _unavailable("not on PATH, and no apt-get/dpkg to fetch Debian's prometheus package")
    home.mkdir(parents=True, exist_ok=True)
    for command in (["apt-get", "download", "prometheus"], None):
        if command is None:  # the package lists may be missing on a fresh machine
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
            command = ["apt-get", "download", "prometheus"]
        done = subprocess.run(command, cwd=home, capture_output=True, text=True, timeout=300)
        debs = sorted(home.glob("prometheus_*.deb"))
        if done.returncode == 0 and debs:
            break
    else:
        _unavailable(f"apt-get download prometheus failed: {done.stderr[-500:]}")
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(home / "root")], check=True, timeout=120)
    return binary


def test_rules_are_valid(promtool: Path) -> None:
    done = subprocess.run(
        [str(promtool), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


def test_rules_fire_when_they_should(promtool: Path) -> None:
    done = subprocess.run(
        [str(promtool), "test", "rules", RULE_TESTS.name],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_rules_name_only_metrics_choreo_exposes() -> None:
    exposed = set(TRACKER_METRICS)
    for family in ServiceMetrics("x").registry.collect():
        exposed.update(sample_name for sample_name in _family_names(family.name, family.type))
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    used = {name for rule in rules for name in re.findall(r"\bchoreo_[a-z_]+", rule["expr"])}
    assert used, "the rules name no choreo metric"
    assert used <= exposed, sorted(used - exposed)
    assert {rule["alert"] for rule in rules} >= {
        "ChoreoSagaStuck",
        "ChoreoDeadLettersGrowing",
        "ChoreoConsumerLagGrowing",
        "ChoreoStallsHigh",
        "ChoreoTrackerDown",
    }


def _family_names(name: str, kind: str) -> set[str]:
    if kind == "counter":
        return {f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


TRACKER_METRICS = _tracker_metrics()  # after _family_names, which it uses
