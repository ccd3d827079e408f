"""CPU inference engine for prefill/decode disaggregation: a small real transformer in numpy.

The model is tiny and randomly initialised (weights are a pure function of the seed, so every
process builds the same model), but the serving mechanics are real: prefix-cached prefill that
hands a picklable `KVCache` to a separate decode engine, continuous batching with a KV-capacity
admission queue, sampling, stop strings and FLOP accounting.

Typical disaggregated use (the Ray Serve deployments wrap exactly this)::

    prefill = PrefillEngine(cfg)                # on a prefill replica
    res = prefill.prefill(tokens, params)       # res.kv travels through the object store
    decode = DecodeEngine(cfg)                  # on a decode replica (same cfg => same weights)
    decode.add("req-1", res.kv, res.first_token, params)
    while decode.has_work:
        for out in decode.step(): ...           # out.text_delta, out.finished

Nothing here imports Ray. Both engines guard their state with a lock, so a deployment may call
`add` from request handlers while a background loop calls `step`.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from heteroscale_ray.serving.tokenizer import EOS_ID, VOCAB_SIZE, ByteTokenizer, IncrementalDecoder

__all__ = [
    "DecodeEngine",
    "Engine",
    "GenerateResult",
    "KVCache",
    "ModelConfig",
    "PrefillEngine",
    "PrefillResult",
    "SamplingParams",
    "StepOutput",
    "TinyTransformer",
    "measure_peak_flops",
]

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(frozen=True)
class ModelConfig:
    """Model shape plus the engine limits that depend on it; equal configs give equal weights."""

    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 8
    d_ff: int | None = None  # None -> 4 * d_model
    vocab_size: int = VOCAB_SIZE
    max_context: int = 2048
    seed: int = 0
    kv_block_size: int = 16  # tokens per prefix-cache block
    kv_capacity_tokens: int = 32768  # KV tokens one decode engine may reserve in total
    prefix_cache_blocks: int = 1024  # LRU bound of the prefill prefix cache; 0 disables it
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model must split into n_heads heads of even size (RoPE)")
        if min(self.n_layers, self.max_context, self.kv_block_size, self.kv_capacity_tokens) < 1:
            raise ValueError(
                "n_layers, max_context, kv_block_size, kv_capacity_tokens must be >= 1"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_bytes_per_token(self) -> int:
        """float32 K and V of every layer for one token: what one unit of KV capacity costs."""
        return 2 * self.n_layers * self.d_model * 4


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop; temperature 0 means greedy."""

    max_tokens: int = 16  # generated tokens including the first (prefill) token
    temperature: float = 0.0
    seed: int | None = None  # per-sequence numpy Generator for temperature > 0
    stop: tuple[str, ...] = ()  # stop strings, matched on decoded text, excluded from output
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    def make_rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


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


@dataclass
class GenerateResult:
    prompt_tokens: list[int]
    tokens: list[int]  # generated tokens, first token included
    text: str
    finish_reason: str
    cached_tokens: int
    flops: float


def measure_peak_flops(n: int = 1024, repeats: int = 5) -> float:
    """Best observed float32 matmul FLOP/s on this process: the denominator for achieved MFU."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm up BLAS threads
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return x * (1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)) * w


def _gelu(x: np.ndarray) -> np.ndarray:
    """tanh-approximate GELU, in place on a temporary: elementwise passes dominate CPU prefill."""
    c = 0.7978845608  # sqrt(2 / pi)
    y = x * x
    y *= 0.044715 * c
    y += c
    y *= x
    np.tanh(y, out=y)
    y += 1.0
    y *= x
    y *= 0.5
    return y


def _softmax_(x: np.ndarray) -> np.ndarray:
    """In-place softmax over the last axis (saves a copy of the score matrix)."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def sample_token(logits: np.ndarray, temperature: float, rng: np.random.Generator | None) -> int:
    """Greedy argmax for temperature 0, else one uniform draw from `rng` (exactly one per token)."""
    if temperature <= 0 or rng is None:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    cdf = np.cumsum(np.exp(z))
    idx = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(idx, len(cdf) - 1)


