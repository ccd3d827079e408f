"""Pure decision core: (service spec, signals, counts, state, now) -> (decision, state).

No Ray, no clock, no I/O. The actors and the simulator call the very same ``decide``.
"""

from heteroscale_ray.policy.decide import decide
from heteroscale_ray.policy.types import Decision, PolicyState, Reason, RoleCounts, Signals

__all__ = ["Decision", "PolicyState", "Reason", "RoleCounts", "Signals", "decide"]
