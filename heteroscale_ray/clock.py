"""Time as an injected dependency, so code that measures windows or ages can be tested without
sleeping.

- `Clock`: what such code needs, `now()` (wall time, epoch seconds: timestamps that travel
  between processes) and `monotonic()` (for intervals: windows, ages, uptimes).
- `WallClock`: the real clocks, the default everywhere.
- `VirtualClock`: stands still until a test calls `advance(seconds)`, which moves both readings.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "VirtualClock", "WallClock"]


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time in epoch seconds (comparable across processes)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never go backwards (for intervals only)."""
        ...


class WallClock:
    """The process's real clocks."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def __repr__(self) -> str:
        return "WallClock()"


class VirtualClock:
    """A clock that moves only when told to; both readings advance together."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = float(start)
        self._mono = 0.0

    def now(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (>= 0: neither reading may go backwards)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards ({seconds} s)")
        self._wall += seconds
        self._mono += seconds

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._wall}, monotonic={self._mono})"
