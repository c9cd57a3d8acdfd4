"""A real single-node Apache Kafka broker (KRaft) run from Maven Central jars, without Docker.

    python -m choreo.local.kafka_broker up|down|status [--dir DIR] [--fresh]

``up`` on a directory that holds an earlier broker's data restarts that broker in place:
same data, cluster id and ports (``--fresh`` discards them). From Python the same is
``KafkaBroker(run_dir, in_place=True)``; without it every ``start`` formats a new cluster.

The jars are resolved once with `mvn` into `~/.cache/choreo/kafka-<version>/libs` (or under
`$CHOREO_CACHE_DIR`), using a Maven repository inside that cache so nothing else is touched.
"""

from __future__ import annotations

import base64
import fcntl
import importlib.resources
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from choreo.local._process import (
    LocalServer,
    LocalServerError,
    LocalServerUnavailable,
    cache_dir,
    pdeathsig_preexec,
    run_cli,
    tail,
)

KAFKA_VERSION = "3.9.1"
NODE_ID = 1
_COMPLETE = ".complete"


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    if candidate is not None and candidate.is_file():
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise LocalServerUnavailable(
            "java not found: Kafka needs a Java 17+ runtime "
            "(e.g. apt-get install openjdk-17-jre-headless)"
        )
    return found


def kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """The directory of Kafka's jars, resolving them from Maven Central on first use."""
    home = cache_dir() / f"kafka-{version}"
    libs = home / "libs"
    if (libs / _COMPLETE).exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    # Two test sessions may resolve at once; the second waits and then finds the marker.
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (libs / _COMPLETE).exists():
            _resolve(home, libs, version)
    return libs


def _resolve(home: Path, libs: Path, version: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalServerUnavailable(
            f"Kafka {version} jars are not cached and mvn is not installed "
            "(e.g. apt-get install maven)"
        )
    _java()
    partial = home / "libs.partial"
    for stale in (partial, libs):
        shutil.rmtree(stale, ignore_errors=True)
    # mvn must not write next to the packaged pom (site-packages may be read-only).
    pom = home / "pom.xml"
    pom.write_bytes(importlib.resources.files("choreo.local").joinpath("pom.xml").read_bytes())
    command = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        f"-Dmaven.repo.local={home / 'maven-repo'}",
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={partial}",
    ]
    print(f"resolving Kafka {version} jars from Maven Central into {libs} ...", file=sys.stderr)
    started = time.monotonic()
    try:
        # If we are killed, mvn must not live on and write into a directory a rerun reuses.
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            preexec_fn=pdeathsig_preexec(),
        )
    except subprocess.TimeoutExpired as exc:
        raise LocalServerUnavailable(f"mvn did not finish in {exc.timeout:.0f}s") from None
    if done.returncode != 0 or not (partial / f"kafka_2.13-{version}.jar").exists():
        output = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise LocalServerUnavailable(
            f"could not resolve Kafka {version} jars with mvn (exit {done.returncode}):\n{output}"
        )
    (partial / _COMPLETE).write_text(f"{time.time()}\n")
    partial.rename(libs)
    elapsed = time.monotonic() - started
    print(f"resolved Kafka {version} jars in {elapsed:.1f}s", file=sys.stderr)


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, base64url without padding (as StorageTool makes)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # a leading dash would read as a CLI option
            return text


