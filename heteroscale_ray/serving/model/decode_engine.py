"""`DecodeEngine`: continuous batching over prefilled sequences with KV-capacity admission."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from heteroscale_ray.serving.model.prefill_engine import KVCache
from heteroscale_ray.serving.model.transformer import (
    ModelConfig,
    SamplingParams,
    TinyTransformer,
    TokenLogprob,
    sample_token,
    token_logprob,
)
from heteroscale_ray.serving.tokenizer import EOS_ID, IncrementalDecoder

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass
class StepOutput:
    """One sequence's result of one decode step.

    `token` is the newly sampled token, or None when the sequence ended without sampling (its
    first token already finished it). The first output of a sequence also carries the first
    (prefill) token's text, so concatenating all `text_delta`s gives the whole completion.
    """

    seq_id: Hashable
    token: int | None
    text_delta: str
    finished: bool
    finish_reason: str | None  # "stop" | "length" | None
    num_generated: int  # tokens generated so far, including the first token
    # Tokens accepted since the previous output, with their logprobs (params.logprobs set).
    logprobs: tuple[TokenLogprob, ...] = ()
    # Those tokens' ids (all of them, logprobs or not): what a migration resumes from.
    tokens: tuple[int, ...] = ()


@dataclass
class _Waiting:
    seq_id: Hashable
    kv: KVCache
    first_token: int
    params: SamplingParams
    reserved: int
    first_logprob: TokenLogprob | None = None
    prior: tuple[int, ...] = ()  # output already produced elsewhere (a migrated sequence)
    emitted_chars: int = 0  # chars of that output's text the client already has


@dataclass
class _Seq:
    seq_id: Hashable
    params: SamplingParams
    prompt_len: int
    reserved: int
    k: np.ndarray  # [L, H, capacity, hd]
    v: np.ndarray
    kv_len: int
    rng: np.random.Generator | None
    generated: list[int] = field(default_factory=list)
    decoder: IncrementalDecoder = field(default_factory=IncrementalDecoder)
    text: str = ""
    emitted: int = 0  # chars of `text` already returned in text_delta
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet in an output
    fresh: list[int] = field(default_factory=list)  # tokens accepted, not yet in an output


class DecodeEngine:
    """Continuous-batching decoder with KV-capacity admission control.

    Each admitted sequence reserves min(prompt + max_tokens, max_context) KV tokens, so a running
    sequence can never run out of KV mid-generation. Sequences that do not fit wait in a FIFO
    queue (strict order, no overtaking) and are admitted at the start of a later `step`.
    """

    def __init__(self, config: ModelConfig, model: TinyTransformer | None = None) -> None:
        self.config = config
        self.model = model or TinyTransformer(config)
        self._running: dict[Hashable, _Seq] = {}
        self._waiting: deque[_Waiting] = deque()
        self._reserved = 0
        self._lock = threading.RLock()
        self.num_steps = 0
        self.total_generated_tokens = 0  # tokens sampled by step() (first tokens not included)
        self.total_flops = 0.0
        self.last_step_flops = 0.0
        self.total_step_seconds = 0.0

    # ---- introspection (what a load reporter / autoscaler reads) ----
    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    @property
    def kv_capacity_tokens(self) -> int:
        return self.config.kv_capacity_tokens

    @property
    def kv_used_tokens(self) -> int:
        """KV tokens actually materialised by running sequences."""
        return sum(s.kv_len for s in self._running.values())

    @property
    def kv_reserved_tokens(self) -> int:
        """KV tokens reserved by running sequences; admission is decided on this."""
        return self._reserved

    def can_admit(self, n_tokens: int) -> bool:
        """Whether a sequence reserving `n_tokens` would be admitted now (given an empty queue)."""
        return self._reserved + n_tokens <= self.config.kv_capacity_tokens

    def reservation(self, prompt_tokens: int, params: SamplingParams) -> int:
        return min(prompt_tokens + params.max_tokens, self.config.max_context)

    # ---- lifecycle ----
    def add(
        self,
        seq_id: Hashable,
        kv: KVCache,
        first_token: int,
        params: SamplingParams | None = None,
        first_logprob: TokenLogprob | None = None,
        *,
        prior: Sequence[int] = (),
        emitted_chars: int = 0,
    ) -> bool:
        """Queue a prefilled sequence; returns True if admitted at once, False if it waits.

        `first_token` counts as generated token 1 (towards max_tokens, stop strings and text);
        `first_logprob` is its logprob (the prefill computed it), reported with its output.

        A migrated sequence resumes: `prior` is the output it already produced (its last
        tokens are also the last of `kv`), of whose text the client has `emitted_chars`;
        `first_token` is then output token len(prior). Outputs continue exactly where the
        client's stream stopped: no token or char twice, none missing.
        """
        params = params or SamplingParams()
        c = self.config
        expect = (c.n_layers, c.n_heads, kv.num_tokens, c.head_dim)
        if kv.k.shape != expect:
            raise ValueError(f"KV shape {kv.k.shape} does not match this model {expect}")
        if not 1 <= kv.num_tokens < c.max_context:
            raise ValueError("prompt KV must hold 1..max_context-1 tokens")
        prior = tuple(int(t) for t in prior)
        if (
            len(prior) >= kv.num_tokens
            or tuple(kv.token_ids[kv.num_tokens - len(prior) :]) != prior
        ):
            raise ValueError("a resumed sequence's KV must end with the output it resumes from")
        reserved = self.reservation(kv.num_tokens - len(prior), params)
        if reserved > c.kv_capacity_tokens:
            raise ValueError(
                f"sequence needs {reserved} KV tokens > capacity {c.kv_capacity_tokens}"
            )
        with self._lock:
            if seq_id in self._running or any(w.seq_id == seq_id for w in self._waiting):
                raise ValueError(f"duplicate seq_id {seq_id!r}")
            item = _Waiting(
                seq_id, kv, int(first_token), params, reserved, first_logprob, prior, emitted_chars
            )
            if not self._waiting and self.can_admit(reserved):
                self._admit(item)
                return True
            self._waiting.append(item)
            return False

    def abort(self, seq_id: Hashable) -> bool:
        """Drop a running or waiting sequence and free its KV; False if unknown."""
        with self._lock:
            seq = self._running.pop(seq_id, None)
            if seq is not None:
                self._reserved -= seq.reserved
                return True
            for w in self._waiting:
                if w.seq_id == seq_id:
                    self._waiting.remove(w)
                    return True
            return False

    def _admit(self, item: _Waiting) -> None:
        c, n = self.config, item.kv.num_tokens
        shape = (c.n_layers, c.n_heads, item.reserved, c.head_dim)
        k, v = np.empty(shape, np.float32), np.empty(shape, np.float32)
        k[:, :, :n], v[:, :, :n] = item.kv.k, item.kv.v  # copy: object-store arrays are read-only
        p, prior = item.params, item.prior
        rng = None
        if p.temperature > 0:  # the prefill took the draw of output token len(prior)
            rng = p.make_rng(len(prior) + 1)
        seq = _Seq(item.seq_id, p, n - len(prior), item.reserved, k, v, kv_len=n, rng=rng)
        if prior:  # rebuild the text the stream had; the client already has emitted_chars of it
            seq.generated = list(prior)
            seq.text = "".join(seq.decoder.push(t) for t in prior)
            seq.emitted = min(item.emitted_chars, len(seq.text))
        if p.logprobs is not None and item.first_logprob is not None:
            seq.logprobs.append(item.first_logprob)
        self._accept_token(seq, item.first_token)
        self._running[item.seq_id] = seq
        self._reserved += item.reserved

    def _admit_waiting(self) -> None:
        while self._waiting and self.can_admit(self._waiting[0].reserved):
            self._admit(self._waiting.popleft())

    def _accept_token(self, seq: _Seq, token: int) -> None:
        """Append a token, update text, and decide whether the sequence is finished."""
        p = seq.params
        seq.generated.append(token)
        seq.fresh.append(token)
        if token == EOS_ID and not p.ignore_eos:
            seq.finish_reason = FINISH_STOP
            return
        prev_len = len(seq.text)
        seq.text += seq.decoder.push(token)
        if p.stop:
            hits = [
                i for s in p.stop if (i := seq.text.find(s, max(0, prev_len - len(s) + 1))) >= 0
            ]
            if hits:
                seq.text = seq.text[: min(hits)]
                seq.finish_reason = FINISH_STOP
                return
        if (
            len(seq.generated) >= p.max_tokens
            or seq.prompt_len + len(seq.generated) >= self.config.max_context
        ):
            seq.text += seq.decoder.flush()
            seq.finish_reason = FINISH_LENGTH

    def _output(self, seq: _Seq, token: int | None) -> StepOutput:
        if seq.finish_reason is None:
            # Hold back a possible stop-string prefix so it is never streamed then retracted.
            hold = max((len(s) for s in seq.params.stop), default=1) - 1
            end = max(seq.emitted, len(seq.text) - hold)
        else:
            end = len(seq.text)
        delta, seq.emitted = seq.text[seq.emitted : end], end
        finished = seq.finish_reason is not None
        lps, seq.logprobs = tuple(seq.logprobs), []
        fresh, seq.fresh = tuple(seq.fresh), []
        return StepOutput(
            seq.seq_id, token, delta, finished, seq.finish_reason, len(seq.generated), lps, fresh
        )

    def step(self) -> list[StepOutput]:
        """Admit what fits, advance every running sequence by one token in one batched pass.

        Returns one output per running sequence; finished sequences are removed and their
        reservation freed before returning.
        """
        with self._lock:
            t0 = time.perf_counter()
            self._admit_waiting()
            active = [s for s in self._running.values() if s.finish_reason is None]
            sampled: dict[Hashable, int] = {}
            flops = 0.0
            if active:
                tokens = np.array([s.generated[-1] for s in active], dtype=np.int64)
                positions = np.array([s.kv_len for s in active], dtype=np.int64)
                logits = self.model.forward_decode(
                    tokens, positions, [s.k for s in active], [s.v for s in active]
                )
                for s, row in zip(active, logits, strict=True):
                    flops += self.model.flops(1, s.kv_len)
                    s.kv_len += 1
                    tok = sample_token(row, s.params.temperature, s.rng, s.params.top_p)
                    if s.params.logprobs is not None:  # from the logits already in hand
                        s.logprobs.append(token_logprob(row, tok, s.params.logprobs))
                    sampled[s.seq_id] = tok
                    self._accept_token(s, tok)
            outputs = [self._output(s, sampled.get(s.seq_id)) for s in self._running.values()]
            for out in outputs:
                if out.finished:
                    self._reserved -= self._running.pop(out.seq_id).reserved
            self.num_steps += 1
            self.total_generated_tokens += len(sampled)
            self.last_step_flops = flops
            self.total_flops += flops
            self.total_step_seconds += time.perf_counter() - t0
            return outputs
