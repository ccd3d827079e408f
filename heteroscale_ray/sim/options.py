"""How a replay runs: the options every policy's replay shares.

Its own module so that what the replay loop calls (the look-ahead's needs, the summary) can
name the options without importing the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from heteroscale_ray.perf.capacity import PREFILL_UTIL_TARGET, SIZING_TBT_MARGIN


@dataclass(frozen=True)
class ReplayOptions:
    """How a replay runs; defaults are ours (the paper publishes none) and reports list them."""

    policy: str = "heteroscale"
    control_period_s: float = 15.0  # every autoscaler is asked this often (HPA's default sync)
    window_s: float = 30.0  # signals are averaged over this much past time
    tick_s: float = 1.0
    startup_s: float = 90.0
    topology_aware: bool = True
    hpa_target: float = 0.6
    serve_target_ongoing: float = 2.0
    static_bin_s: float = 15.0  # static provisioning covers the peak of these bins
    sizing_tbt_margin: float = SIZING_TBT_MARGIN  # oracle/static: decode steps <= this x TBT SLO
    sizing_prefill_util: float = PREFILL_UTIL_TARGET  # oracle/static: prefill busy share
    # HeteroScale's soft scale-in (the control plane's --soft-window): removed instances leave
    # routing, keep their GPUs for this long, and come back if an SLO breaks. 0: stop at once.
    soft_window_s: float = 60.0
