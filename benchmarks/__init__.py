"""Benchmarks of choreo, each against a baseline measured in the same run.

Run them with ``python -m benchmarks.run [--quick] [--kafka]``; see docs/benchmarks.md.
"""
