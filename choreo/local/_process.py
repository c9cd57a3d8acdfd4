"""Process plumbing shared by the local Kafka broker and Redis server.

A server lives in a run directory that holds its config, logs, data, a pid file and a JSON state
file. A pid is only ever signalled after checking that `/proc/<pid>/cmdline` names this run
directory's config file, so a recycled pid or somebody else's server is never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

_MARKER_FILE = ".choreo-local"
_PR_SET_PDEATHSIG = 1


class LocalServerError(RuntimeError):
    """A local server failed to start, to become ready, or to stop."""


class LocalServerUnavailable(LocalServerError):
    """A prerequisite (java, mvn, redis-server, network) is missing; nothing was started."""


def cache_dir() -> Path:
    """Root of choreo's caches and run directories; outside any work tree on purpose."""
    override = os.environ.get("CHOREO_CACHE_DIR")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "choreo"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_bindable(host: str, port: int) -> bool:
    """True if nothing listens on ``host:port`` (a server's own port, just released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def pid_runs(pid: int, marker: str) -> bool:
    """True if `pid` is alive and its command line names `marker` as a whole word."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # Redis rewrites its argv into one space-separated title, so match on both separators.
    words = " " + raw.replace(b"\0", b" ").decode(errors="replace") + " "
    return f" {marker} " in words and pid_alive(pid)


