"""OpenAI request parsing and validation, the chat template, logprobs and top_p: no Ray."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from heteroscale_ray.serving.api_types import chat_logprobs, completion_logprobs
from heteroscale_ray.serving.model import (
    DecodeEngine,
    ModelConfig,
    PrefillEngine,
    SamplingParams,
    TinyTransformer,
    TokenLogprob,
    token_logprob,
)
from heteroscale_ray.serving.model.transformer import sample_token
from heteroscale_ray.serving.router import (
    ApiError,
    ChatCompletionRequest,
    chat_prompt,
    default_max_tokens,
    parse_chat,
    parse_completion,
    sampling_params,
)
from heteroscale_ray.serving.routing_table import ServiceRoute
from heteroscale_ray.serving.tokenizer import apply_chat_template, token_text

CHAT = [{"role": "user", "content": "hi"}]


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"functions": [{}]}, "functions"),
        ({"logit_bias": {"65": 5}}, "logit_bias"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"echo": True, "logprobs": 2}, "echo"),
        ({"logprobs": 21}, "logprobs"),
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"top_p": 0}, "top_p"),
        ({"temperature": 3}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"made_up": True}}, "stream_options.made_up"),
        ({"made_up": 1}, "made_up"),
        # keys spelled like the type names pydantic adds to union paths (found by fuzzing:
        # named 'None')
        ({"list[str]": []}, "list[str]"),
        ({"str": "x"}, "str"),
    ],
)
def test_completions_rejects_what_it_does_not_honour_naming_the_parameter(
    fields: dict[str, object], param: str
) -> None:
    with pytest.raises(ApiError) as e:
        parse_completion(_body(model="m", prompt="x", **fields))
    assert e.value.status == 400
    assert e.value.param == param
    assert param.split(".")[-1] in str(e.value)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function"}], "tool_choice": "auto"}, "tool_choice"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_tokens": 4, "max_completion_tokens": 5}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages.0.name"),
        ({"echo": True}, "echo"),
        ({"logprobs": 3}, "logprobs"),
    ],
)
def test_chat_rejects_what_it_does_not_honour_naming_the_parameter(
    fields: dict[str, object], param: str
) -> None:
    body = {"model": "m", "messages": CHAT, **fields}
    with pytest.raises(ApiError) as e:
        parse_chat(json.dumps(body).encode())
    assert e.value.status == 400
    if param == "tool_choice":  # whichever unsupported one comes first, it is named
        assert e.value.param in {"tools", "tool_choice"}
    else:
        assert e.value.param == param, str(e.value)


def test_neutral_values_of_unsupported_parameters_are_accepted() -> None:
    req = parse_completion(
        _body(
            model="m",
            prompt="x",
            n=2,
            best_of=2,
            suffix="",
            presence_penalty=0,
            frequency_penalty=0.0,
            logit_bias={},
            user="me",
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},  # GuideLLM's
        )
    )
    assert req.n == 2 and req.include_usage and req.continuous_usage


def test_sampling_params_per_choice() -> None:
    req = parse_completion(
        _body(model="m", prompt="x", seed=7, stop="\n", top_p=0.5, logprobs=3, temperature=0.7)
    )
    p0, p1 = (sampling_params(req, 10, i) for i in range(2))
    assert (p0.seed, p1.seed) == (7, 8)
    assert p0.stop == ("\n",) and p0.top_p == 0.5 and p0.logprobs == 3
    assert p0.temperature == 0.7 and p0.max_tokens == 10
    chat = parse_chat(
        json.dumps(
            {"model": "m", "messages": CHAT, "logprobs": True, "max_completion_tokens": 5}
        ).encode()
    )
    assert isinstance(chat, ChatCompletionRequest)
    assert chat.requested_max_tokens == 5 and sampling_params(chat, 5, 0).logprobs == 0
    no_lp = parse_chat(json.dumps({"model": "m", "messages": CHAT, "max_tokens": 3}).encode())
    assert no_lp.requested_max_tokens == 3 and sampling_params(no_lp, 3, 0).logprobs is None


def test_chat_template_is_the_documented_one() -> None:
    req = parse_chat(
        json.dumps(
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": "Be terse."},
                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                ],
            }
        ).encode()
    )
    want = "<|system|>\nBe terse.\n<|user|>\nHi\n<|assistant|>\n"
    assert (
        chat_prompt(req) == want == apply_chat_template([("system", "Be terse."), ("user", "Hi")])
    )
    svc = ServiceRoute("m", ModelConfig(max_context=64, kv_capacity_tokens=1000))
    assert default_max_tokens(svc, 10) == 54


def test_top_p_restricts_sampling_to_the_nucleus() -> None:
    logits = np.array([5.0, 4.9, 0.0, -1.0, -2.0])
    rng = np.random.default_rng(0)
    picks = {sample_token(logits, 1.0, rng, top_p=0.9) for _ in range(200)}
    assert picks <= {0, 1} and picks == {0, 1}
    # top_p=1 keeps the old draw exactly (same seed, same token sequence).
    a = [sample_token(logits, 1.0, r) for r in [np.random.default_rng(3)] for _ in range(20)]
    b = [sample_token(logits, 1.0, r, 1.0) for r in [np.random.default_rng(3)] for _ in range(20)]
    assert a == b


def test_token_logprob_is_the_models_log_softmax() -> None:
    logits = np.array([2.0, 1.0, 0.5, -1.0], np.float32)
    lp = token_logprob(logits, 2, 2)
    z = np.exp(logits - logits.max())
    assert lp.logprob == pytest.approx(math.log(z[2] / z.sum()))
    assert [t for t, _ in lp.top] == [0, 1]
    assert sum(math.exp(v) for v in (lp.top[0][1], lp.top[1][1])) < 1


def test_decode_engine_returns_logprobs_for_every_generated_token() -> None:
    cfg = ModelConfig(n_layers=1, d_model=32, n_heads=2, max_context=128)
    model = TinyTransformer(cfg)
    params = SamplingParams(max_tokens=6, ignore_eos=True, logprobs=2)
    res = PrefillEngine(cfg, model).prefill([256, 72, 105], params)
    first = token_logprob(res.first_logits, res.first_token, 2)
    dec = DecodeEngine(cfg, model)
    dec.add("a", res.kv, res.first_token, params, first)
    entries: list[TokenLogprob] = []
    tokens = [res.first_token]
    while dec.has_work:
        for out in dec.step():
            entries.extend(out.logprobs)
            if out.token is not None:
                tokens.append(out.token)
    assert [e.token for e in entries] == tokens and len(entries) == 6
    assert entries[0] == first
    assert all(len(e.top) == 2 and e.logprob <= 0 for e in entries)
    # Greedy: the sampled token is the most likely one.
    assert all(e.top[0][0] == e.token for e in entries)
    # No logprobs asked: none computed.
    dec.add("b", res.kv, res.first_token, SamplingParams(max_tokens=3))
    assert all(not o.logprobs for o in dec.step())


def test_logprobs_formats() -> None:
    entries = [TokenLogprob(72, -0.5, ((72, -0.5), (73, -1.0))), TokenLogprob(200, -2.0, ())]
    c = completion_logprobs(entries, [0, 1])
    assert c["tokens"] == ["H", token_text(200)] and c["token_logprobs"] == [-0.5, -2.0]
    assert c["top_logprobs"][0] == {"H": -0.5, "I": -1.0}
    assert c["top_logprobs"][1] == {"bytes:\\xc8": -2.0}  # the sampled token is always there
    assert c["text_offset"] == [0, 1]
    ch = chat_logprobs(entries)["content"]
    assert ch[0]["token"] == "H" and ch[0]["bytes"] == [72]
    assert [t["token"] for t in ch[0]["top_logprobs"]] == ["H", "I"]
    assert ch[1]["bytes"] == [200] and ch[1]["top_logprobs"] == []
