"""A small asyncio TCP proxy that injects network faults between clients and one server.

    proxy = FaultProxy(("127.0.0.1", 9100), ("127.0.0.1", 9092))
    await proxy.start()
    proxy.delay = 0.2        # every chunk of bytes waits 0.2 s, each direction (order kept)
    proxy.blackhole = True   # bytes are accepted and held, nothing flows, nothing closes
    proxy.reset()            # every connection aborted with a TCP RST
    proxy.refuse = True      # new connections are reset at once
    await proxy.stop()

For Kafka the broker must advertise the proxy's address on the listener the client uses,
or the client would learn the broker's own address from metadata and go around the proxy
(``KafkaBroker(proxied_port=...)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class FaultProxy:
    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen, self.target = listen, target
        self.delay = 0.0
        self.blackhole = False
        self.refuse = False
        self.connections = 0
        self.resets = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, *self.listen)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.reset()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    def reset(self) -> int:
        """Abort every open connection with an RST (SO_LINGER 0); how many there were."""
        writers, self._open = list(self._open), set()
        for writer in writers:
            _abort(writer)
        self.resets += len(writers)
        return len(writers)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            _abort(writer)
            self.resets += 1
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        self.connections += 1
        self._open.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst, (writer, up_writer)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await src.read(65536):
                while self.blackhole:
                    await asyncio.sleep(0.05)
                if self.delay:
                    await asyncio.sleep(self.delay)
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in pair:  # one side gone: the other goes too
                if writer in self._open:
                    self._open.discard(writer)
                    with contextlib.suppress(OSError, RuntimeError):
                        writer.close()


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
