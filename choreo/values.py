"""``value_type``: the decorator for the small immutable records of the hot path
(envelopes, records, barrier keys and results).

To mypy it is a frozen dataclass: assigning to a field is a type error, and the project
runs mypy strict. At run time it is a slotted dataclass without the frozen machinery,
because a frozen dataclass pays one ``object.__setattr__`` per field on every
construction: about 5 us for an envelope, several times per record. Instances hash by
value, as frozen ones do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, eq_default=True)
def value_type(cls: type[T]) -> type[T]:
    return dataclass(slots=True, unsafe_hash=True)(cls)