def terminate(pid: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Reaps `proc` when it is our child."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
                return
        else:
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not pid_alive(pid):
                    return
                time.sleep(0.05)
    raise LocalServerError(f"process {pid} survived SIGKILL")


def pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when the parent thread dies.

    The signal follows the *thread* that forked, so servers must be started from a thread that
    lives as long as the server (pytest's main thread does). None where Linux's prctl is missing.
    """
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class LocalServer(ABC):
    """One server process in its own run directory; subclasses say how to configure and probe it.

    `die_with_parent=True` is for test suites: the server is killed with the process that
    started it. Without it the server outlives the command (`up`), and `down` stops it by pid.
    """

    name: ClassVar[str]
    """Short name used for file names and messages, e.g. "kafka"."""
    stop_timeout: ClassVar[float] = 20.0

    def __init__(self, run_dir: Path | str, *, die_with_parent: bool = False) -> None:
        self.run_dir = Path(run_dir).expanduser().resolve()
        self.die_with_parent = die_with_parent
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def state_file(self) -> Path:
        return self.run_dir / f"{self.name}.json"

    @property
    def output_file(self) -> Path:
        return self.run_dir / f"{self.name}.out"

    @property
    @abstractmethod
    def config_file(self) -> Path:
        """The config file named on the command line; it identifies our process."""

    @abstractmethod
    def prepare_prerequisites(self) -> None:
        """Find or fetch what the server needs; raises LocalServerUnavailable. Not timed."""

    @abstractmethod
    def configure(self) -> list[str]:
        """Pick ports, write config into the fresh run directory, return the command line."""

    @abstractmethod
    def probe(self) -> bool:
        """One short readiness check against the running server."""

    @abstractmethod
    def address(self) -> str:
        """What clients connect to, e.g. a bootstrap string or URL."""

    def ports(self) -> dict[str, int]:
        """The ports the server listens on, recorded in the state file."""
        return {}

    def kept_entries(self) -> set[str]:
        """Names in the run directory that survive a restart (persistent data)."""
        return set()

    @property
    def ports_file(self) -> Path:
        return self.run_dir / f"{self.name}.ports.json"

    def restarts_in_place(self) -> bool:
        """Whether a restart in this directory comes back on the same ports (by default:
        when it keeps its data)."""
        return bool(self.kept_entries())

    def sticky_port(self, role: str, host: str = "127.0.0.1") -> int:
        """A server restarting in place comes back where it was: the port ``role`` had at
        the last start in this directory, if it can be bound again; else a free port."""
        if self.restarts_in_place():
            try:
                saved = json.loads(self.ports_file.read_text()).get(role)
            except (OSError, ValueError, AttributeError):
                saved = None
            if isinstance(saved, int) and port_bindable(host, saved):
                return saved
        return free_port(host)

    def diagnostics(self) -> str:
        return tail(self.output_file)

    def start(self, timeout: float = 90.0, *, fresh: bool = False) -> str:
        """Start the server; what ``kept_entries`` names (its data) survives from the last
        run in this directory, unless ``fresh``, and then it listens where it did."""
        if self._proc is not None and self._proc.poll() is None:
            raise LocalServerError(f"{self.name} is already running (pid {self._proc.pid})")
        self.prepare_prerequisites()
        self.stop()  # a server left behind in this directory by a killed run
        started = time.monotonic()
        self._reset_run_dir(fresh=fresh)
        argv = self.configure()
        if self.restarts_in_place():
            self.ports_file.write_text(json.dumps(self.ports()) + "\n")
        preexec = pdeathsig_preexec() if self.die_with_parent else None
        with self.output_file.open("ab") as out:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C aimed at the caller must not reach it
                preexec_fn=preexec,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        state = {
            "pid": self._proc.pid,
            "address": self.address(),
            "ports": self.ports(),
            "started_at": time.time(),
            "startup_seconds": round(self.startup_seconds, 3),
            "command": argv,
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")
        return self.address()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise LocalServerError(
                    f"{self.name} exited with code {self._proc.returncode} while starting; "
                    f"see {self.run_dir}\n{self.diagnostics()}"
                )
            if self.probe():
                return
            if time.monotonic() > deadline:
                raise LocalServerError(
                    f"{self.name} not ready after {timeout:.0f}s; see {self.run_dir}\n"
                    f"{self.diagnostics()}"
                )
            time.sleep(0.05)

    def running_pid(self) -> int | None:
        """The pid recorded in the run directory, if that process is still our server."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_runs(pid, str(self.config_file)) else None

    def state(self) -> dict[str, Any] | None:
        """The JSON state of a running server, or None when none runs here."""
        if self.running_pid() is None:
            return None
        try:
            state: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return state

    def stop(self) -> bool:
        """Stop the server this object started, else the one recorded in the run directory."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            was_running = proc.poll() is None
            if was_running:
                terminate(proc.pid, self.stop_timeout, proc)
            if self.running_pid() is None:
                self.pid_file.unlink(missing_ok=True)
            return was_running
        pid = self.running_pid()
        if pid is None:
            return False
        terminate(pid, self.stop_timeout)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the server this object started (a crash: no clean shutdown), and reap it."""
        if self._proc is None:
            raise LocalServerError(f"{self.name} was not started by this object")
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

    def pause(self) -> None:
        """SIGSTOP the server this object started: it holds its connections and answers
        nothing until ``resume``."""
        self._signal_own(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_own(signal.SIGCONT)

    def _signal_own(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise LocalServerError(f"{self.name} is not running under this object")
        os.kill(self._proc.pid, sig)

    def _reset_run_dir(self, *, fresh: bool = False) -> None:
        marker = self.run_dir / _MARKER_FILE
        if self.run_dir.exists() and any(self.run_dir.iterdir()) and not marker.exists():
            raise LocalServerError(
                f"refusing to wipe {self.run_dir}: it was not created by choreo; "
                "pass an empty or new directory"
            )
        keep = {_MARKER_FILE} if fresh else self.kept_entries() | {_MARKER_FILE}
        if self.restarts_in_place() and not fresh:
            keep.add(self.ports_file.name)
        if self.run_dir.exists():
            for entry in self.run_dir.iterdir():
                if entry.name in keep:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        marker.touch()


def run_cli(
    prog: str,
    factory: Callable[[Path], LocalServer],
    default_dir: Path,
    argv: list[str] | None,
) -> int:
    """`up | down | status | ensure [--dir DIR]` for one kind of local server; `ensure`
    only installs or resolves what the server needs (apt package, jars)."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("command", choices=["up", "down", "status", "ensure"])
    parser.add_argument("--dir", type=Path, default=default_dir, help=f"default: {default_dir}")
    parser.add_argument("--fresh", action="store_true",
                        help="up: discard the data of an earlier run in --dir")  # fmt: skip
    args = parser.parse_args(argv)
    server = factory(args.dir)
    try:
        if args.command == "ensure":
            server.prepare_prerequisites()
            print(f"{server.name}: prerequisites in place")
            return 0
        if args.command == "up":
            state = server.state()
            if state is not None:
                print(state["address"])
                print(f"{server.name} already running (pid {state['pid']})", file=sys.stderr)
                return 0
            address = server.start(fresh=args.fresh)
            print(address)
            print(
                f"{server.name} started in {server.startup_seconds:.2f}s "
                f"(pid {server.running_pid()}, dir {server.run_dir})",
                file=sys.stderr,
            )
            return 0
        if args.command == "down":
            stopped = server.stop()
            print(f"{server.name} stopped" if stopped else f"{server.name} was not running")
            return 0
        state = server.state()
        if state is None:
            print(f"{server.name} not running")
            return 1
        print(f"{server.name} running at {state['address']} (pid {state['pid']})")
        return 0
    except LocalServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
