"""End to end on the shared local Ray cluster: OpenAI client -> router -> prefill -> KV -> decode.

One DG of service "chat" in S1 domain s1-a0: prefill on L20, decode on H20, emulating dense-8b
timing; a tiny real model (2 layers, width 64) keeps the CPU cost low.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from heteroscale_ray.config.topology import LABEL_GPU_TYPE, LABEL_S1
from heteroscale_ray.serving.emulation import EmulationConfig
from heteroscale_ray.serving.model import Engine, ModelConfig, SamplingParams

pytestmark = pytest.mark.slow

SERVICE = "chat"
ENGINE = ModelConfig(n_layers=2, d_model=64, n_heads=4, max_context=512, kv_capacity_tokens=8192)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    url: str
    app: str


@pytest.fixture(scope="module")
def stack(ray_cluster: object) -> Iterator[Stack]:
    from ray import serve

    from heteroscale_ray.serving.deployments import (
        DgServingSpec,
        RoleServing,
        deploy_dg,
        deploy_ingress,
    )
    from heteroscale_ray.serving.routing_table import kill_routing_table

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        deploy_ingress(max_inflight=64, token_timeout_s=20.0)
        spec = DgServingSpec(
            service=SERVICE,
            dg_id="a0",
            prefill=RoleServing(gpu_type="L20"),
            decode=RoleServing(gpu_type="H20"),
            domain="s1-a0",
            domain_level="s1",
            model_profile="dense-8b",
            engine=ENGINE,
            emulation=EmulationConfig(enabled=True, time_scale=1.0),
        )
        app = deploy_dg(spec)
        url = f"http://127.0.0.1:{port}"
        _wait_routed(url)
        yield Stack(url=url, app=app)
    finally:
        serve.shutdown()
        kill_routing_table()


def _wait_routed(url: str, timeout_s: float = 60.0) -> None:
    """Until the HTTP proxy routes /v1 to the ingress: `serve.run` returns once the app is
    deployed, but a loaded machine's proxy can still answer its own plain-text 404 for a while."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = requests.get(f"{url}/v1/models", timeout=10)
            if r.status_code == 200 and r.headers.get("content-type", "").startswith(
                "application/json"
            ):
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/v1/models not routed after {timeout_s:.0f} s")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def client(stack: Stack):  # type: ignore[no-untyped-def]
    import openai

    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=60)


def _reference(prompt: str, max_tokens: int) -> str:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Engine(ENGINE).generate(prompt, params).text


