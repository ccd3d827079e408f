"""Request migration: what the ingress needs to resume a request whose replica failed.

Why apart from choices.py: deciding whether a failure is worth a move, where the request goes,
and what it resumes from is bookkeeping that can be tested without Serve; choices.py only
calls it. The resume itself is exact: the router keeps the output token ids and the chars of
text each choice's stream delivered (`Progress`); a re-prefill of prompt + those tokens takes
up the seeded random stream at that output position (`PrefillEngine.prefill(resume_at=...)`)
and the new decode sequence starts with the text the client already has
(`DecodeEngine.add(prior=..., emitted_chars=...)`), so the stream goes on with no token twice
and none missing, and a seeded request's text equals the unbroken run's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from heteroscale_ray.serving.decode import DecodeChunk, KvHandoffError, ResumePoint
from heteroscale_ray.serving.routing_table import DgRoute, choose_dg


class MigrationReason(str, Enum):
    """Why a request moved (the `reason` label of heteroscale_request_migrations_total)."""

    PREFILL_FAILED = "prefill_failed"  # the prefill replica (or its node) died: retried elsewhere
    DECODE_FAILED = "decode_failed"  # the decode replica (or its node) died mid-request
    KV_LOST = "kv_lost"  # the KV handoff's object could not be fetched
    DECODE_STALLED = "decode_stalled"  # no token within the ingress's token timeout


class Stage(str, Enum):
    """The step of a request that failed: which role's replica it was on."""

    PREFILL = "prefill"
    DECODE = "decode"


class StreamEnded(Exception):
    """A decode stream ended before its last chunk: its replica went away."""


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps: Ray's task errors carry `cause`, Serve's wrappers `__cause__`."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out and len(out) < 8:
        out.append(e)
        e = getattr(e, "cause", None) or e.__cause__
    return out


def failure_reason(exc: BaseException, stage: Stage) -> MigrationReason | None:
    """The migration a failure calls for, or None when moving would not help.

    Moves: a replica's actor or worker died or is unreachable, its node died, the KV object
    was lost, or the decode replica could not fetch the KV (`KvHandoffError`: the prefill
    replica died before producing it, or it was lost). Not: errors of the request itself (an ApiError, an engine's ValueError), which
    would fail again anywhere, and cancellation (the client went away).
    """
    from ray.exceptions import (
        LocalRayletDiedError,
        NodeDiedError,
        ObjectLostError,
        RayActorError,
        WorkerCrashedError,
    )

    if isinstance(exc, StreamEnded):
        return MigrationReason.DECODE_FAILED
    died = (RayActorError, WorkerCrashedError, NodeDiedError, LocalRayletDiedError)
    for e in _causes(exc):
        if isinstance(e, KvHandoffError):
            return MigrationReason.PREFILL_FAILED if e.producer_died else MigrationReason.KV_LOST
        if isinstance(e, ObjectLostError):
            return MigrationReason.KV_LOST
        if isinstance(e, died):
            if stage is Stage.PREFILL:
                return MigrationReason.PREFILL_FAILED
            return MigrationReason.DECODE_FAILED
    return None


@dataclass(frozen=True)
class Budget:
    """A request's migrations so far against its service's `migration_limit`."""

    limit: int
    used: int = 0

    @property
    def left(self) -> bool:
        return self.used < self.limit

    def spend(self) -> Budget:
        return Budget(self.limit, self.used + 1)


@dataclass
class Progress:
    """What one choice's stream has delivered: output token ids and chars of text.

    Updated as each chunk arrives from decode (before the client sees it: every received
    chunk is sent, so received = delivered for the resume); `resume_point` is where a new
    stream must take over.
    """

    tokens: list[int] = field(default_factory=list)
    chars: int = 0
    finished: bool = False

    def absorb(self, chunk: DecodeChunk) -> None:
        if self.finished:
            raise ValueError("a chunk arrived after the choice's last one")
        self.tokens.extend(chunk.tokens)
        self.chars += len(chunk.text)
        self.finished = chunk.finished

    def resume_point(self) -> ResumePoint | None:
        """None before the first chunk: the request then simply starts again."""
        if not self.tokens:
            return None
        return ResumePoint(tuple(self.tokens), self.chars)

    def prefill_tokens(self, prompt: list[int]) -> list[int]:
        """What the re-prefill runs: the prompt plus the output already delivered."""
        return [*prompt, *self.tokens]


def migration_target(
    dgs: Mapping[str, DgRoute],
    current: str,
    stage: Stage,
    failed: set[str],
    inflight: Mapping[str, int],
) -> DgRoute | None:
    """The DG a request moves to after its replica in DG app `current` failed.

    The same DG first, when it is not draining, has another replica of the failed role and has
    not failed this request before (Serve's handle stops routing to a replica that died);
    else the least loaded other DG that has not failed it (`choose_dg`'s order), else any other
    DG, else the same DG again (Serve replaces the dead replica there). None when the service
    has no DG left. `failed` holds the apps that already failed this request.
    """
    same = next((d for d in dgs.values() if d.app_name == current), None)
    if same is not None and not same.draining and current not in failed:
        spare = same.prefill_replicas if stage is Stage.PREFILL else same.decode_replicas
        if spare > 1:
            return same
    others = {k: d for k, d in dgs.items() if d.app_name != current}
    fresh = {k: d for k, d in others.items() if d.app_name not in failed}
    whole = same is not None and same.prefill_replicas > 0 and same.decode_replicas > 0
    return choose_dg(fresh, inflight) or choose_dg(others, inflight) or (same if whole else None)
