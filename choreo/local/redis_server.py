"""A real Redis server on a free port, run as a plain process (no Docker).

    python -m choreo.local.redis_server up|down|status [--dir DIR]

Uses the system's `redis-server`; when it is missing and we are root on a Debian-like system it
is installed with apt-get. A Redis service the package may start on 6379 is left alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from choreo.local._process import (
    LocalServer,
    LocalServerUnavailable,
    cache_dir,
    run_cli,
)

_INSTALL_HINT = "apt-get install redis-server"


def find_redis_server(*, install: bool = True) -> str:
    """Path of `redis-server`, installing the Debian package as root when it is missing."""
    found = shutil.which("redis-server") or _existing("/usr/bin/redis-server")
    if found is not None:
        return found
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise LocalServerUnavailable(f"redis-server not found; install it with: {_INSTALL_HINT}")
    _apt_install()
    found = shutil.which("redis-server") or _existing("/usr/bin/redis-server")
    if found is None:
        raise LocalServerUnavailable(
            f"apt-get ran but redis-server is still missing; try: {_INSTALL_HINT}"
        )
    return found


def _existing(path: str) -> str | None:
    return path if os.access(path, os.X_OK) else None


def _apt_install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]
    print("redis-server not found; installing it with apt-get ...", file=sys.stderr)

    def run(command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=600, check=False
        )

    # Package lists may be missing or stale; refresh them only when the plain install fails.
    done = run(install)
    if done.returncode != 0:
        run(["apt-get", "update"])
        done = run(install)
    if done.returncode != 0:
        output = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise LocalServerUnavailable(f"`{_INSTALL_HINT}` failed:\n{output}")


class RedisServer(LocalServer):
    """A Redis server bound to `host` on a free port. With ``persist`` (the default) it
    keeps an append-only file fsynced every second, the setting choreo's barrier needs
    (docs/delivery.md, "The store must not forget"), and a restart in the same directory
    comes back with its data on its port; ``persist=False`` is for tests."""

    name = "redis"
    stop_timeout = 10.0

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
        self._binary = ""

    @property
    def config_file(self) -> Path:
        return self.run_dir / "redis.conf"

    def address(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def ports(self) -> dict[str, int]:
        return {"redis": self.port}

    def kept_entries(self) -> set[str]:
        return {"data"} if self.persist else set()

    def restarts_in_place(self) -> bool:
        return True  # on its port, even without persistence (then empty: a lost store)

    def prepare_prerequisites(self) -> None:
        self._binary = find_redis_server()

    def configure(self) -> list[str]:
        self.port = self.sticky_port("redis", self.host)
        data = self.run_dir / "data"
        data.mkdir(exist_ok=True)
        durability = (
            ["appendonly yes", "appendfsync everysec", "save 3600 1 300 100 60 10000"]
            if self.persist
            else ["appendonly no", 'save ""']
        )
        lines = [
            f"port {self.port}",
            f"bind {self.host}",
            "protected-mode yes",
            "daemonize no",
            f'dir "{data}"',
            'logfile ""',
            *durability,
            # Evicting a barrier record (or the epoch key) would be silent data loss.
            "maxmemory-policy noeviction",
            # Redis overwrites its argv with a title; keep the config path in it so that
            # /proc/<pid>/cmdline still tells our server apart from any other redis.
            'proc-title-template "{title} {listen-addr} {server-mode} {config-file}"',
        ]
        self.config_file.write_text("\n".join(lines) + "\n")
        return [self._binary, str(self.config_file)]

    def probe(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def default_run_dir() -> Path:
    return cache_dir() / "run" / "redis"


def main(argv: list[str] | None = None, prog: str = "choreo.local.redis_server") -> int:
    return run_cli(prog, RedisServer, default_run_dir(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
