"""CPU inference for prefill/decode disaggregation: a small real transformer in numpy.

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

Modules: `transformer` (ModelConfig, TinyTransformer, sampling), `prefill_engine`,
`decode_engine`, and `generate` (the colocated `Engine`). Nothing here imports Ray. Both engines
guard their state with a lock, so a deployment may call `add` from request handlers while a
background loop calls `step`.
"""

from heteroscale_ray.serving.model.decode_engine import DecodeEngine, StepOutput
from heteroscale_ray.serving.model.generate import Engine, GenerateResult
from heteroscale_ray.serving.model.prefill_engine import KVCache, PrefillEngine, PrefillResult
from heteroscale_ray.serving.model.transformer import (
    ModelConfig,
    SamplingParams,
    TinyTransformer,
    TokenLogprob,
    measure_peak_flops,
    token_logprob,
)

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
    "TokenLogprob",
    "measure_peak_flops",
    "token_logprob",
]
