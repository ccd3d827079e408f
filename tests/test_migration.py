"""Request migration: a request whose replica fails resumes elsewhere with nothing lost.

In-process (fast): the resume bookkeeping against the real engines (a stream cut after any
chunk and resumed by re-prefill gives exactly the unbroken run's tokens and text, seeded
sampling included, and its logprobs to float32 rounding), which failures move a request,
where it goes, the budget, the config field and the hub's totals. On the real local Ray
cluster (slow): a decode replica killed under 8 seeded streams, a prefill replica killed under
queued prefills, and a service whose `migration_limit` is exhausted answering with one clean
OpenAI error.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from heteroscale_ray.actors.control_plane import format_migrations
from heteroscale_ray.config import ConfigError, ServiceSpec, parse_model
from heteroscale_ray.serving.decode import DecodeChunk, KvHandoffError
from heteroscale_ray.serving.metrics_hub import MetricsHub
from heteroscale_ray.serving.migration import (
    Budget,
    MigrationReason,
    Progress,
    Stage,
    StreamEnded,
    failure_reason,
    migration_target,
)
from heteroscale_ray.serving.model import (
    DecodeEngine,
    Engine,
    ModelConfig,
    PrefillEngine,
    SamplingParams,
    StepOutput,
    token_logprob,
)
from heteroscale_ray.serving.routing_table import DgRoute, RoutingTable
from heteroscale_ray.serving.tokenizer import ByteTokenizer

ENGINE = ModelConfig(n_layers=2, d_model=64, n_heads=4, max_context=512, kv_capacity_tokens=8192)
TOKENIZER = ByteTokenizer()


# ---------------------------------------------------------------- resume bookkeeping (fast)


def _chunk(o: StepOutput) -> DecodeChunk:
    """A decode replica's chunk for one engine output (what decode.py yields)."""
    return DecodeChunk(
        o.text_delta, o.num_generated, o.finished, o.finish_reason, None, o.logprobs, o.tokens
    )


def _stream(decoder: DecodeEngine, seq_id: str) -> Iterator[DecodeChunk]:
    while decoder.has_work:
        for o in decoder.step():
            if o.seq_id == seq_id:
                yield _chunk(o)


def _start(
    model: Engine, prompt: list[int], params: SamplingParams, progress: Progress
) -> Iterator[DecodeChunk]:
    """Start (or resume, from `progress`) one sequence the way the router and replicas do."""
    res = PrefillEngine(ENGINE, model.model).prefill(
        progress.prefill_tokens(prompt), params, resume_at=len(progress.tokens)
    )
    decoder = DecodeEngine(ENGINE, model.model)
    point = progress.resume_point()
    decoder.add(
        "s",
        res.kv,
        res.first_token,
        params,
        None if params.logprobs is None else token_logprob(res.first_logits, res.first_token, 2),
        prior=point.tokens if point else (),
        emitted_chars=point.chars if point else 0,
    )
    return _stream(decoder, "s")


def _run(
    model: Engine, prompt: list[int], params: SamplingParams, cut_after: list[int]
) -> tuple[list[DecodeChunk], Progress]:
    """Every chunk the client receives when the stream breaks after each count in
    `cut_after` (chunks received) and resumes from the router's bookkeeping."""
    progress, received = Progress(), []
    stream = _start(model, prompt, params, progress)
    cuts = sorted(cut_after)
    while True:
        chunk = next(stream, None)
        if chunk is None:
            break
        progress.absorb(chunk)
        received.append(chunk)
        if chunk.finished:
            break
        if cuts and len(received) == cuts[0]:
            cuts.pop(0)
            stream = _start(model, prompt, params, progress)  # the old replica "died"
    return received, progress


def _with_logprobs(params: SamplingParams) -> SamplingParams:
    return SamplingParams(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        seed=params.seed,
        stop=params.stop,
        ignore_eos=params.ignore_eos,
        top_p=params.top_p,
        logprobs=2,
    )


