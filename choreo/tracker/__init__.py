"""The saga tracker: shells around the pure state machine (memory and faust)."""