class KafkaBroker(LocalServer):
    """Single-node KRaft broker and controller in one JVM, bound to `host` on free ports."""

    name = "kafka"

    def __init__(
        self,
        run_dir: Path | str,
        host: str = "127.0.0.1",
        *,
        die_with_parent: bool = False,
        heap: str = "512m",
        sasl_users: Mapping[str, str] | None = None,
        in_place: bool = False,
        proxied_port: int | None = None,
    ) -> None:
        """``sasl_users`` (user -> password) adds a SASL_PLAINTEXT listener with the PLAIN
        mechanism beside the plaintext one, so clients' SASL settings can be tested.
        ``in_place``: a start finding an earlier broker's data in ``run_dir`` (this
        object's, after ``stop``/``kill``, or a previous run's) restarts that broker:
        same log directory, cluster id and ports, so its clients reconnect.
        ``proxied_port`` adds a PLAINTEXT listener (``proxied_address()``) that advertises
        ``host:proxied_port`` instead of its own address: clients bootstrapping through a
        proxy on that port keep going through it for every connection."""
        super().__init__(run_dir, die_with_parent=die_with_parent)
        self.in_place = in_place
        self.host = host
        self.heap = heap
        self.sasl_users = dict(sasl_users or {})
        self.port = 0
        self.controller_port = 0
        self.sasl_port = 0
        self.proxied_port = proxied_port
        self.proxied_target = 0
        self._java = ""
        self._libs = Path()

    @property
    def config_file(self) -> Path:
        return self.run_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "kafka.log"

    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def sasl_address(self) -> str:
        if not self.sasl_users:
            raise LocalServerError("this broker has no SASL listener (no sasl_users given)")
        return f"{self.host}:{self.sasl_port}"

    def proxied_address(self) -> str:
        """Where a proxy on ``proxied_port`` forwards to."""
        if self.proxied_port is None:
            raise LocalServerError("this broker has no proxied listener (no proxied_port)")
        return f"{self.host}:{self.proxied_target}"

    def ports(self) -> dict[str, int]:
        ports = {"broker": self.port, "controller": self.controller_port}
        if self.sasl_users:
            ports["sasl"] = self.sasl_port
        if self.proxied_port is not None:
            ports["proxied"] = self.proxied_target
        return ports

    def kept_entries(self) -> set[str]:
        return {"data"} if self.in_place else set()

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    def prepare_prerequisites(self) -> None:
        self._java = _java()
        self._libs = kafka_libs()

    def configure(self) -> list[str]:
        self.port = self.sticky_port("broker", self.host)
        self.controller_port = self.sticky_port("controller", self.host)
        self.sasl_port = self.sticky_port("sasl", self.host) if self.sasl_users else 0
        if self.proxied_port is not None:
            self.proxied_target = self.sticky_port("proxied", self.host)
        log4j = self.run_dir / "log4j.properties"
        log4j.write_text(_log4j_properties(self.log_file))
        self.config_file.write_text(self._server_properties())
        java = [
            self._java,
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{log4j}",
            f"-Dkafka.logs.dir={self.run_dir}",
            "-cp",
            f"{self._libs}/*",
        ]
        if (self.data_dir / "meta.properties").exists():
            return [*java, "kafka.Kafka", str(self.config_file)]  # formatted: in place
        fmt = [*java, "kafka.tools.StorageTool", "format", "-t", _cluster_id()]
        done = subprocess.run(
            [*fmt, "-c", str(self.config_file)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            preexec_fn=pdeathsig_preexec(),
        )
        if done.returncode != 0:
            raise LocalServerError(f"formatting Kafka storage failed:\n{done.stdout}{done.stderr}")
        return [*java, "kafka.Kafka", str(self.config_file)]

    def probe(self) -> bool:
        return metadata_lists_broker(self.host, self.port, NODE_ID)

    def diagnostics(self) -> str:
        return "\n".join(filter(None, [tail(self.output_file), tail(self.log_file)]))

    def _server_properties(self) -> str:
        host, port, cport = self.host, self.port, self.controller_port
        settings = {
            "process.roles": "broker,controller",
            "node.id": NODE_ID,
            "controller.quorum.voters": f"{NODE_ID}@{host}:{cport}",
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": self.data_dir,
            "num.partitions": 1,
            "default.replication.factor": 1,
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": 1,
            # One partition instead of 50 makes the first consumer group join much faster.
            "offsets.topic.num.partitions": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 1,
            "group.initial.rebalance.delay.ms": 0,
            "log.segment.bytes": 16 * 1024 * 1024,
            "num.network.threads": 2,
            "num.io.threads": 4,
        }
        if self.sasl_users:
            sasl = f"SASL_PLAINTEXT://{host}:{self.sasl_port}"
            users = " ".join(f'user_{u}="{p}"' for u, p in self.sasl_users.items())
            settings |= {
                "listeners": f"{settings['listeners']},{sasl}",
                "advertised.listeners": f"{settings['advertised.listeners']},{sasl}",
                "listener.security.protocol.map": (
                    f"{settings['listener.security.protocol.map']},SASL_PLAINTEXT:SASL_PLAINTEXT"
                ),
                "sasl.enabled.mechanisms": "PLAIN",
                "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
                    f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
                ),
            }
        if self.proxied_port is not None:
            settings |= {
                "listeners": f"{settings['listeners']},PROXIED://{host}:{self.proxied_target}",
                "advertised.listeners": (
                    f"{settings['advertised.listeners']},PROXIED://{host}:{self.proxied_port}"
                ),
                "listener.security.protocol.map": (
                    f"{settings['listener.security.protocol.map']},PROXIED:PLAINTEXT"
                ),
            }
        return "".join(f"{key}={value}\n" for key, value in settings.items())


def _log4j_properties(log_file: Path) -> str:
    return (
        "log4j.rootLogger=WARN, file\n"
        "log4j.appender.file=org.apache.log4j.FileAppender\n"
        f"log4j.appender.file.File={log_file}\n"
        "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        # The one INFO line worth keeping: it says when the broker finished starting.
        "log4j.logger.kafka.server.KafkaRaftServer=INFO\n"
    )


def metadata_lists_broker(host: str, port: int, node_id: int, timeout: float = 1.0) -> bool:
    """True once the broker answers a Metadata request that lists `node_id` as alive.

    A KRaft broker accepts connections before it is unfenced; only an unfenced broker appears
    in its own metadata, and only then can it take produce requests with acks=all.
    """
    client = b"choreo-probe"
    # Metadata v0: api_key 3, version 0, correlation id 1, client id, empty topic list.
    request = struct.pack(">hhih", 3, 0, 1, len(client)) + client + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            response = _recv_exact(sock, size)
        correlation, brokers = struct.unpack_from(">ii", response, 0)
        offset = 8
        for _ in range(brokers):
            (node,) = struct.unpack_from(">i", response, offset)
            (host_len,) = struct.unpack_from(">h", response, offset + 4)
            offset += 4 + 2 + host_len + 4
            if node == node_id and correlation == 1:
                return True
    except (OSError, struct.error):
        return False
    return False


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks += chunk
    return bytes(chunks)


def default_run_dir() -> Path:
    return cache_dir() / "run" / "kafka"


def main(argv: list[str] | None = None, prog: str = "choreo.local.kafka_broker") -> int:
    def factory(run_dir: Path) -> KafkaBroker:
        return KafkaBroker(run_dir, in_place=True)

    return run_cli(prog, factory, default_run_dir(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
