"""The fault suite's scenarios are marked ``faults`` and skipped unless ``CHOREO_FAULTS=1``
(set by scripts/faults.sh); the smoke subset (marked ``faults_smoke``) always runs."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CHOREO_FAULTS") == "1":
        return
    skip = pytest.mark.skip(reason="the full fault suite runs with scripts/faults.sh")
    for item in items:
        marked = item.get_closest_marker("faults") is not None
        if marked and item.get_closest_marker("faults_smoke") is None:
            item.add_marker(skip)
