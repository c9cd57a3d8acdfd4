"""``choreo new`` writes a saga package whose own tests pass as written, on the in-memory
transport and on real Kafka + Redis by the documented switch, and whose code is ruff-clean
and passes mypy --strict."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_support import choreo

VENV_BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def _pytest(where: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "shop"],
        cwd=where, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(where), **env},
    )  # fmt: skip


def test_the_scaffold_passes_its_own_tests_and_the_checkers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = choreo(capsys, "new", "shop", "--dir", str(tmp_path))
    assert code == 0, err
    assert "pytest shop" in out
    done = _pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
    lint = subprocess.run([str(VENV_BIN / "ruff"), "check", "--isolated", "shop"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert lint.returncode == 0, lint.stdout
    types = subprocess.run(
        [str(VENV_BIN / "mypy"), "--strict", "--ignore-missing-imports", "--follow-imports=silent",
         "shop"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        # The editable install's import hook is invisible to mypy: point it at the source.
        env={**os.environ, "MYPYPATH": os.pathsep.join([str(tmp_path), str(ROOT)])},
    )  # fmt: skip
    assert types.returncode == 0, types.stdout


def test_refusals(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert choreo(capsys, "new", "Bad-Name", "--dir", str(tmp_path))[0] == 2
    assert choreo(capsys, "new", "class", "--dir", str(tmp_path))[0] == 2
    assert choreo(capsys, "new", "shop", "--dir", str(tmp_path))[0] == 0
    code, _, err = choreo(capsys, "new", "shop", "--dir", str(tmp_path))
    assert code == 2
    assert "exists" in err


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
def test_the_scaffold_runs_on_kafka_by_the_switch(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    assert choreo(capsys, "new", "shop", "--dir", str(tmp_path))[0] == 0
    done = _pytest(
        tmp_path, CHOREO_TEST_BROKER=f"kafka://{kafka_bootstrap}", CHOREO_TEST_STORE=redis_url
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
