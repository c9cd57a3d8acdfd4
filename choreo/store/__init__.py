"""Barrier records and the key-value effects they guard: memory, Redis and PostgreSQL
(whose barrier shares a transaction with the handler's own SQL: docs/postgres.md)."""
