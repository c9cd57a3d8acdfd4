"""Child processes of the multi-process demo: start one, wait until it is ready, stop it
by its pid (never by name: other choreo processes on the machine are not ours)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from choreo.local import pdeathsig_preexec, tail, terminate


class ChildFailed(RuntimeError):
    """A child exited or did not become ready in time; the message ends with its log."""


@dataclass
class Child:
    name: str
    command: str  # as a person would type it, for messages
    proc: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ChildFailed(
                f"{self.name} exited with code {self.proc.returncode}; log {self.log}:\n"
                f"{tail(self.log)}"
            )

    def wait_for_output(self, text: str, timeout: float) -> None:
        """Until ``text`` appears in the child's log."""
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise ChildFailed(f"{self.name} not ready after {timeout:.0f}s:\n{tail(self.log)}")
            time.sleep(0.1)

    def wait_for_http(self, url: str, timeout: float) -> None:
        """Until ``url`` answers 200."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ChildFailed(f"{self.name}: {url} not up after {timeout:.0f}s:\n"
                                  f"{tail(self.log)}")  # fmt: skip
            time.sleep(0.2)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the services finish their batch and leave their groups), then SIGKILL."""
        if self.proc.poll() is None:
            terminate(self.proc.pid, timeout, self.proc)


def spawn_choreo(name: str, args: Sequence[str], env: Mapping[str, str], logs: Path) -> Child:
    """Run ``choreo ARGS`` with this interpreter, its output in ``logs/<name>.log``.

    The child dies with this process (PR_SET_PDEATHSIG on Linux), so an interrupted demo
    leaves nothing behind."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "choreo.cli.main", *args],
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches the runner, which stops us in order
            preexec_fn=pdeathsig_preexec(),
        )
    return Child(name, "choreo " + " ".join(args), proc, log)