STOP_FROM_TEXT = ("<two characters of the unstopped text>",)
CASES = [
    # (seed, temperature, top_p, stop, max_tokens): seeded sampling over the whole byte
    # vocabulary makes split UTF-8 characters common. A stop string picked by hand ("e",
    # "ab") never occurred in these outputs, so STOP_FROM_TEXT takes two characters from
    # the middle of the unstopped run: the stop fires there, and its first character is
    # held back until the second decides.
    (1, 1.0, 1.0, (), 90),
    (2, 0.7, 0.9, (), 90),
    (3, 0.0, 1.0, (), 60),
    (4, 1.2, 1.0, STOP_FROM_TEXT, 120),
    (5, 1.0, 0.95, STOP_FROM_TEXT, 120),
]


def _stop_from(text: str) -> tuple[str, ...]:
    """Two characters of `text`, from its middle on, that occur nowhere before."""
    for k in range(len(text) // 2, len(text) - 1):
        if text.find(text[k : k + 2]) == k:
            return (text[k : k + 2],)
    raise AssertionError(f"no fresh pair of characters in {text!r}")


@pytest.mark.parametrize(("seed", "temperature", "top_p", "stop", "max_tokens"), CASES)
def test_a_stream_resumed_after_any_chunk_equals_the_unbroken_run(
    seed: int, temperature: float, top_p: float, stop: tuple[str, ...], max_tokens: int
) -> None:
    model = Engine(ENGINE)
    prompt = TOKENIZER.encode(f"request {seed}: migrate me", add_bos=True)
    if stop == STOP_FROM_TEXT:
        free = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed,
                              ignore_eos=True, top_p=top_p)  # fmt: skip
        stop = _stop_from(model.generate(prompt, free).text)
    params = _with_logprobs(
        SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            stop=stop,
            ignore_eos=True,
            top_p=top_p,
        )
    )
    ref, ref_progress = _run(model, prompt, params, [])
    ref_text = "".join(c.text for c in ref)
    ref_logprobs = [lp for c in ref for lp in c.logprobs]
    assert ref[-1].finished
    assert ref[-1].finish_reason == ("stop" if stop else "length")
    assert ref_text == model.generate(prompt, params).text  # the colocated engine agrees
    n = len(ref)
    for cuts in ([1], [2], [n // 2], [n - 1], [1, 2, 3], [3, n // 3, n // 2, n - 2]):
        cuts = [k for k in cuts if 0 < k < n]
        got, progress = _run(model, prompt, params, cuts)
        assert "".join(c.text for c in got) == ref_text, cuts  # no char twice, none missing
        assert progress.tokens == ref_progress.tokens, cuts  # no token twice, none missing
        # One logprob entry per token; re-prefilled positions agree to float32 rounding.
        lps = [lp for c in got for lp in c.logprobs]
        assert [lp.token for lp in lps] == [lp.token for lp in ref_logprobs], cuts
        assert [lp.logprob for lp in lps] == pytest.approx(
            [lp.logprob for lp in ref_logprobs], abs=1e-4
        )
        assert [c.num_generated for c in got][-1] == ref[-1].num_generated
        assert got[-1].finish_reason == ref[-1].finish_reason


def test_the_rng_position_takes_up_the_stream_where_the_tokens_left_it() -> None:
    params = SamplingParams(temperature=1.0, seed=7)
    whole = params.make_rng().random(50)
    for position in (0, 1, 13, 49):
        assert params.make_rng(position).random() == whole[position]


def test_a_resume_that_does_not_match_its_kv_is_refused() -> None:
    model = Engine(ENGINE)
    prompt = TOKENIZER.encode("hello", add_bos=True)
    res = PrefillEngine(ENGINE, model.model).prefill([*prompt, 65, 66], SamplingParams(), 2)
    decoder = DecodeEngine(ENGINE, model.model)
    with pytest.raises(ValueError, match="must end with the output"):
        decoder.add("s", res.kv, res.first_token, prior=[66, 65])
    with pytest.raises(ValueError, match="resume_at"):
        PrefillEngine(ENGINE, model.model).prefill(prompt, SamplingParams(), len(prompt))


def test_progress_counts_what_was_delivered_and_refuses_chunks_after_the_last() -> None:
    p = Progress()
    assert p.resume_point() is None and p.prefill_tokens([1, 2]) == [1, 2]
    p.absorb(DecodeChunk("ab", 2, False, None, tokens=(97, 98)))
    p.absorb(DecodeChunk("", 3, False, None, tokens=(0xC3,)))  # half a character: no text yet
    point = p.resume_point()
    assert point is not None and point.tokens == (97, 98, 0xC3) and point.chars == 2
    assert p.prefill_tokens([1]) == [1, 97, 98, 0xC3]
    p.absorb(DecodeChunk("\u00e9", 4, True, "length", tokens=(0xA9,)))
    with pytest.raises(ValueError):
        p.absorb(DecodeChunk("x", 5, True, "length", tokens=(120,)))


# ---------------------------------------------------------------- which failures move (fast)


def _ray_errors() -> dict[str, BaseException]:
    from ray.exceptions import (
        ActorDiedError,
        ActorUnavailableError,
        NodeDiedError,
        ObjectFetchTimedOutError,
        ObjectLostError,
        OwnerDiedError,
        RayTaskError,
        WorkerCrashedError,
    )

    oid = "ab" * 14
    return {
        "actor_died": ActorDiedError(),
        "actor_unavailable": ActorUnavailableError("unreachable", None),
        "worker_crashed": WorkerCrashedError(),
        "node_died": NodeDiedError("node gone"),
        "object_lost": ObjectLostError(oid, None, ""),
        "owner_died": OwnerDiedError(oid, None, ""),
        "fetch_timeout": ObjectFetchTimedOutError(oid, None, ""),
        "task_wrapping_lost": RayTaskError("generate", "tb", ObjectLostError(oid, None, "")),
        "task_wrapping_died": RayTaskError("generate", "tb", ActorDiedError()),
        "task_wrapping_value": RayTaskError("generate", "tb", ValueError("KV shape")),
        # The decode replica could not fetch the KV: its producer died, or the object was lost.
        "handoff_producer_died": RayTaskError(
            "generate", "tb", KvHandoffError("KV unavailable", True)
        ).as_instanceof_cause(),
        "handoff_lost": RayTaskError("generate", "tb", KvHandoffError("KV unavailable", False)),
    }


@pytest.mark.parametrize(
    ("name", "stage", "want"),
    [
        ("actor_died", Stage.DECODE, MigrationReason.DECODE_FAILED),
        ("actor_died", Stage.PREFILL, MigrationReason.PREFILL_FAILED),
        ("actor_unavailable", Stage.DECODE, MigrationReason.DECODE_FAILED),
        ("worker_crashed", Stage.PREFILL, MigrationReason.PREFILL_FAILED),
        ("node_died", Stage.DECODE, MigrationReason.DECODE_FAILED),
        ("object_lost", Stage.DECODE, MigrationReason.KV_LOST),
        ("owner_died", Stage.DECODE, MigrationReason.KV_LOST),
        ("fetch_timeout", Stage.DECODE, MigrationReason.KV_LOST),
        ("task_wrapping_lost", Stage.DECODE, MigrationReason.KV_LOST),
        ("task_wrapping_died", Stage.DECODE, MigrationReason.DECODE_FAILED),
        ("task_wrapping_value", Stage.DECODE, None),  # the request's own fault: fails anywhere
        ("handoff_producer_died", Stage.DECODE, MigrationReason.PREFILL_FAILED),
        ("handoff_lost", Stage.DECODE, MigrationReason.KV_LOST),
    ],
)
def test_replica_node_and_kv_failures_move_a_request_its_own_errors_do_not(
    name: str, stage: Stage, want: MigrationReason | None
) -> None:
    assert failure_reason(_ray_errors()[name], stage) is want


def test_plain_errors_and_an_early_end_of_stream() -> None:
    from heteroscale_ray.serving.api_requests import ApiError

    assert failure_reason(ValueError("bad"), Stage.DECODE) is None
    assert failure_reason(ApiError(400, "bad", "invalid_request_error"), Stage.DECODE) is None
    assert failure_reason(StreamEnded(), Stage.DECODE) is MigrationReason.DECODE_FAILED


def _dg(dg_id: str, p: int = 1, d: int = 1, draining: bool = False) -> DgRoute:
    return DgRoute("chat", dg_id, f"chat-{dg_id}", p, d, draining=draining)


@pytest.mark.parametrize(
    ("dgs", "stage", "failed", "want"),
    [
        # The same DG while it has another replica of the failed role.
        ([_dg("a", 1, 2), _dg("b")], Stage.DECODE, set(), "a"),
        ([_dg("a", 2, 1), _dg("b")], Stage.PREFILL, set(), "a"),
        # No spare replica of that role: another DG.
        ([_dg("a", 2, 1), _dg("b")], Stage.DECODE, set(), "b"),
        # Failed there before: another DG even with spares.
        ([_dg("a", 1, 2), _dg("b")], Stage.DECODE, {"chat-a"}, "b"),
        # Draining: another DG.
        ([_dg("a", 1, 2, draining=True), _dg("b")], Stage.DECODE, set(), "b"),
        # Other DGs that failed it are still better than none; the least loaded first.
        ([_dg("a"), _dg("b"), _dg("c")], Stage.DECODE, {"chat-b"}, "c"),
        ([_dg("a"), _dg("b")], Stage.DECODE, {"chat-a", "chat-b"}, "b"),
        # Alone: the same DG again (Serve replaces the dead replica).
        ([_dg("a")], Stage.DECODE, {"chat-a"}, "a"),
        ([_dg("a", 1, 0)], Stage.DECODE, set(), None),
        ([], Stage.DECODE, set(), None),
    ],
)
def test_migration_target(
    dgs: list[DgRoute], stage: Stage, failed: set[str], want: str | None
) -> None:
    got = migration_target({d.dg_id: d for d in dgs}, "chat-a", stage, failed, {"chat-b": 3})
    assert (got.dg_id if got else None) == want


def test_budget_counts_moves_against_the_limit() -> None:
    b = Budget(2)
    assert b.left and b.spend().left and not b.spend().spend().left
    assert not Budget(0).left


# ---------------------------------------------------------------- config and totals (fast)


def _service(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "chat",
        "slo": {"ttft_s": 1.0, "tbt_s": 0.1},
        "pd_ratio": "1:2",
        "prefill": {"gpu_types": ["L20"]},
        "decode": {"gpu_types": ["H20"]},
        "policy": {"target_per_instance": 100},
    }
    return {**base, **overrides}


def test_migration_limit_defaults_to_3_and_bad_values_name_the_field() -> None:
    assert parse_model(ServiceSpec, _service(), "t").migration_limit == 3
    assert parse_model(ServiceSpec, _service(migration_limit=0), "t").migration_limit == 0
    for bad in (-1, 21, "lots"):
        with pytest.raises(ConfigError, match="migration_limit"):
            parse_model(ServiceSpec, _service(migration_limit=bad), "t")


def test_the_routing_table_keeps_a_service_limit_across_dg_redeploys() -> None:
    table = RoutingTable()
    table.register_service("chat", ENGINE, "dense-8b", 5)
    table.register_service("chat", ENGINE, "dense-8b")  # deploy_dg does not know the limit
    assert table.snapshot()[1]["chat"].migration_limit == 5
    table.register_service("new", ENGINE, "dense-8b")
    assert table.snapshot()[1]["new"].migration_limit == 3


def test_the_hub_sums_migrations_over_ingress_replicas_and_status_shows_them() -> None:
    hub = MetricsHub()
    hub.report_arrivals("i1", {}, {"chat": {"decode_failed": 2}})
    hub.report_arrivals("i2", {}, {"chat": {"decode_failed": 1, "prefill_failed": 1}})
    hub.report_arrivals("i2", {}, {"chat": {"decode_failed": 3, "prefill_failed": 1}})
    hub.report_arrivals("i3", {})  # an ingress without the field keeps nothing
    want = {"chat": {"decode_failed": 5, "prefill_failed": 1}}
    assert hub.request_migrations() == want
    assert (
        format_migrations(want) == "request migrations: chat 6 (decode_failed 5, prefill_failed 1)"
    )
    assert format_migrations({}) == "request migrations: none"
    assert "n/a" in format_migrations(None)


# ---------------------------------------------------------------- real Ray cluster (slow)

SERVICE, STRICT = "chat", "strict"
MAX_TOKENS = 200
# Internal names a client must never see: Ray/Serve classes, replica and actor ids.
LEAKS = re.compile(r"Actor|ServeReplica|DecodeServer|PrefillServer|Traceback|[0-9a-f]{24}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    url: str
    app: str  # the chat DG: 2 prefill + 2 decode replicas
    strict_app: str  # the strict service's DG: 1 + 1, migration_limit 0


@pytest.fixture(scope="module")
def stack(ray_cluster: object) -> Iterator[Stack]:
    from ray import serve

    from heteroscale_ray.serving.deployments import (
        DgServingSpec,
        RoleServing,
        deploy_dg,
        deploy_ingress,
        register_service,
    )
    from heteroscale_ray.serving.emulation import EmulationConfig
    from heteroscale_ray.serving.routing_table import kill_routing_table

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        deploy_ingress(max_inflight=64, token_timeout_s=20.0)
        # Emulated GPUs 3x slower than the roofline: 200-token streams take seconds, so a kill
        # lands mid-stream, and 400-token prefills queue.
        slow = EmulationConfig(enabled=True, time_scale=3.0)
        app = deploy_dg(
            DgServingSpec(
                service=SERVICE,
                dg_id="a0",
                prefill=RoleServing(gpu_type="L20", replicas=2),
                decode=RoleServing(gpu_type="H20", replicas=2),
                domain="s1-a0",
                engine=ENGINE,
                emulation=slow,
            )
        )
        register_service(STRICT, ENGINE, "dense-8b", migration_limit=0)
        strict = deploy_dg(
            DgServingSpec(
                service=STRICT,
                dg_id="b0",
                prefill=RoleServing(gpu_type="L20"),
                decode=RoleServing(gpu_type="H20"),
                domain="s1-a1",
                engine=ENGINE,
                emulation=slow,
            )
        )
        time.sleep(1.0)  # the ingress refreshes its routing table every 0.5 s
        yield Stack(url=f"http://127.0.0.1:{port}", app=app, strict_app=strict)
    finally:
        serve.shutdown()
        kill_routing_table()


@pytest.fixture(scope="module")
def client(stack: Stack):  # type: ignore[no-untyped-def]
    import openai

    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)


def _params(seed: int, max_tokens: int = MAX_TOKENS) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed, ignore_eos=True)


def _reference(prompt: str, seed: int, max_tokens: int = MAX_TOKENS) -> str:
    """The unbroken run: the colocated engine with the request's seed (the ingress gives
    choice 0 the request's seed)."""
    return Engine(ENGINE).generate(prompt, _params(seed, max_tokens)).text


def _kill(app: str, replica_id: str) -> None:
    import ray

    from heteroscale_ray.serving.deployments import replica_details

    detail = next(r for r in replica_details(app) if r["replica_id"] == replica_id)
    ray.kill(ray.get_actor(detail["actor_name"], namespace="serve"), no_restart=True)


def _migrations(url: str, service: str) -> dict[str, float]:
    """heteroscale_request_migrations_total of one service on the ingress's /metrics."""
    import requests

    text = requests.get(f"{url}/metrics", timeout=30).text
    pattern = (
        rf'^heteroscale_request_migrations_total\{{reason="(\w+)",service="{service}"\}} (\S+)'
    )
    return {r: float(v) for r, v in re.findall(pattern, text, re.M)}


def _busy(app: str, role: str, field: str) -> dict[str, float]:
    from heteroscale_ray.serving.deployments import replica_stats

    return {s.replica_id: getattr(s, field) for s in replica_stats(app, role)}


def _wait_for(what: str, check, timeout_s: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class _Streams:
    """Seeded streaming completions in threads, recording each one's text, chunk count and
    error."""

    def __init__(self, client, prompts: dict[int, str], max_tokens: int = MAX_TOKENS) -> None:  # type: ignore[no-untyped-def]
        self.client, self.prompts, self.max_tokens = client, prompts, max_tokens
        self.texts: dict[int, str] = {}
        self.reasons: dict[int, str | None] = {}
        self.chunks = dict.fromkeys(prompts, 0)
        self.first_at: dict[int, float] = {}  # monotonic time of each stream's first chunk
        self.errors: dict[int, BaseException] = {}
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in prompts]

    def _run(self, i: int) -> None:
        try:
            stream = self.client.completions.create(
                model=SERVICE,
                prompt=self.prompts[i],
                max_tokens=self.max_tokens,
                temperature=1.0,
                seed=i,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            text, reason = [], None
            for chunk in stream:
                self.first_at.setdefault(i, time.monotonic())
                text.append(chunk.choices[0].text)
                reason = chunk.choices[0].finish_reason or reason
                self.chunks[i] += 1
            self.texts[i], self.reasons[i] = "".join(text), reason
        except BaseException as e:  # reported by the test
            self.errors[i] = e

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=180)


@pytest.mark.slow
def test_killed_decode_replica_under_8_seeded_streams_loses_nothing(stack: Stack, client) -> None:  # type: ignore[no-untyped-def]
    before = _migrations(stack.url, SERVICE)
    prompts = {i: f"stream {i} of eight" for i in range(8)}
    streams = _Streams(client, prompts)
    streams.start()
    # Every stream is well under way (a kill then cuts each one mid-text) ...
    _wait_for("all 8 streams to pass 10 chunks", lambda: min(streams.chunks.values()) >= 10)
    # ... and the victim holds some of them.
    running = _wait_for(
        "a decode replica running streams",
        lambda: {r: n for r, n in _busy(stack.app, "decode", "running").items() if n > 0},
    )
    victim = max(running, key=lambda r: running[r])
    on_victim = int(running[victim])
    cut_at = dict(streams.chunks)
    _kill(stack.app, victim)
    streams.join()

    assert not streams.errors, streams.errors
    assert len(streams.texts) == 8
    for i, prompt in prompts.items():
        assert streams.reasons[i] == "length"
        assert streams.texts[i] == _reference(prompt, i), f"stream {i} (cut near chunk {cut_at[i]})"
    after = _migrations(stack.url, SERVICE)
    moved = after.get("decode_failed", 0) - before.get("decode_failed", 0)
    print(f"\n8 streams completed, {on_victim} on the killed replica, {moved:g} migrations")
    assert moved >= 1, after

    from heteroscale_ray.serving.deployments import wait_for_replicas
    from heteroscale_ray.serving.routing_table import request_migrations

    totals = _wait_for("the hub's migration totals", lambda: request_migrations() or None)
    assert totals[SERVICE]["decode_failed"] >= moved
    wait_for_replicas(stack.app, "decode", 2, timeout_s=60)  # Serve replaces the dead replica


@pytest.mark.slow
def test_killed_prefill_replica_retries_queued_prefills_elsewhere(stack: Stack, client) -> None:  # type: ignore[no-untyped-def]
    from heteroscale_ray.serving.deployments import wait_for_replicas

    wait_for_replicas(stack.app, "prefill", 2, timeout_s=60)
    before = _migrations(stack.url, SERVICE)
    # ~400-token prompts: each prefill takes ~0.4 s of emulated L20 time, so 24 of them queue.
    prompts = {100 + i: f"{i:03d} " + "long prompt to prefill " * 17 for i in range(24)}
    streams = _Streams(client, prompts, max_tokens=8)
    streams.start()
    queued = _wait_for(
        "a prefill replica with a queue",
        lambda: {r: n for r, n in _busy(stack.app, "prefill", "queue_length").items() if n > 0},
    )
    victim = max(queued, key=lambda r: queued[r])
    _kill(stack.app, victim)
    streams.join()

    assert not streams.errors, streams.errors
    for i, prompt in prompts.items():
        assert streams.texts[i] == _reference(prompt, i, 8), f"request {i}"
    after = _migrations(stack.url, SERVICE)
    moved = after.get("prefill_failed", 0) - before.get("prefill_failed", 0)
    print(
        f"\n24 requests completed, {queued[victim]:g} queued on the killed prefill replica, "
        f"{moved:g} prefill retries"
    )
    assert moved >= 1, after
    wait_for_replicas(stack.app, "prefill", 2, timeout_s=60)


@pytest.mark.slow
def test_held_prefill_calls_leave_in_slo_order(stack: Stack, client) -> None:  # type: ignore[no-untyped-def]
    """The ingress lets two prefill calls per replica out and holds the rest; one arriving
    once the held ones have waited past half the TTFT SLO goes before them (first come, first
    served would put it behind every one)."""
    from heteroscale_ray.serving.deployments import register_service, wait_for_replicas

    wait_for_replicas(stack.app, "prefill", 2, timeout_s=60)
    register_service(SERVICE, ENGINE, "dense-8b", ttft_slo_s=2.0)
    time.sleep(1.0)  # the ingress refreshes its routing table every 0.5 s
    try:
        # ~0.4 s of emulated prefill each on two replicas: about 12 s of work
        burst = {200 + i: f"{i:03d} " + "long prompt to prefill " * 17 for i in range(60)}
        streams = _Streams(client, burst, max_tokens=4)
        streams.start()
        time.sleep(4.0)  # every burst request has arrived and waited past 1 s, half the SLO
        queued = sum(i not in streams.first_at for i in burst)
        fresh = _Streams(client, {300: "fresh " + "long prompt to prefill " * 17}, max_tokens=4)
        fresh.start()
        fresh.join()
        streams.join()
    finally:
        register_service(SERVICE, ENGINE, "dense-8b", ttft_slo_s=1e6)  # arrival order again
        time.sleep(1.0)
    assert not streams.errors and not fresh.errors, (streams.errors, fresh.errors)
    overtaken = [i for i in burst if streams.first_at[i] > fresh.first_at[300]]
    print(f"\nthe fresh request's first token came before {len(overtaken)} of {queued} held")
    assert queued >= 10  # the burst was still queued when the fresh request came
    assert len(overtaken) >= queued // 2


@pytest.mark.slow
def test_an_exhausted_migration_limit_ends_in_one_clean_openai_error(stack: Stack) -> None:  # type: ignore[no-untyped-def]
    import openai
    import requests

    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)
    got: dict[str, object] = {}

    def stream() -> None:
        try:
            chunks = client.completions.create(
                model=STRICT,
                prompt="no second chance",
                max_tokens=MAX_TOKENS,
                temperature=1.0,
                seed=1,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            got["stream_chunks"] = sum(1 for _ in chunks)
        except BaseException as e:
            got["stream_error"] = e

    def whole() -> None:
        body = {
            "model": STRICT,
            "prompt": "no second chance either",
            "max_tokens": MAX_TOKENS,
            "ignore_eos": True,
        }
        r = requests.post(f"{stack.url}/v1/completions", json=body, timeout=120)
        got["whole"] = (r.status_code, r.json())

    threads = [threading.Thread(target=stream), threading.Thread(target=whole)]
    for t in threads:
        t.start()
    running = _wait_for(
        "the strict service's decode replica running both",
        lambda: {r: n for r, n in _busy(stack.strict_app, "decode", "running").items() if n >= 2},
    )
    _kill(stack.strict_app, next(iter(running)))
    for t in threads:
        t.join(timeout=120)

    err = got.get("stream_error")
    assert isinstance(err, openai.APIError), got  # one error event mid-stream
    assert "retry later" in str(err) and not LEAKS.search(str(err)), str(err)
    status, body = got["whole"]  # type: ignore[misc]
    assert status == 503 and body["error"]["code"] == "replica_failure", body
    assert not LEAKS.search(str(body)), body
    assert _migrations(stack.url, STRICT) == {}  # limit 0: nothing moved
