"""Per-instance capacity under a latency target: the one capacity model of the project.

Evaluated on an `InstanceKind` (one model on `n_gpus` GPUs of one type, the simulator's own
vectorised roofline), so the simulator's routing, its oracle/static sizing (`sim/sizing.py`)
and the policy's roofline prior all read the same numbers. Build a kind per (model, GPU type,
role) with ``InstanceKind.build(get_profile(model), catalog[gpu], role.gpus_per_instance)``.

- `prefill_capacity`: cache-miss prompt tokens/s one prefill instance computes at a busy share.
  The simulator's prefill instance is a FIFO server running one prompt at a time, so at busy
  share u it computes u / (time of one prompt) prompts per second.
- `decode_capacity`: the largest batch whose step time stays within TBT SLO x margin, with the
  KV reservations and the sequence cap kept, and the tokens/s that batch makes.

Both are single operating points at mean lengths; sizing per tick over real requests is
`sim.sizing.decode_need`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heteroscale_ray.perf.instance_kind import InstanceKind

PREFILL_UTIL_TARGET = 0.8  # queueing headroom: an M/D/1 queue at 80% waits ~2 service times
DECODE_TBT_MARGIN = 0.7  # routing balance (sim ClusterSim.kv_full) and `decode_capacity`
SIZING_TBT_MARGIN = 0.85  # static/oracle sizing (sim/sizing.py) and `validate`: decode steps may
# take 85% of the TBT SLO; the rest absorbs the KV transfer and admission waits, which the
# measured TBT (first to last token) includes


@dataclass(frozen=True)
class DecodeCapacity:
    """Largest batch a decode instance runs within the TBT SLO, and the tokens/s it makes.

    ``feasible`` is False when even one sequence steps slower than the budget; ``batch`` is
    then 1 (the simulator still routes to such an instance) and ``step_s`` says by how much.
    """

    batch: int
    step_s: float
    tokens_per_s: float
    limited_by: str  # "tbt", "kv" or "seqs"
    feasible: bool = True


def decode_capacity(
    kind: InstanceKind,
    tbt_slo_s: float,
    mean_context: float,
    mean_reserve: float,
    margin: float = DECODE_TBT_MARGIN,
) -> DecodeCapacity:
    """Largest batch with step time <= margin x TBT SLO, KV and sequence caps kept.

    ``mean_context`` is the mean KV length of a running sequence (about input + output / 2);
    ``mean_reserve`` the KV tokens a request reserves at admission (input + output), which
    bounds the batch by KV memory. The simulator uses it to balance decode load.
    """
    by_kv = int(kind.kv_capacity_tokens // max(mean_reserve, 1.0))
    hi = max(1, min(kind.max_seqs, by_kv))
    limited = "kv" if by_kv < kind.max_seqs else "seqs"
    budget = tbt_slo_s * margin
    b = np.arange(1, hi + 1, dtype=float)
    steps = kind.step_seconds(b, b * mean_context)
    ok = np.flatnonzero(steps <= budget)
    feasible = len(ok) > 0
    if not feasible:
        best = 1
        limited = "tbt"
    else:
        best = int(ok[-1]) + 1
        if best < hi:
            limited = "tbt"
    step = float(steps[best - 1])
    return DecodeCapacity(best, step, best / step, limited, feasible)


def prefill_work_s(
    kind: InstanceKind, input_tokens: np.ndarray, cached: np.ndarray | float = 0.0
) -> np.ndarray:
    """Seconds of prefill each request costs on one instance of `kind` (cache misses only)."""
    inp = np.asarray(input_tokens, dtype=float)
    cached = np.minimum(np.asarray(cached, dtype=float), np.maximum(inp - 1, 0))
    return kind.prefill_seconds(inp - cached, cached)


def prefill_capacity(
    kind: InstanceKind,
    mean_input: float,
    busy_share: float = PREFILL_UTIL_TARGET,
    mean_cached: float = 0.0,
    sd_input: float = 0.0,
) -> float:
    """Cache-miss prefill tokens/s one instance sustains at ``busy_share`` of its time.

    For prompts of ``mean_input`` tokens (standard deviation ``sd_input``) of which
    ``mean_cached`` hit the prefix cache (they cost no FLOPs and do not count). Attention's
    FLOPs grow with the square of the length, so spread lengths cost more than the mean one:
    the mean prompt takes ``flops_per_pair * sd**2 / 2`` more FLOPs than a prompt of the mean
    length, exactly, while prompts are compute bound (all but the shortest are).
    """
    if mean_input <= 0:
        raise ValueError(f"mean_input must be > 0 (got {mean_input})")
    if not 0.0 < busy_share <= 1.0:
        raise ValueError(f"busy_share must be in (0, 1] (got {busy_share})")
    if sd_input < 0:
        raise ValueError(f"sd_input must be >= 0 (got {sd_input})")
    cached = min(max(mean_cached, 0.0), max(mean_input - 1.0, 0.0))
    seconds = float(prefill_work_s(kind, np.array([mean_input]), cached)[0])
    seconds += kind.flops_per_pair * sd_input**2 / 2 / kind.prefill_flops_s
    return busy_share * (mean_input - cached) / seconds
