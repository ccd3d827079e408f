"""`PrefillEngine`: prompt processing with a block-level prefix cache; its `KVCache` output is
what travels to a decode engine."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from heteroscale_ray.serving.model.transformer import (
    ModelConfig,
    SamplingParams,
    TinyTransformer,
    sample_token,
)


@dataclass
class KVCache:
    """Keys and values of a token prefix, the payload handed from prefill to decode.

    `k` and `v` are float32 arrays [n_layers, n_heads, n_tokens, head_dim] (layer i is k[i]);
    keys are stored after RoPE, so the cache is only valid at positions 0..n_tokens-1.
    Plain numpy + list, hence cheap to pickle and zero-copy in the Ray object store.
    """

    k: np.ndarray
    v: np.ndarray
    token_ids: list[int]

    def __post_init__(self) -> None:
        if self.k.shape != self.v.shape or self.k.ndim != 4:
            raise ValueError(f"bad KV shapes {self.k.shape} / {self.v.shape}")
        if self.k.shape[2] != len(self.token_ids):
            raise ValueError("KV length does not match token_ids")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def nbytes(self) -> int:
        return int(self.k.nbytes + self.v.nbytes)


@dataclass
class PrefillResult:
    """Output of one prefill: the prompt's KV, the first sampled token, and what it cost."""

    kv: KVCache
    first_token: int
    first_logits: np.ndarray  # float32 [vocab]
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache
    computed_tokens: int  # prompt tokens actually run through the model
    flops: float
    seconds: float


def _validate_tokens(tokens: Sequence[int], config: ModelConfig) -> list[int]:
    out = [int(t) for t in tokens]
    if not out:
        raise ValueError("prompt must contain at least one token (e.g. BOS)")
    if len(out) >= config.max_context:
        raise ValueError(
            f"prompt of {len(out)} tokens leaves no room in context {config.max_context}"
        )
    if min(out) < 0 or max(out) >= config.vocab_size:
        raise ValueError("token id out of vocabulary")
    return out


class PrefillEngine:
    """Prompt processing with a block-level prefix cache (LRU over full blocks).

    Block i is keyed by a hash chained over all tokens of blocks 0..i, so a hit implies the whole
    prefix matches. On eviction the deepest blocks of a chain go first (blocks are touched
    last-to-first), which keeps shared system-prompt heads resident.
    """

    def __init__(self, config: ModelConfig, model: TinyTransformer | None = None) -> None:
        self.config = config
        self.model = model or TinyTransformer(config)
        self._cache: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self.prefix_hit_tokens = 0
        self.prefix_miss_tokens = 0
        self.num_prefills = 0
        self.total_flops = 0.0
        self.total_seconds = 0.0

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cache)

    def _block_keys(self, tokens: list[int]) -> list[bytes]:
        bs = self.config.kv_block_size
        keys, prev = [], b""
        for i in range(len(tokens) // bs):
            block = np.asarray(tokens[i * bs : (i + 1) * bs], dtype=np.int32).tobytes()
            prev = hashlib.blake2b(prev + block, digest_size=16).digest()
            keys.append(prev)
        return keys

    def prefill(
        self,
        prompt_tokens: Sequence[int],
        params: SamplingParams | None = None,
        resume_at: int = 0,
    ) -> PrefillResult:
        """KV of the prompt and its first token, sampled with `params` (greedy if None).

        Give the decode side the same `params`: with a seed, the first token takes the first
        draw of the sequence's random stream and the decode engine continues that stream.
        `resume_at` > 0 re-prefills a migrated sequence: the last `resume_at` tokens are output
        it already produced, and the token sampled here is output token `resume_at`, taking
        that draw of the stream (so the continuation equals the unbroken run's).
        """
        t0 = time.perf_counter()
        params = params or SamplingParams()
        tokens = _validate_tokens(prompt_tokens, self.config)
        bs, n = self.config.kv_block_size, len(tokens)
        if not 0 <= resume_at < n:
            raise ValueError(f"resume_at {resume_at} must be in 0..{n - 1} (tokens given: {n})")
        use_cache = self.config.prefix_cache_blocks > 0
        keys = self._block_keys(tokens) if use_cache else []
        with self._lock:
            hit_blocks = []
            for key in keys:
                if key not in self._cache:
                    break
                hit_blocks.append(self._cache[key])
        # Always compute at least the last prompt token: its logits give the first token.
        cached = min(len(hit_blocks) * bs, n - 1)
        past_k = past_v = None
        if cached:
            past_k = np.concatenate([b[0] for b in hit_blocks], axis=2)[:, :, :cached]
            past_v = np.concatenate([b[1] for b in hit_blocks], axis=2)[:, :, :cached]
        logits, k, v = self.model.forward_prefill(tokens[cached:], past_k, past_v)
        rng = params.make_rng(resume_at)
        first = sample_token(logits, params.temperature, rng, params.top_p)
        flops = self.model.flops(n - cached, cached)
        with self._lock:
            for i in reversed(range(len(keys))):
                key = keys[i]
                if key in self._cache:
                    self._cache.move_to_end(key)
                else:
                    sl = slice(i * bs, (i + 1) * bs)
                    self._cache[key] = (k[:, :, sl].copy(), v[:, :, sl].copy())
            while len(self._cache) > self.config.prefix_cache_blocks:
                self._cache.popitem(last=False)
            self.prefix_hit_tokens += cached
            self.prefix_miss_tokens += n - cached
            self.num_prefills += 1
            self.total_flops += flops
            seconds = time.perf_counter() - t0
            self.total_seconds += seconds
        return PrefillResult(
            kv=KVCache(k=k, v=v, token_ids=tokens),
            first_token=first,
            first_logits=logits,
            cached_tokens=cached,
            computed_tokens=n - cached,
            flops=flops,
            seconds=seconds,
        )
