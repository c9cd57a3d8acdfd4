"""The CLI's rough edges, smoothed: ``--tracker`` before the command, ``HOST:PORT``
without a scheme, a clear refusal where no tracker is used, and a warning when
``choreo run`` runs a service on the in-process broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_support import choreo
from tests.procs.tracker_api import Served, served_in_thread

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with served_in_thread() as served:
        yield served


def test_tracker_before_the_command_and_without_a_scheme(
    capsys: pytest.CaptureFixture[str], served: Served
) -> None:
    bare = served.url.removeprefix("http://")
    expected = choreo(capsys, "sagas", "list", "--json", "--tracker", served.url)
    assert expected[0] == 0, expected
    for argv in (
        ["--tracker", served.url, "sagas", "list", "--json"],
        ["--tracker", bare, "sagas", "list", "--json"],
        ["sagas", "list", "--json", "--tracker", bare],
    ):
        code, out, err = choreo(capsys, *argv)
        assert code == 0, (argv, err)
        assert out == expected[1], argv


def test_tracker_refused_where_no_tracker_is_used(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = choreo(capsys, "--tracker", "127.0.0.1:8088", "graph", "x:y")
    assert code == 2
    assert "`choreo graph` does not talk to a tracker" in err


def test_choreo_run_on_memory_warns_that_nothing_else_sees_it(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "choreo.cli.main", "run", "tests.procs.svcapi_app:app"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while "running" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    text = log.read_text()
    assert "runs on memory://, a broker only this process sees" in text, text
    assert process.returncode == 0, text


def test_choreo_dev_help_names_itself(capsys: pytest.CaptureFixture[str]) -> None:
    for server in ("kafka", "redis", "postgres"):
        with pytest.raises(SystemExit) as exit_:
            choreo(capsys, "dev", server, "--help")
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: choreo dev {server} "), out
