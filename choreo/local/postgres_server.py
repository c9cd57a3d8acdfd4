"""A real PostgreSQL server on a free loopback port, run as a plain process (no Docker).

    python -m choreo.local.postgres_server up|down|status|ensure [--dir DIR]

Uses Debian's PostgreSQL binaries (``/usr/lib/postgresql/<major>/bin``, or ``initdb`` on the
PATH); when they are missing and we are root on a Debian-like system the ``postgresql``
package is installed with apt-get (a cluster the package may start on 5432 is left alone).
``initdb`` makes a fresh cluster (user ``choreo``, trust authentication on loopback only, no
Unix socket) and ``postgres`` serves it on a free 127.0.0.1 port.

PostgreSQL refuses to run as root. Run as root, the server and ``initdb`` run as the
``postgres`` user (through ``setpriv``, which also sets the parent-death signal after the
change of user, since Linux clears it on one), and the cluster lives in a directory that user
can reach: ``/var/tmp/choreo-postgres-<hash of the run directory>``, wiped on each start and,
for a non-persistent server, on stop.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from choreo.local._process import (
    LocalServer,
    LocalServerError,
    LocalServerUnavailable,
    cache_dir,
    free_port,
    pid_alive,
    run_cli,
)

_INSTALL_HINT = "apt-get install postgresql"
USER = "choreo"
DATABASE = "postgres"


def find_bin_dir(*, install: bool = True) -> Path:
    """The directory holding ``initdb`` and ``postgres``, installing Debian's ``postgresql``
    package as root when they are missing."""
    found = _bin_dir()
    if found is not None:
        return found
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise LocalServerUnavailable(f"PostgreSQL not found; install it with: {_INSTALL_HINT}")
    _apt_install()
    found = _bin_dir()
    if found is None:
        raise LocalServerUnavailable(
            f"apt-get ran but initdb/postgres are still missing; try: {_INSTALL_HINT}"
        )
    return found


def _bin_dir() -> Path | None:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.insert(0, str(Path(on_path).resolve().parent))
    for candidate in candidates:
        path = Path(candidate)
        if all(os.access(path / tool, os.X_OK) for tool in ("initdb", "postgres")):
            return path
    return None


def _apt_install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    print("PostgreSQL not found; installing it with apt-get ...", file=sys.stderr)

    def run(command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=900, check=False
        )

    done = run(install)
    if done.returncode != 0:
        run(["apt-get", "update"])
        done = run(install)
    if done.returncode != 0:
        output = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise LocalServerUnavailable(f"`{_INSTALL_HINT}` failed:\n{output}")


class PostgresServer(LocalServer):
    """A PostgreSQL server bound to ``host`` on a free port. ``persist=False`` (tests) turns
    fsync off and removes the cluster on stop; with ``persist`` the cluster is kept across
    ``down``/``up`` and written durably (the barrier must not forget, docs/postgres.md)."""

    name = "postgres"
    stop_timeout = 20.0

    def __init__(
        self,
        run_dir: Path | str,
        host: str = "127.0.0.1",
        *,
        die_with_parent: bool = False,
        persist: bool = True,
    ) -> None:
        super().__init__(run_dir, die_with_parent=die_with_parent)
        self.host = host
        self.persist = persist
        self.port = 0
        self._bin: Path | None = None

    # -- where the cluster lives ------------------------------------------------------
    @property
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    @property
    def data_dir(self) -> Path:
        if not self._as_root:
            return self.run_dir / "data"
        digest = hashlib.sha1(str(self.run_dir).encode()).hexdigest()[:16]
        return Path("/var/tmp") / f"choreo-postgres-{digest}" / "data"

    @property
    def config_file(self) -> Path:
        # The data directory is named on the postmaster's command line (it keeps its argv),
        # which is what tells our server apart from any other.
        return self.data_dir

    def address(self) -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{DATABASE}"

    def ports(self) -> dict[str, int]:
        return {"postgres": self.port}

    def kept_entries(self) -> set[str]:
        return {"data"} if self.persist else set()

    def prepare_prerequisites(self) -> None:
        self._bin = find_bin_dir()

    def _as_postgres(self, argv: list[str]) -> list[str]:
        if not self._as_root:
            return argv
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise LocalServerUnavailable(
                "running as root, but there is no `postgres` user to run PostgreSQL as "
                f"({_INSTALL_HINT} creates it)"
            ) from exc
        wrap = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        if self.die_with_parent:
            wrap.append("--pdeathsig=KILL")
        return [*wrap, "--", *argv]

    def _initdb(self) -> None:
        assert self._bin is not None
        data = self.data_dir
        if self._as_root:
            holder = data.parent
            holder.mkdir(mode=0o700, exist_ok=True)
            entry = pwd.getpwnam("postgres")
            os.chown(holder, entry.pw_uid, entry.pw_gid)
        if (data / "PG_VERSION").exists():
            return  # a persistent cluster from an earlier `up`
        argv = [
            str(self._bin / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]
        if not self.persist:
            argv.append("--no-sync")
        done = subprocess.run(
            self._as_postgres(argv), capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise LocalServerError(f"initdb failed:\n{done.stdout}{done.stderr}")

    def configure(self) -> list[str]:
        assert self._bin is not None
        if not self.persist or not (self.data_dir / "PG_VERSION").exists():
            self._remove_cluster()
        self._initdb()
        self.port = free_port(self.host)
        argv = [
            str(self._bin / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
            "-c",
            "max_prepared_transactions=0",
        ]
        if not self.persist:
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            argv += ["-c", "full_page_writes=off"]
        return self._as_postgres(argv)

    def probe(self) -> bool:
        # A startup packet for our user; the server answers 'R' (authentication) once it
        # accepts connections, 'E' while it is still starting up.
        params = f"user\0{USER}\0database\0{DATABASE}\0\0".encode()
        body = (196608).to_bytes(4, "big") + params
        packet = (len(body) + 4).to_bytes(4, "big") + body
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(packet)
                return sock.recv(1)[:1] == b"R"
        except OSError:
            return False

    # -- stopping ---------------------------------------------------------------------
    def stop(self) -> bool:
        """A fast shutdown (SIGINT: sessions are ended, then a clean checkpoint); the base
        class's SIGTERM would be a smart shutdown waiting for every client to leave."""
        proc = self._proc
        pid = proc.pid if proc is not None and proc.poll() is None else self.running_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + self.stop_timeout
            while time.monotonic() < deadline and pid_alive(pid):
                if proc is not None and proc.poll() is not None:
                    break
                time.sleep(0.05)
        stopped = super().stop() or pid is not None
        if not self.persist:
            self._remove_cluster()
        return stopped

    def _remove_cluster(self) -> None:
        target = self.data_dir.parent if self._as_root else self.data_dir
        shutil.rmtree(target, ignore_errors=True)


def default_run_dir() -> Path:
    return cache_dir() / "run" / "postgres"


def main(argv: list[str] | None = None, prog: str = "choreo.local.postgres_server") -> int:
    return run_cli(prog, PostgresServer, default_run_dir(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
