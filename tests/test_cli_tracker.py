"""``choreo tracker``: its state API is closed by default. Without ``--token`` (or
``CHOREO_TRACKER_TOKEN``) it generates a token and prints it; ``--no-auth`` opens it on a
loopback address only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from choreo.local import pdeathsig_preexec
from tests.cli_support import choreo

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent
CONTRACT = "services_demo.contract:order_saga"
URL_MARK = "state API on "
TOKEN_LINE = "choreo: state API token (generated): "


@pytest.fixture
def tracker(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[str]]]:
    """``choreo tracker`` (memory engine) with ``request.param`` as extra arguments;
    yields its API URL and the lines it printed up to the token's."""
    env = {k: v for k, v in os.environ.items() if k != "CHOREO_TRACKER_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "choreo.cli.main", "tracker", CONTRACT, "--engine", "memory",
         "--http", "127.0.0.1:0", *request.param],
        cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=pdeathsig_preexec(),
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if URL_MARK in line:
                lines.append(proc.stdout.readline().rstrip("\n"))
                break
        else:
            raise AssertionError(f"tracker exited with {proc.wait()}: {lines}")
        yield lines[-2].rsplit(URL_MARK, 1)[1].strip(), lines
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("tracker", [[]], indirect=True)
def test_a_token_is_generated_and_printed(
    tracker: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, lines = tracker
    assert lines[-1].startswith(TOKEN_LINE), lines
    token = lines[-1].removeprefix(TOKEN_LINE)
    assert len(token) >= 32
    assert status(f"{url}/sagas") == 401
    assert status(f"{url}/sagas", "wrong") == 401
    assert status(f"{url}/sagas", token) == 200
    assert status(f"{url}/healthz") == 200
    code, out, _ = choreo(capsys, "sagas", "list", "--tracker", url, "--token", token)
    assert (code, out) == (0, "0 of 0 saga(s)\n")


@pytest.mark.parametrize("tracker", [["--no-auth"]], indirect=True)
def test_no_auth_opens_it_on_loopback(tracker: tuple[str, list[str]]) -> None:
    url, lines = tracker
    assert lines[-1] == "choreo: the state API is open (--no-auth): no token needed"
    assert status(f"{url}/sagas") == 200


def test_no_auth_is_refused_beyond_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = choreo(
        capsys, "tracker", CONTRACT, "--engine", "memory", "--http", "0.0.0.0:0", "--no-auth"
    )
    assert (code, out) == (2, "")
    assert err.startswith("choreo: error: --no-auth is refused on 0.0.0.0")
    code, _, err = choreo(
        capsys, "tracker", CONTRACT, "--engine", "memory", "--no-auth", "--token", "t"
    )
    assert (code, err) == (2, "choreo: error: --no-auth and --token contradict each other\n")
