"""`Engine`: prefill and decode in one process, for tests, local runs and reference output."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from heteroscale_ray.serving.model.decode_engine import DecodeEngine
from heteroscale_ray.serving.model.prefill_engine import PrefillEngine
from heteroscale_ray.serving.model.transformer import ModelConfig, SamplingParams, TinyTransformer
from heteroscale_ray.serving.tokenizer import ByteTokenizer


@dataclass
class GenerateResult:
    prompt_tokens: list[int]
    tokens: list[int]  # generated tokens, first token included
    text: str
    finish_reason: str
    cached_tokens: int
    flops: float


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
