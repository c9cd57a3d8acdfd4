"""The fault suite's scenarios are marked ``faults`` and skipped unless ``CHOREO_FAULTS=1``
(set by scripts/faults.sh); the smoke subset (marked ``faults_smoke``) always runs.

A test that takes ``seed`` runs once per seed of ``CHOREO_FAULTS_SEEDS`` (comma-separated,
``scripts/faults.sh --seeds 13,14,15``); 13 alone by default."""

from __future__ import annotations

import os

import pytest

DEFAULT_SEEDS = "13"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        raw = os.environ.get("CHOREO_FAULTS_SEEDS", "") or DEFAULT_SEEDS
        seeds = [int(part) for part in raw.split(",") if part.strip()]
        metafunc.parametrize("seed", seeds, ids=[f"seed{n}" for n in seeds])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CHOREO_FAULTS") == "1":
        return
    skip = pytest.mark.skip(reason="the full fault suite runs with scripts/faults.sh")
    for item in items:
        marked = item.get_closest_marker("faults") is not None
        if marked and item.get_closest_marker("faults_smoke") is None:
            item.add_marker(skip)
