"""docs/faults.md from a run of some scenarios keeps the other rows (no broker needed)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.faults import report

OLD = """# The fault-injection suite

## Latest results

2026-11-30 21:18 UTC; Linux, 2 cores; shared with other work while it ran.

| scenario | sagas | verdict |
|---|---|---|
| kill points | 200 | ok |
| poison | 200 | ok |

Columns: ...
"""


def test_a_partial_run_replaces_its_rows_and_keeps_the_others(tmp_path: Path) -> None:
    target = tmp_path / "faults.md"
    target.write_text(OLD)
    results = tmp_path / "results.jsonl"
    rows = [
        {"scenario": "poison", "seed": "13", "sagas": "200", "verdict": "FAIL: poison"},
        {"scenario": "poison", "seed": "14", "sagas": "200", "verdict": "ok"},
        {"scenario": "reordering", "seed": "13", "sagas": "200", "verdict": "ok"},
    ]
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert report.main(["--keep", str(results), str(target)]) == 0
    found = report.kept_rows(target.read_text())
    assert [(r["scenario"], r["seed"], r["verdict"]) for r in found] == [
        ("kill points", "13", "ok"),  # the old layout's rows: seed 13, the file's date
        ("poison", "13", "FAIL: poison"),  # replaced in place
        ("poison", "14", "ok"),
        ("reordering", "13", "ok"),
    ]
    assert found[0]["run"] == "2026-11-30 21:18 UTC"
    assert found[1]["run"] != found[0]["run"]
    assert "## Invariants checked after every scenario" in target.read_text()


def test_a_whole_run_writes_only_its_rows(tmp_path: Path) -> None:
    target = tmp_path / "faults.md"
    target.write_text(OLD)
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"scenario": "baseline", "seed": "13", "verdict": "ok"}) + "\n")
    assert report.main([str(results), str(target)]) == 0
    assert [r["scenario"] for r in report.kept_rows(target.read_text())] == ["baseline"]
