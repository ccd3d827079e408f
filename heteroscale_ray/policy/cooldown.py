"""Cooldowns compare timestamps, never tick counts, so a drifting loop period cannot shorten them."""

from __future__ import annotations


def cooldown_left(now: float, since: float | None, cooldown_s: float) -> float:
    """Seconds still to wait; 0.0 once exactly ``cooldown_s`` have passed since ``since``."""
    if since is None:
        return 0.0
    return max(0.0, since + cooldown_s - now)
