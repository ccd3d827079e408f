"""Cluster simulator: replays request traces through the shared policy, tick and placement core.

`cluster` (the fluid tick model; its pieces in `workload`, `instances`, `prefix_cache`,
`decode_phase`, `tick_record`), `actuator` (plans -> simulated instances), `observe` (signals
for autoscalers), `replay` (the loop), `summary` (the report), `sizing` (oracle/static sizing;
timing and per-instance capacity are `perf.instance_kind` / `perf.capacity`), `future_needs`
(that sizing on a simulator's own kinds), `pdsweep` (P/D stress test), `commands` and
`tuning_commands` (CLI; shared helpers in `cli_support`).
"""
