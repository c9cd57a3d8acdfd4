"""The side-by-side saga benchmark runs end to end on the real broker and Redis, in its
smallest mode (raw relay and choreo, one short round each). No timing is asserted:
speed is measured by the benchmark, never by a test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.saga_side_by_side.orchestrate import main
from choreo.local.kafka_broker import KafkaBroker

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_smallest_mode_runs_raw_and_choreo(
    kafka_broker: KafkaBroker, redis_url: str, tmp_path: Path
) -> None:
    output = tmp_path / "result.json"
    code = main(
        [
            "--smoke",
            "--systems", "raw,choreo",
            "--kafka", kafka_broker.address(),
            "--redis", redis_url,
            "--kafka-pid", str(kafka_broker.running_pid()),
            "--latency-rate", "40",
            "--output", str(output),
        ]
    )  # fmt: skip
    report = json.loads(output.read_text())
    results = report["results"]
    assert code == 0, [r.get("error") for r in results]
    assert [r["system"] for r in results] == ["raw", "choreo"]
    for result in results:
        assert result["sagas_per_second"] > 0
        # every saga of the latency window completed, and every publish was acknowledged
        assert result["latency"]["count"] > 0
        assert result["latency_rate_target"] == 40  # pinned, not half of saturation
        assert result["latency"]["missing"] == 0
        assert result["send_errors"] == 0
        assert result["cpu_saturation"]["kafka"] is not None
        assert all(result["cpu_saturation"][step] is not None for step in ("step1", "step2"))
        assert result["exit_codes"] == {"step1": 0, "step2": 0, "step3": 0}
    assert report["ratios"]["c/a (choreo / raw relay)"] > 0
