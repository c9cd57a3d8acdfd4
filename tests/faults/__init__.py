"""The fault-injection suite (issue 13): scripts/faults.sh runs it all; the test command
runs its smoke subset."""
