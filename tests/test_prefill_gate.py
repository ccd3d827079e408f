"""The ingress's gate for prefill calls (`serving/admission.py`): at most two calls a replica
leave it; the rest wait, those that can still make the TTFT SLO first, those near the
ingress's timeout before all; a cancelled waiter never leaks a slot."""

from __future__ import annotations

import asyncio

import numpy as np

from heteroscale_ray.serving.admission import PrefillGate, on_time

APP = "dg-a"


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def _full_gate(now: float = 0.0, patience_s: float = float("inf")) -> PrefillGate:
    """A gate whose one-replica DG has its two calls out: the next call waits."""
    gate = PrefillGate(patience_s=patience_s, clock=Clock(now))
    for _ in range(2):
        await gate.acquire(APP, 1, now, 5.0)
    return gate


async def _release_each(gate: PrefillGate, tasks: list[asyncio.Task[None]]) -> None:
    """Free one slot per queued task, letting the gate grant the next each time."""
    await _settle()
    for _ in tasks:
        gate.release(APP)
        await _settle()


def _queue(
    gate: PrefillGate,
    order: list[str],
    name: str,
    arrival: float,
    slo: float | None,
    replicas: int = 1,
):
    async def call() -> None:
        await gate.acquire(APP, replicas, arrival, slo)
        order.append(name)

    return asyncio.get_running_loop().create_task(call())


def test_on_time_is_half_the_slo() -> None:
    waited = np.array([0.0, 2.5, 2.6, 10.0])
    assert on_time(waited, 5.0).tolist() == [True, True, False, False]


def test_two_calls_a_replica_leave_at_once_then_one_per_release() -> None:
    async def run() -> None:
        gate = PrefillGate(clock=Clock())
        for _ in range(4):  # two replicas
            await gate.acquire(APP, 2, 0.0, 5.0)
        order: list[str] = []
        task = _queue(gate, order, "fifth", 0.0, 5.0, replicas=2)
        await _settle()
        assert order == [] and gate.waiting(APP) == 1 and gate.outstanding(APP) == 4
        gate.release(APP)
        await _settle()
        assert order == ["fifth"] and gate.outstanding(APP) == 4
        await task

    asyncio.run(run())


def test_fresh_requests_go_before_those_past_half_the_slo() -> None:
    async def run() -> None:
        gate = await _full_gate(10.0)
        order: list[str] = []
        tasks = [
            _queue(gate, order, "old", 1.0, 5.0),  # waited 9 s: late
            _queue(gate, order, "older", 0.5, 5.0),
            _queue(gate, order, "fresh", 9.0, 5.0),  # waited 1 s of 5: on time
            _queue(gate, order, "fresher", 9.5, 5.0),
        ]
        await _release_each(gate, tasks)
        assert order == ["fresh", "fresher", "older", "old"]
        await asyncio.gather(*tasks)

    asyncio.run(run())


def test_without_an_slo_first_come_first_served() -> None:
    async def run() -> None:
        gate = await _full_gate(10.0)
        order: list[str] = []
        tasks = [_queue(gate, order, str(a), a, None) for a in (3.0, 1.0, 9.0)]
        await _release_each(gate, tasks)
        assert order == ["1.0", "3.0", "9.0"]

    asyncio.run(run())


def test_a_request_near_the_timeout_goes_first() -> None:
    """Late requests wait behind fresh ones, but never into the prefill timeout."""

    async def run() -> None:
        gate = await _full_gate(40.0, patience_s=30.0)
        order: list[str] = []
        tasks = [
            _queue(gate, order, "fresh", 39.0, 5.0),
            _queue(gate, order, "late", 20.0, 5.0),  # waited 20 s: behind fresh
            _queue(gate, order, "near-timeout", 5.0, 5.0),  # waited 35 s of patience 30
        ]
        await _release_each(gate, tasks)
        assert order == ["near-timeout", "fresh", "late"]

    asyncio.run(run())


def test_a_cancelled_waiter_leaks_no_slot() -> None:
    async def run() -> None:
        gate = await _full_gate()
        order: list[str] = []
        gone = _queue(gate, order, "gone", 0.0, 5.0)
        await _settle()
        gone.cancel()  # the client went away while held
        await _settle()
        assert gate.waiting(APP) == 0
        # granted, then cancelled before it ran: the slot passes on
        nxt = _queue(gate, order, "next", 0.0, 5.0)
        after = _queue(gate, order, "after", 0.0, 5.0)
        await _settle()
        gate.release(APP)  # grants "next"
        nxt.cancel()  # before its task resumes
        await _settle()
        assert order == ["after"] and gate.outstanding(APP) == 2 and gate.waiting(APP) == 0
        await after
        gate.release(APP)
        gate.release(APP)
        assert gate.outstanding(APP) == 0
        assert not gate._out and not gate._waiting and not gate._limit  # an idle DG is forgotten

    asyncio.run(run())


def test_a_grown_dg_lets_held_calls_out() -> None:
    async def run() -> None:
        gate = await _full_gate()
        order: list[str] = []
        held = _queue(gate, order, "held", 0.0, 5.0)
        await _settle()
        assert order == []
        await gate.acquire(APP, 3, 1.0, 5.0)  # the next call sees three replicas
        await _settle()
        assert order == ["held"] and gate.outstanding(APP) == 4
        await held

    asyncio.run(run())
