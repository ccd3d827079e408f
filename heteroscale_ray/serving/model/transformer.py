"""The model itself: `ModelConfig`, the numpy `TinyTransformer`, and token sampling.

Weights are a pure function of `ModelConfig.seed`, so every process that builds the same config
builds the same model (prefill and decode replicas rely on this).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from heteroscale_ray.serving.tokenizer import VOCAB_SIZE


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
    top_p: float = 1.0  # nucleus sampling: the smallest top set whose probability >= top_p
    logprobs: int | None = None  # None: none; k: the sampled token's logprob plus the top k

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError("logprobs must be >= 0")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    def make_rng(self, position: int = 0) -> np.random.Generator:
        """The sequence's random stream positioned for output token `position`.

        Token i of the output takes draw i (`sample_token` takes exactly one per token), so a
        sequence resumed at token i elsewhere continues exactly as the unbroken run would."""
        rng = np.random.default_rng(self.seed)
        if position > 0:
            rng.random(position)  # the draws tokens 0..position-1 took
        return rng


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


def sample_token(
    logits: np.ndarray,
    temperature: float,
    rng: np.random.Generator | None,
    top_p: float = 1.0,
) -> int:
    """Greedy argmax for temperature 0, else one uniform draw from `rng` (exactly one per token).

    With `top_p` < 1 the draw is over the smallest set of most likely tokens whose probability
    (after temperature) reaches `top_p`, renormalised (nucleus sampling)."""
    if temperature <= 0 or rng is None:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        ps = p[order]
        total = np.cumsum(ps)
        keep = min(int(np.searchsorted(total, top_p * total[-1], side="left")) + 1, len(ps))
        cdf = total[:keep]
        j = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        return int(order[min(j, keep - 1)])
    cdf = np.cumsum(p)
    idx = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(idx, len(cdf) - 1)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability and the `k` most likely tokens at its position.

    Log probabilities are of the model's own distribution (log-softmax of the logits, before
    temperature and top_p), as OpenAI and vLLM report them."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(logits: np.ndarray, token: int, k: int) -> TokenLogprob:
    """`token`'s log probability under `logits` and the top-`k` (id, logprob), most likely first."""
    z = logits.astype(np.float64)
    z = z - z.max()
    lp = z - np.log(np.exp(z).sum())
    top = np.argsort(-lp, kind="stable")[:k] if k > 0 else np.empty(0, np.int64)
    return TokenLogprob(int(token), float(lp[token]), tuple((int(i), float(lp[i])) for i in top))


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
