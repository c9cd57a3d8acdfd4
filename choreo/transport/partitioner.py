"""Kafka's default partitioner (murmur2 of the key), so the memory transport places a
gid in the same partition number the Java and aiokafka clients would."""

from __future__ import annotations

import functools


# Sagas send several records per gid; the pure-Python hash is worth remembering.
@functools.lru_cache(maxsize=65_536)
def murmur2(data: bytes) -> int:
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    end = length - length % 4
    for i in range(0, end, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    extra = length % 4
    if extra >= 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(key: bytes | None, partitions: int, counter: int = 0) -> int:
    if key is None:
        return counter % partitions
    return (murmur2(key) & 0x7FFFFFFF) % partitions
