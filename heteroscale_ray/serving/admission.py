"""The order held prefill work leaves the ingress in: the real Router's and the simulator's.

Under overload, first come, first served makes every request late: each one waits behind the
whole backlog, so once the backlog is longer than the TTFT SLO nobody makes it. The ingress
offers a request ahead of the others only while it can still make its SLO, that is while it
has waited at most half of it (the other half is for the work it finds queued at an instance
and its own prefill); past that it waits behind the fresh ones. It still runs as soon as there
is room: none is dropped for it. On the real path a request near the ingress's prefill timeout
goes first again, so the order never turns a late request into a failed one.

Pure (asyncio, no Ray): `PrefillGate` is the Router's, `on_time` the simulator's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ON_TIME_SHARE = 0.5  # of the TTFT SLO a request may wait and still go ahead of fresh ones
CALLS_PER_REPLICA = 2  # prefill calls the ingress lets one replica hold: one running, one next


def on_time(waited_s: np.ndarray, ttft_slo_s: np.ndarray | float) -> np.ndarray:
    """Whether each held request can still make its TTFT SLO (and so goes ahead)."""
    return waited_s <= ON_TIME_SHARE * ttft_slo_s


@dataclass(eq=False)
class _Waiter:
    arrival: float  # the request's arrival, on the gate's clock
    on_time_until: float  # past this it waits behind the fresh ones
    first_after: float  # past this it goes first (the prefill timeout is near)
    granted: asyncio.Future[None]


class PrefillGate:
    """At most `calls_per_replica` prefill calls per replica of a DG leave the ingress at once;
    the rest wait here, in the module's order, where Serve's handle would hold them first come,
    first served. One gate per ingress replica; `release` once per successful `acquire`, when
    the call is done (or failed): a replica holds it, running or next, until then."""

    def __init__(
        self,
        patience_s: float = math.inf,
        calls_per_replica: int = CALLS_PER_REPLICA,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.patience_s = patience_s  # past this wait a request goes first
        self.calls_per_replica = calls_per_replica
        self._clock = clock
        self._out: dict[str, int] = defaultdict(int)
        self._limit: dict[str, int] = {}
        self._waiting: dict[str, list[_Waiter]] = defaultdict(list)

    def outstanding(self, app: str) -> int:
        return self._out.get(app, 0)

    def waiting(self, app: str) -> int:
        return len(self._waiting.get(app, ()))

    async def acquire(
        self, app: str, replicas: int, arrival: float, ttft_slo_s: float | None
    ) -> None:
        """Wait until a call to `app`'s prefill may leave; `replicas` is its prefill replicas
        taking calls now (running, not starting), `arrival` when the request arrived (the gate's
        clock), `ttft_slo_s` None when the service has none (then first come, first served)."""
        self._limit[app] = max(1, replicas) * self.calls_per_replica
        if not self._waiting[app] and self._out[app] < self._limit[app]:
            self._out[app] += 1
            return
        slack = math.inf if ttft_slo_s is None else ON_TIME_SHARE * ttft_slo_s
        w = _Waiter(
            arrival,
            arrival + slack,
            arrival + self.patience_s,
            asyncio.get_running_loop().create_future(),
        )
        self._waiting[app].append(w)
        self._grant(app)  # the DG may have grown since the last call
        try:
            await w.granted
        except BaseException:
            if w.granted.done() and not w.granted.cancelled():
                self.release(app)  # granted, then cancelled before it ran: pass it on
            elif w in self._waiting[app]:
                self._waiting[app].remove(w)
            raise

    def release(self, app: str) -> None:
        """A call that `acquire` let out is done, or failed."""
        self._out[app] = max(0, self._out[app] - 1)
        self._grant(app)
        if not self._out[app] and not self._waiting[app]:  # idle: a deleted DG leaves no trace
            del self._out[app], self._waiting[app]
            self._limit.pop(app, None)

    def _grant(self, app: str) -> None:
        waiting = self._waiting[app]
        now = self._clock()
        while waiting and self._out[app] < self._limit.get(app, 0):
            w = self._next(waiting, now)
            waiting.remove(w)
            if w.granted.done():  # its task was cancelled while it waited
                continue
            w.granted.set_result(None)
            self._out[app] += 1

    @staticmethod
    def _next(waiting: list[_Waiter], now: float) -> _Waiter:
        """The oldest of: those near the timeout, else those on time, else all."""
        for tier in (
            [w for w in waiting if now > w.first_after],
            [w for w in waiting if now <= w.on_time_until],
        ):
            if tier:
                return min(tier, key=lambda w: w.arrival)
        return min(waiting, key=lambda w: w.arrival)
