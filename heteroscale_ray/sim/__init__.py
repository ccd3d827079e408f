"""Cluster simulator: replays request traces through the shared policy and placement core.

`engine` (the fluid tick model), `speed` (vectorised roofline timing), `actuator` (plans ->
simulated instances), `observe` (signals for autoscalers), `replay` (the loop and summary),
`sizing` (oracle/static capacity), `pdsweep` (P/D stress test), `commands` (CLI).
"""
