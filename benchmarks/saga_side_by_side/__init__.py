"""The 3-step saga side by side: raw aiokafka relay, FastStream, choreo, choreo + tracker,
each step its own process, on one real Kafka broker and Redis. See ``orchestrate``.

Run with ``python -m benchmarks.saga_side_by_side [--quick | --profile]``.
"""
