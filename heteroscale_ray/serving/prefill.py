"""PrefillServer: the prefill role of a DG as a Ray Serve deployment class.

Runs the prompt through the real engine (with its block prefix cache) and returns the prompt's
KV cache plus first token. The router never fetches that result: it hands the ObjectRef to the
decode replica of the same DG, so the KV goes prefill node -> object store -> decode node, the
stand-in for the RDMA transfer. Prefills run one at a time per replica (one emulated GPU), so
queueing shows up here exactly as it would on a real prefill instance.

What it measures for the control plane (`ReplicaStats`): its queue (requests and their prompt
tokens waiting for the GPU, priced in seconds with its measured prompt tokens per busy second,
seeded from the emulated GPU until a prefill has run), and TTFT split in two: the wait from the
request's arrival at the ingress (its `arrival_wall_s`) to compute start (router, Serve handle
and this queue), and the compute itself. Requests Serve holds back at the handle because this
replica is at `max_ongoing_requests` are not in the queue, but their wait is in TTFT's wait.

Graceful shutdown: Serve only stops a replica after its in-flight calls return, and a returned
KV lives in the object store (pinned by the node, owned by the router), so a scale-in cannot
lose a KV that has not yet been handed off.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from heteroscale_ray.serving.model import (
    KVCache,
    PrefillEngine,
    PrefillResult,
    SamplingParams,
    TokenLogprob,
    token_logprob,
)
from heteroscale_ray.serving.replica import ReplicaBase, ReplicaSpec


@dataclass(frozen=True)
class PrefillRequest:
    request_id: str
    prompt_tokens: list[int]
    params: SamplingParams
    arrival_wall_s: float  # router receive time (time.time()): TTFT (decode side), wait here
    # A migrated request: its last `resume_at` tokens are output already sent to the client,
    # and the token sampled here is output token `resume_at` (see PrefillEngine.prefill).
    resume_at: int = 0


@dataclass
class PrefillOutput:
    """What travels through the object store to the decode replica."""

    request_id: str
    kv: KVCache
    first_token: int
    prompt_tokens: int
    cached_tokens: int
    produced_wall_s: float  # time.time() when the KV was ready
    prefill_wall_s: float  # emulated (or real) prefill duration, queueing excluded
    queue_s: float
    replica_id: str
    first_logprob: TokenLogprob | None = None  # when the request asked for logprobs


class PrefillServer(ReplicaBase):
    """Serve deployment body; `deployments.py` wraps it with placement and scaling options."""

    async def __init__(self, spec: ReplicaSpec) -> None:
        self._setup(spec)
        self.engine = PrefillEngine(spec.engine)
        self._gpu = asyncio.Lock()
        self._waiting = 0
        self._waiting_tokens = 0
        self._active = 0
        if self.device.enabled:  # a prior for pricing the queue until a prefill is measured
            n = 1024
            emulated = self.device.prefill_s(n, 0)
            if emulated > 0:
                self.metrics.seed_prefill_rate(n / emulated)
        self._start_reporter()

    def _gauges(self) -> dict[str, Any]:
        return {
            "emulation_overruns": self.device.overruns,
            "queue_length": self._waiting,
            "queued_prompt_tokens": self._waiting_tokens,
            "running": self._active,
        }

    async def prefill(self, req: PrefillRequest) -> PrefillOutput:
        t_enq = time.perf_counter()
        n_prompt = len(req.prompt_tokens)
        self._waiting += 1
        self._waiting_tokens += n_prompt
        # queued: what waits for the GPU; a prompt that finds it free is service, not queue
        self.metrics.prompt_queued(self._waiting_tokens - (0 if self._gpu.locked() else n_prompt))
        try:
            await self._gpu.acquire()
        finally:
            self._waiting -= 1
            self._waiting_tokens -= n_prompt
        try:
            self._active = 1
            queue_s = time.perf_counter() - t_enq
            # TTFT's queueing part: from the ingress (another process: wall clocks), at least
            # the wait here; without an ingress stamp, only the wait here.
            wait_s = queue_s
            if req.arrival_wall_s > 0:
                wait_s = max(queue_s, self.metrics.clock.now() - req.arrival_wall_s)

            def emulated(res: PrefillResult) -> float:
                return self.device.prefill_s(len(req.prompt_tokens), res.cached_tokens)

            res, timing = await self.device.run(
                lambda: self.engine.prefill(req.prompt_tokens, req.params, req.resume_at),
                emulated,
            )
        finally:
            self._active = 0
            self._gpu.release()
        n, hit = len(req.prompt_tokens), res.cached_tokens
        self.metrics.prefill_done(
            n - hit, hit, timing.wall_s, self.device.prefill_flops(n, hit), wait_s=wait_s
        )
        return PrefillOutput(
            request_id=req.request_id,
            kv=res.kv,
            first_token=res.first_token,
            prompt_tokens=n,
            cached_tokens=hit,
            produced_wall_s=time.time(),
            prefill_wall_s=timing.wall_s,
            queue_s=queue_s,
            replica_id=self.replica_id,
            first_logprob=(
                None
                if req.params.logprobs is None
                else token_logprob(res.first_logits, res.first_token, req.params.logprobs)
            ),
        )

    async def __del__(self) -> None:
        await self._stop_reporter()