class TinyTransformer:
    """Decoder-only transformer: RMSNorm, RoPE causal MHA, GELU MLP, untied LM head; float32."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = c = config
        d, f, v = c.d_model, c.d_ff, c.vocab_size
        assert f is not None
        rng = np.random.default_rng(c.seed)

        def w(shape: tuple[int, ...], std: float) -> np.ndarray:
            return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

        resid = 1.0 / np.sqrt(2 * c.n_layers)  # keep the residual stream from growing with depth
        self.embed = w((v, d), 1.0)
        self.layers = [
            {
                "attn_norm": np.ones(d, np.float32),
                "wqkv": w((d, 3 * d), d**-0.5),
                "wo": w((d, d), d**-0.5 * resid),
                "mlp_norm": np.ones(d, np.float32),
                "w_up": w((d, f), d**-0.5),
                "w_down": w((f, d), f**-0.5 * resid),
            }
            for _ in range(c.n_layers)
        ]
        self.final_norm = np.ones(d, np.float32)
        self.lm_head = w((d, v), 2.0 * d**-0.5)  # logit std ~2: sampling is not near-uniform
        half = c.head_dim // 2
        inv_freq = c.rope_theta ** (-np.arange(half, dtype=np.float64) / half)
        angles = np.arange(c.max_context, dtype=np.float64)[:, None] * inv_freq[None, :]
        self._cos = np.cos(angles).astype(np.float32)
        self._sin = np.sin(angles).astype(np.float32)
        self.dense_params = c.n_layers * (4 * d * d + 2 * d * f) + d * v

    @property
    def num_params(self) -> int:
        return int(
            self.embed.size
            + self.dense_params
            + (2 * self.config.n_layers + 1) * self.config.d_model
        )

    def flops(self, n_new: int, n_past: int) -> float:
        """Model FLOPs for `n_new` tokens after `n_past` cached ones: 2*params*tokens + causal attention."""
        c = self.config
        attn_pairs = n_new * n_past + n_new * (n_new + 1) / 2  # (query, key) pairs actually needed
        return 2.0 * self.dense_params * n_new + 4.0 * c.n_layers * c.d_model * attn_pairs

    def _rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Rotate x [n, H, hd] by positions pos [n] (rotate-half convention)."""
        half = x.shape[-1] // 2
        cos, sin = self._cos[pos][:, None, :], self._sin[pos][:, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)

    def _qkv(self, layer: dict[str, np.ndarray], h: np.ndarray, pos: np.ndarray):
        c = self.config
        qkv = _rms_norm(h, layer["attn_norm"]) @ layer["wqkv"]
        q, k, v = (t.reshape(len(h), c.n_heads, c.head_dim) for t in np.split(qkv, 3, axis=1))
        return self._rope(q, pos), self._rope(k, pos), v

    def _mlp(self, layer: dict[str, np.ndarray], h: np.ndarray) -> np.ndarray:
        return _gelu(_rms_norm(h, layer["mlp_norm"]) @ layer["w_up"]) @ layer["w_down"]

    def forward_prefill(
        self,
        tokens: Sequence[int],
        past_k: np.ndarray | None = None,
        past_v: np.ndarray | None = None,
        q_chunk: int = 256,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run `tokens` after an optional cached prefix; return (last logits, full K, full V).

        K/V are [L, H, past + n, hd]. Queries are processed in chunks so the score matrix stays
        bounded and masked-out keys beyond the chunk are never multiplied.
        """
        c = self.config
        n_past = 0 if past_k is None else past_k.shape[2]
        n = len(tokens)
        total = n_past + n
        if n < 1 or total > c.max_context:
            raise ValueError(f"need 1 <= new tokens and total <= {c.max_context}, got {n_past}+{n}")
        kv_shape = (c.n_layers, c.n_heads, total, c.head_dim)
        k_all, v_all = np.empty(kv_shape, np.float32), np.empty(kv_shape, np.float32)
        if past_k is not None and past_v is not None:
            k_all[:, :, :n_past], v_all[:, :, :n_past] = past_k, past_v
        pos = np.arange(n_past, total)
        h = self.embed[np.asarray(tokens, dtype=np.int64)]
        scale = np.float32(c.head_dim**-0.5)
        m = min(n, q_chunk)
        causal = np.triu(np.full((m, m), -np.inf, np.float32), k=1)
        for li, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, h, pos)
            k_all[li, :, n_past:] = k.transpose(1, 0, 2)
            v_all[li, :, n_past:] = v.transpose(1, 0, 2)
            q = q.transpose(1, 0, 2) * scale  # [H, n, hd]
            attn = np.empty((n, c.n_heads, c.head_dim), np.float32)
            for s in range(0, n, q_chunk):
                e = min(n, s + q_chunk)
                n_keys = n_past + e
                scores = q[:, s:e] @ k_all[li, :, :n_keys].transpose(0, 2, 1)  # [H, e-s, keys]
                # Only the chunk's own keys can lie in the future: mask that square, in place.
                scores[:, :, n_past + s :] += causal[: e - s, : e - s]
                attn[s:e] = (_softmax_(scores) @ v_all[li, :, :n_keys]).transpose(1, 0, 2)
            h = h + attn.reshape(n, c.d_model) @ layer["wo"]
            h = h + self._mlp(layer, h)
        logits = _rms_norm(h[-1:], self.final_norm) @ self.lm_head
        return logits[0], k_all, v_all

    def forward_decode(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        k_bufs: Sequence[np.ndarray],
        v_bufs: Sequence[np.ndarray],
    ) -> np.ndarray:
        """One token for each of B sequences; returns logits [B, V].

        Projections and MLP are one batched matmul per layer across all sequences; attention
        loops over sequences because their lengths differ. Sequence i's new K/V is written into
        k_bufs[i] / v_bufs[i] ([L, H, capacity, hd]) at positions[i].
        """
        c = self.config
        b = len(tokens)
        h = self.embed[tokens]
        scale = np.float32(c.head_dim**-0.5)
        for li, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, h, positions)
            q = q * scale
            attn = np.empty((b, c.n_heads, c.head_dim), np.float32)
            for i in range(b):
                p = int(positions[i])
                kb, vb = k_bufs[i][li], v_bufs[i][li]
                kb[:, p], vb[:, p] = k[i], v[i]
                scores = (kb[:, : p + 1] @ q[i][:, :, None])[:, :, 0]  # [H, p+1]
                attn[i] = (_softmax_(scores)[:, None, :] @ vb[:, : p + 1])[:, 0]
            h = h + attn.reshape(b, c.d_model) @ layer["wo"]
            h = h + self._mlp(layer, h)
        return _rms_norm(h, self.final_norm) @ self.lm_head


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

    def clear_prefix_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _block_keys(self, tokens: list[int]) -> list[bytes]:
        bs = self.config.kv_block_size
        keys, prev = [], b""
        for i in range(len(tokens) // bs):
            block = np.asarray(tokens[i * bs : (i + 1) * bs], dtype=np.int32).tobytes()
            prev = hashlib.blake2b(prev + block, digest_size=16).digest()
            keys.append(prev)
        return keys

    def prefill(
        self, prompt_tokens: Sequence[int], params: SamplingParams | None = None
    ) -> PrefillResult:
        """KV of the prompt and its first token, sampled with `params` (greedy if None).

        Give the decode side the same `params`: with a seed, the first token takes the first
        draw of the sequence's random stream and the decode engine continues that stream.
        """
        t0 = time.perf_counter()
        params = params or SamplingParams()
        tokens = _validate_tokens(prompt_tokens, self.config)
        bs, n = self.config.kv_block_size, len(tokens)
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
        first = sample_token(logits, params.temperature, params.make_rng())
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


@dataclass
class _Waiting:
    seq_id: Hashable
    kv: KVCache
    first_token: int
    params: SamplingParams
    reserved: int


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
    ) -> bool:
        """Queue a prefilled sequence; returns True if admitted at once, False if it waits.

        `first_token` counts as generated token 1 (towards max_tokens, stop strings and text).
        """
        params = params or SamplingParams()
        c = self.config
        expect = (c.n_layers, c.n_heads, kv.num_tokens, c.head_dim)
        if kv.k.shape != expect:
            raise ValueError(f"KV shape {kv.k.shape} does not match this model {expect}")
        if not 1 <= kv.num_tokens < c.max_context:
            raise ValueError("prompt KV must hold 1..max_context-1 tokens")
        reserved = self.reservation(kv.num_tokens, params)
        if reserved > c.kv_capacity_tokens:
            raise ValueError(
                f"sequence needs {reserved} KV tokens > capacity {c.kv_capacity_tokens}"
            )
        with self._lock:
            if seq_id in self._running or any(w.seq_id == seq_id for w in self._waiting):
                raise ValueError(f"duplicate seq_id {seq_id!r}")
            item = _Waiting(seq_id, kv, int(first_token), params, reserved)
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
        p = item.params
        rng = None
        if p.temperature > 0:
            rng = p.make_rng()
            rng.random()  # the prefill engine used the first draw for the first token
        seq = _Seq(item.seq_id, p, n, item.reserved, k, v, kv_len=n, rng=rng)
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
        return StepOutput(seq.seq_id, token, delta, finished, seq.finish_reason, len(seq.generated))

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
                    tok = sample_token(row, s.params.temperature, s.rng)
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


class Engine:
    """Prefill + decode sharing one model in one process (tests, local runs, reference output)."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config or ModelConfig()
        self.model = TinyTransformer(self.config)
        self.tokenizer = ByteTokenizer()
        self.prefill_engine = PrefillEngine(self.config, self.model)
        self._ids = itertools.count()

    def generate(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None
    ) -> GenerateResult:
        """Complete one prompt (text gets a BOS prepended) with its own fresh decode engine."""
        params = params or SamplingParams()
        tokens = (
            self.tokenizer.encode(prompt, add_bos=True) if isinstance(prompt, str) else list(prompt)
        )
        res = self.prefill_engine.prefill(tokens, params)
        decoder = DecodeEngine(self.config, self.model)
        seq_id = next(self._ids)
        decoder.add(seq_id, res.kv, res.first_token, params)
        out_tokens, text, reason = [res.first_token], [], None
        while reason is None:
            for out in decoder.step():
                text.append(out.text_delta)
                if out.token is not None:
                    out_tokens.append(out.token)
                reason = out.finish_reason
        return GenerateResult(
            prompt_tokens=tokens,
            tokens=out_tokens,
            text="".join(text),
            finish_reason=reason,
            cached_tokens=res.cached_tokens,
            flops=res.flops + decoder.total_flops,
        )
