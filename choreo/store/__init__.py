"""Barrier records and the key-value effects they guard: memory and Redis."""
