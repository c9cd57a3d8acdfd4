"""Real Kafka and Redis servers for development and tests, run as plain processes (no Docker).

`python -m choreo.local.kafka_broker up|down|status` and `python -m choreo.local.redis_server
up|down|status` start and stop them; the test suite uses the same classes.
"""