def test_openai_client_completes_streams_and_lists(client) -> None:  # type: ignore[no-untyped-def]
    models = [m.id for m in client.models.list().data]
    assert SERVICE in models

    prompt = "The quick brown fox"
    r = client.completions.create(
        model=SERVICE, prompt=prompt, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens == len(prompt.encode()) + 1  # byte tokens + BOS
    assert r.choices[0].finish_reason == "length"
    # Disaggregated prefill -> object store -> decode gives the single-process engine's text.
    assert r.choices[0].text == _reference(prompt, 12)

    chunks = list(
        client.completions.create(
            model=SERVICE,
            prompt=prompt,
            max_tokens=12,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_completions_stream_and_not(client) -> None:  # type: ignore[no-untyped-def]
    from heteroscale_ray.serving.tokenizer import apply_chat_template

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    r = client.chat.completions.create(
        model=SERVICE,
        messages=messages,
        max_completion_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8
    prompt = apply_chat_template((m["role"], m["content"]) for m in messages)
    assert r.usage.prompt_tokens == len(prompt.encode()) + 1  # the documented template + BOS
    assert r.choices[0].message.content == _reference(prompt, 8)

    chunks = list(
        client.chat.completions.create(
            model=SERVICE,
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    last = chunks[-1]  # include_usage: a last chunk with usage and no choices
    assert last.choices == [] and last.usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])


def test_openai_parameters_are_honoured(client) -> None:  # type: ignore[no-untyped-def]
    # n: independent choices; seed: reproducible (choice i uses seed + i).
    kw = {"model": SERVICE, "prompt": "Once", "max_tokens": 6, "temperature": 1.0, "seed": 11}
    a = client.completions.create(n=2, extra_body={"ignore_eos": True}, **kw)
    b = client.completions.create(n=2, extra_body={"ignore_eos": True}, **kw)
    assert sorted(c.index for c in a.choices) == [0, 1]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert a.usage.completion_tokens == 12

    # stop: generation ends at the stop string, which is not included.
    full = (
        client.completions.create(
            model=SERVICE,
            prompt="stop",
            max_tokens=20,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        .choices[0]
        .text
    )
    cut = full[3:5] if len(full) >= 5 else full[-2:]
    stopped = client.completions.create(
        model=SERVICE,
        prompt="stop",
        max_tokens=20,
        temperature=0,
        stop=[cut],
        extra_body={"ignore_eos": True},
    ).choices[0]
    assert stopped.finish_reason == "stop" and stopped.text == full[: full.index(cut)]

    # echo: the prompt comes first.
    echoed = client.completions.create(
        model=SERVICE, prompt="Echo me", max_tokens=3, temperature=0, echo=True
    ).choices[0]
    assert echoed.text.startswith("Echo me")

    # logprobs: top-k per generated token in the completions format.
    lp = (
        client.completions.create(
            model=SERVICE,
            prompt="Log",
            max_tokens=5,
            temperature=0,
            logprobs=2,
            extra_body={"ignore_eos": True},
        )
        .choices[0]
        .logprobs
    )
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert len(lp.text_offset) == 5 and lp.text_offset[0] == 0
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(2 <= len(top) <= 3 for top in lp.top_logprobs)

    # streaming with n=2: choices interleaved, each with its index.
    chunks = list(
        client.completions.create(
            model=SERVICE,
            prompt="Once",
            max_tokens=6,
            temperature=1.0,
            seed=11,
            n=2,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    for i in (0, 1):
        text = "".join(c.choices[0].text for c in chunks if c.choices[0].index == i)
        assert text == a.choices[i].text


def test_unsupported_parameters_are_rejected_by_name(client) -> None:  # type: ignore[no-untyped-def]
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=SERVICE,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert e.value.status_code == 400 and "tools" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=SERVICE, prompt="x", max_tokens=2, logit_bias={"65": 3})
    assert "logit_bias" in str(e.value)


def test_continuous_usage_stats_as_vllm_and_guidellm_send_them(client) -> None:  # type: ignore[no-untyped-def]
    """GuideLLM sends vLLM's stream_options on every streamed request: each chunk then carries
    its choice's running usage, and the last one the request's."""
    options = {"include_usage": True, "continuous_usage_stats": True}
    *chunks, last = client.completions.create(
        model=SERVICE,
        prompt="Once",
        max_tokens=6,
        temperature=1.0,
        seed=11,
        n=2,
        stream=True,
        stream_options=options,
        extra_body={"ignore_eos": True},
    )
    assert last.choices == [] and last.usage.completion_tokens == 12
    prompt = last.usage.prompt_tokens
    counts: dict[int, list[int]] = {0: [], 1: []}
    for c in chunks:
        assert c.usage.prompt_tokens == prompt
        assert c.usage.total_tokens == prompt + c.usage.completion_tokens
        counts[c.choices[0].index].append(c.usage.completion_tokens)
    assert all(n == sorted(n) and n[0] >= 1 and n[-1] == 6 for n in counts.values()), counts

    role, *chat, chat_last = client.chat.completions.create(
        model=SERVICE,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options=options,
        extra_body={"ignore_eos": True},
    )
    assert role.choices[0].delta.role == "assistant" and role.usage.completion_tokens == 0
    assert chat[-1].choices[0].finish_reason == "length" and chat[-1].usage.completion_tokens == 4
    assert chat_last.choices == [] and chat_last.usage.completion_tokens == 4


def test_fastapi_errors_are_openai_errors(stack: Stack) -> None:
    """Unknown URLs and wrong methods get the OpenAI envelope with FastAPI's status."""
    r = requests.get(f"{stack.url}/v1/nope", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = requests.get(f"{stack.url}/v1/chat/completions", timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "POST", r.text
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_replicas_land_on_matching_nodes(stack: Stack) -> None:
    import ray

    from heteroscale_ray.serving.deployments import replica_details, replica_stats

    labels = {n["NodeID"]: n.get("Labels", {}) for n in ray.nodes() if n["Alive"]}
    want = {"prefill": "L20", "decode": "H20"}
    for role, gpu in want.items():
        details = replica_details(stack.app, role)
        assert details
        for rep in details:
            node = labels[rep["node_id"]]
            assert node[LABEL_GPU_TYPE] == gpu and node[LABEL_S1] == "s1-a0"
    deadline = time.monotonic() + 10
    while len(stats := replica_stats(stack.app)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert {s.role for s in stats} == {"prefill", "decode"}
    for s in stats:
        assert s.node_labels[LABEL_GPU_TYPE] == want[s.role]
        assert s.node_labels[LABEL_S1] == "s1-a0"
        assert s.emulated is True


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (json.dumps({"model": SERVICE}).encode(), 400, "missing_field"),
        (json.dumps({"model": SERVICE, "prompt": "hi", "max_tokens": 0}).encode(), 400, None),
        (
            json.dumps({"model": SERVICE, "prompt": "hi", "max_tokens": 100000}).encode(),
            400,
            "context_length_exceeded",
        ),
        (
            json.dumps({"model": SERVICE, "prompt": "x" * 600, "max_tokens": 4}).encode(),
            400,
            "context_length_exceeded",
        ),
        (json.dumps({"model": "nope", "prompt": "hi"}).encode(), 404, "model_not_found"),
    ],
    ids=[
        "bad-json",
        "missing-prompt",
        "max-tokens-0",
        "max-tokens-huge",
        "prompt-too-long",
        "unknown-model",
    ],
)
def test_bad_requests_get_openai_errors(
    stack: Stack, body: bytes, status: int, code: str | None
) -> None:
    r = requests.post(
        f"{stack.url}/v1/completions",
        data=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if code is not None:
        assert err["code"] == code


def test_health_version_and_metrics(stack: Stack, client) -> None:  # type: ignore[no-untyped-def]
    from test_promtool import promtool_problems

    health = requests.get(f"{stack.url}/health", timeout=10)
    assert health.status_code == 200
    assert requests.get(f"{stack.url}/healthz", timeout=10).json()["status"] == "ok"
    assert requests.get(f"{stack.url}/version", timeout=10).json()["version"]
    client.completions.create(model=SERVICE, prompt="metrics", max_tokens=3)
    deadline = time.monotonic() + 5  # replicas push stats about once a second
    while True:
        text = requests.get(f"{stack.url}/metrics", timeout=10).text
        if "heteroscale_decode_tokens_per_second{" in text or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert "heteroscale_decode_tokens_per_second{" in text
    assert "heteroscale_prefill_tokens_per_second{" in text
    assert f'heteroscale_prompt_tokens_total{{service="{SERVICE}"}}' in text
    assert "heteroscale_time_to_first_token_seconds_bucket{" in text
    assert "heteroscale_e2e_request_latency_seconds_count{" in text
    # Each role exports only its own families.
    assert not re.search(r'^heteroscale_decode_tokens_per_second\{[^}]*role="prefill"', text, re.M)
    assert not re.search(r'^heteroscale_prefill_tokens_per_second\{[^}]*role="decode"', text, re.M)
    assert promtool_problems(text) == ""


def test_ingress_reports_the_offered_prompt_load(stack: Stack, client) -> None:  # type: ignore[no-untyped-def]
    """Prompt tokens and requests are counted at the ingress, replicas under concurrent load
    report their queue, TTFT split and step time, and all of it reaches `Signals`."""
    from heteroscale_ray.actors.observe import build_observations
    from heteroscale_ray.policy.types import RoleCounts
    from heteroscale_ray.serving.deployments import (
        ingress_loads,
        prompt_arrival_rates,
        replica_stats,
    )

    def one(_: int) -> None:
        client.completions.create(model=SERVICE, prompt="x" * 200, max_tokens=4)

    sent_at = time.monotonic()
    with ThreadPoolExecutor(8) as pool:  # 8 at once: they queue at the one prefill replica
        list(pool.map(one, range(8)))
    full = 8 * 200 / 10.0  # all 1,600 tokens in the 10 s window
    # Each ingress replica reports every refresh (0.5 s): wait until all of them have.
    deadline = time.monotonic() + 5
    while (rate := prompt_arrival_rates().get(SERVICE, 0.0)) < full and (
        time.monotonic() < deadline
    ):
        time.sleep(0.3)
    if time.monotonic() - sent_at < 8.0:
        assert rate >= full
    else:  # a loaded machine: the first arrivals may have left the window already
        assert rate >= 200 / 10.0
    load = ingress_loads()[SERVICE]
    assert load.requests_per_s is not None and load.requests_per_s >= 8 / 10.0
    text = requests.get(f"{stack.url}/metrics", timeout=10).text
    assert f'heteroscale_prompt_arrival_tokens_per_second{{service="{SERVICE}"}}' in text
    assert f'heteroscale_request_arrivals_per_second{{service="{SERVICE}"}}' in text
    assert "heteroscale_ttft_wait_p99_seconds{" in text
    assert "heteroscale_decode_step_seconds_mean{" in text

    deadline = time.monotonic() + 5  # replicas push stats about once a second
    while True:
        pre, dec = replica_stats(stack.app, "prefill"), replica_stats(stack.app, "decode")
        ready = (
            pre
            and dec
            and all(s.ttft_wait_p99 is not None for s in pre)
            and all(s.step_mean_s is not None and s.finished_requests for s in dec)
        )
        if ready or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    for s in pre:
        assert s.prefill_queue_s is not None and s.prefill_tokens_per_busy_s
        assert s.ttft_wait_p99 is not None and s.ttft_wait_p99 > 0
        assert s.ttft_service_p99 is not None and s.ttft_service_p99 > 0.03  # emulated L20
    for s in dec:
        assert s.step_mean_s is not None and s.step_mean_s > 0
        assert s.finished_requests >= 1 and s.output_tokens_mean is not None
        assert s.running_mean > 0

    counts = {SERVICE: RoleCounts(prefill_ready=len(pre), decode_ready=len(dec))}
    loads = ingress_loads()
    sig = build_observations([SERVICE], pre + dec, counts, loads)[SERVICE].signals
    assert sig.observed_at is not None
    assert sig.request_rate == loads[SERVICE].requests_per_s and sig.request_rate > 0
    # Earlier tests' prompts (up to 600 bytes) may share the 10 s window with ours (200).
    assert sig.prompt_mean == loads[SERVICE].prompt_mean and sig.prompt_mean > 1
    # Earlier tests on the shared cluster may have finished requests in the same window.
    assert sig.output_mean is not None and sig.output_mean >= 1
    assert sig.prefill_queue_s is not None and sig.decode_queue is not None
    assert sig.decode_running is not None and sig.decode_running > 0
    assert sig.ttft_wait_p99_s is not None and sig.ttft_service_p99_s is not None
    assert sig.decode_step_s is not None and sig.decode_step_s > 0


def _requests_served(app: str) -> int:
    from heteroscale_ray.serving.deployments import replica_stats

    return sum(s.requests_total for s in replica_stats(app, "decode"))


def _wait_served(app: str, at_least: int) -> int:
    deadline = time.monotonic() + 5  # stats are pushed about once a second
    while (n := _requests_served(app)) < at_least and time.monotonic() < deadline:
        time.sleep(0.3)
    return n


def test_prefills_the_handle_holds_are_reported_as_queued_work(stack: Stack, client) -> None:  # type: ignore[no-untyped-def]
    """A prefill replica that takes one call at a time (max_ongoing_requests 1) and four
    requests at once: Serve holds three at the handle, where the replica's queue cannot see
    them. The ingress reports their prompt tokens until a replica takes them, and the
    observation counts them as queued prefill work."""
    from heteroscale_ray.actors.observe import build_observations
    from heteroscale_ray.policy.types import RoleCounts
    from heteroscale_ray.serving.deployments import (
        DgServingSpec,
        RoleServing,
        delete_dg,
        deploy_dg,
        ingress_loads,
        replica_stats,
    )

    name = "held"
    app = deploy_dg(
        DgServingSpec(
            service=name,
            dg_id="h0",
            prefill=RoleServing(gpu_type="L20", max_ongoing_requests=1),
            decode=RoleServing(gpu_type="H20"),
            domain="s1-a1",
            engine=ENGINE,
            emulation=EmulationConfig(enabled=True, time_scale=20.0),  # ~1 s per prefill
        )
    )
    try:
        time.sleep(1.0)  # routers refresh their table every 0.5 s

        def one(_: int) -> None:
            client.completions.create(model=name, prompt="h" * 400, max_tokens=2)

        one(0)  # the replica prices its prefill rate on a first prompt; held work is read by it
        deadline = time.monotonic() + 15
        while not any(s.prefill_tokens_per_busy_s for s in replica_stats(app, "prefill")):
            assert time.monotonic() < deadline, "the prefill replica never reported its rate"
            time.sleep(0.3)
        held_seen: list[float] = []
        observed: list[float] = []
        with ThreadPoolExecutor(4) as pool:
            done = pool.map(one, range(4))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not held_seen:
                load = ingress_loads().get(name)
                if load is not None and load.held_prompt_tokens:
                    held_seen.append(load.held_prompt_tokens)
                    pre, dec = replica_stats(app, "prefill"), replica_stats(app, "decode")
                    counts = {name: RoleCounts(prefill_ready=len(pre), decode_ready=len(dec))}
                    sig = build_observations([name], pre + dec, counts, {name: load})[name].signals
                    own = max((s.prefill_queue_s or 0.0) for s in pre) if pre else 0.0
                    if sig.prefill_queue_s is not None:
                        observed.append(sig.prefill_queue_s - own)
                time.sleep(0.1)
            list(done)
        assert held_seen and held_seen[0] >= 400  # at least one whole prompt held
        assert observed and observed[0] > 0  # counted as queued prefill seconds
        deadline = time.monotonic() + 10  # all taken: the next reports say so
        while (left := ingress_loads()[name].held_prompt_tokens) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert left == 0.0
    finally:
        delete_dg(app)


def test_draining_and_ratio_gate_steer_requests(stack: Stack, client) -> None:  # type: ignore[no-untyped-def]
    from heteroscale_ray.serving.deployments import (
        DgServingSpec,
        RoleServing,
        delete_dg,
        deploy_dg,
        set_draining,
        set_ratio_gate,
    )

    other = deploy_dg(
        DgServingSpec(
            service=SERVICE,
            dg_id="a1",
            prefill=RoleServing(gpu_type="L20"),
            decode=RoleServing(gpu_type="H20"),
            domain="s1-a1",
            engine=ENGINE,
            emulation=EmulationConfig(enabled=True),
        )
    )
    try:

        def send(n: int) -> None:
            for i in range(n):
                client.completions.create(model=SERVICE, prompt=f"g{i}", max_tokens=2)

        time.sleep(1.0)  # routers refresh their table every 0.5 s
        base_a0, base_a1 = _wait_served(stack.app, 0), _wait_served(other, 0)
        set_draining(stack.app, True)
        time.sleep(1.0)
        send(4)
        assert _wait_served(other, base_a1 + 4) == base_a1 + 4
        assert _requests_served(stack.app) == base_a0

        set_draining(stack.app, False)
        set_ratio_gate(other, False)
        time.sleep(1.0)
        send(4)
        assert _wait_served(stack.app, base_a0 + 4) == base_a0 + 4
        assert _requests_served(other) == base_a1 + 4
    finally:
        delete_dg(other)
    models = [m.id for m in client.models.list().data]
    assert SERVICE in models


def test_scale_out_keeps_replicas(stack: Stack) -> None:
    from heteroscale_ray.serving.deployments import replica_ids, scale_role, wait_for_replicas

    for role in ("prefill", "decode"):
        before = replica_ids(stack.app, role)
        assert len(before) == 1
        scale_role(stack.app, role, 2)
        after = wait_for_replicas(stack.app, role, 2, timeout_s=60)
        assert set(before) <= set(after)


def test_scale_in_while_streaming_loses_nothing(stack: Stack, client) -> None:  # type: ignore[no-untyped-def]
    from heteroscale_ray.serving.deployments import (
        replica_ids,
        replica_stats,
        scale_role,
        wait_for_replicas,
    )

    for role in ("prefill", "decode"):
        if len(replica_ids(stack.app, role)) != 2:
            scale_role(stack.app, role, 2)
            wait_for_replicas(stack.app, role, 2, timeout_s=60)
    n_requests, max_tokens = 8, 250
    results: dict[int, tuple[str, int]] = {}
    errors: list[BaseException] = []
    started = threading.Semaphore(0)

    def run(i: int) -> None:
        try:
            text: list[str] = []
            reason = None
            stream = client.completions.create(
                model=SERVICE,
                prompt=f"request {i}",
                max_tokens=max_tokens,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            for n, chunk in enumerate(stream):
                if n == 0:
                    started.release()
                text.append(chunk.choices[0].text)
                reason = chunk.choices[0].finish_reason or reason
            results[i] = ("".join(text), reason)
        except BaseException as e:  # reported by the main thread
            errors.append(e)
            started.release()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_requests)]
    for t in threads:
        t.start()
    for _ in range(n_requests):
        assert started.acquire(timeout=60)
    # Both decode replicas must hold streams when the scale-in lands, or the test proves nothing.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        busy = [s for s in replica_stats(stack.app, "decode") if s.running > 0]
        if len(busy) == 2:
            break
        time.sleep(0.2)
    assert len(busy) == 2, "streams did not spread over both decode replicas"
    scale_role(stack.app, "decode", 1)
    scale_role(stack.app, "prefill", 1)
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == n_requests
    for i, (text, reason) in results.items():
        assert reason == "length"
        assert text == _reference(f"request {i}", max_tokens), f"request {i} lost tokens"
    wait_for_replicas(stack.app, "decode", 1, timeout_s=60)
    wait_for_replicas(stack.app, "prefill", 1, timeout_s=60)
