"""Helpers of the CLI tests: run ``choreo`` in-process, read the API directly, poll.

The tracker the CLI talks to is a fixture in each test module (``served_in_thread`` from
``tests.procs.tracker_api``), so the same tests can run against another tracker that
serves the same API and seeds the same sagas.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from choreo.cli.main import main
from tests.procs.tracker_api import Served


def choreo(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``choreo ARGV``."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def at(served: Served, *argv: str) -> list[str]:
    """``argv`` pointed at ``served``."""
    extra = ["--tracker", served.url]
    if served.token:
        extra += [f"--token={served.token}"]  # a token may start with "-"
    return [*argv, *extra]


def api(served: Served, path: str) -> Any:
    request = urllib.request.Request(served.url + path)
    if served.token:
        request.add_header("Authorization", f"Bearer {served.token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    limit = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < limit, f"not true after {timeout}s"
        time.sleep(0.05)


class FakeTty:
    """A terminal on stdin that answers ``answer`` to the confirmation question."""

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def isatty(self) -> bool:
        return True

    def readline(self) -> str:
        return self.answer + "\n"
