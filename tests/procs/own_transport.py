"""Run a service whose transport object is its own (a test's stalling or killing
subclass), until SIGTERM: ``Service.running`` starts only transports it opened itself."""

from __future__ import annotations

import asyncio
import signal

from choreo import Service
from choreo.transport.kafka import KafkaTransport


async def serve(app: Service) -> None:
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    transport = app.broker
    assert isinstance(transport, KafkaTransport)
    await transport.start()
    try:
        async with app.running():
            print("running", flush=True)
            await app.until_stopped(stopping)
    finally:
        await transport.stop()
    print("stopped cleanly", flush=True)
