"""`heteroscale tune`: the paper's offline policy curation (Algorithm 1) in one call.

1. Take a sample of the trace (its first `sample_s` seconds) for its request lengths.
2. P/D sweep (sim/pdsweep.py): for a fixed number of instances, hold each prefill:decode split
   static and raise a Poisson request rate (lengths drawn as (input, output) pairs from the
   sample) until fewer than `threshold` of requests meet both SLOs.
   With `relative` (default) the threshold applies to attainment over the idle-fleet ceiling.
3. The best split is the one with the highest goodput, i.e. the largest request rate that still
   meets the threshold times its attainment (req/s; what pdsweep ranks by). Every split has the
   same number of instances, so for a service whose prefill and decode instances have the same
   GPU count this is also the best goodput per GPU; the table shows both.
4. Its ratio, reduced to small terms, becomes `pd_ratio`; the generated tokens/s at that rate
   over its decode instances becomes the decode-TPS `target_per_instance` (the load one decode
   instance carries at the SLO); the cache-miss prompt tokens/s over its prefill instances is
   reported as the matching prefill target.
5. The sample's mean lengths become `tuned_at`, so the targets follow a load whose lengths
   differ from the sample's (policy/transport.py).

The sweep ignores prefix-cache hits and arrival burstiness beyond Poisson, as the paper's
stress test does; replay the trace under the tuned config to check it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from heteroscale_ray.config import PdRatio, PolicySpec, ServicesConfig, ServiceSpec
from heteroscale_ray.policy.dynamic_ratio import nearest_ratio
from heteroscale_ray.sim.oversized import admitted_requests
from heteroscale_ray.sim.pdsweep import SweepPoint, sweep
from heteroscale_ray.traces import Trace

RANK_BY = "goodput_rps"  # max request rate meeting the SLO threshold x attainment, per split


@dataclass(frozen=True)
class TuneRow:
    """One P:D split of the sweep, as printed."""

    prefill: int
    decode: int
    goodput_rps: float
    goodput_rps_per_gpu: float
    attainment: float
    tokens_per_s: float
    decode_tps_per_instance: float
    best: bool = False

    @property
    def label(self) -> str:
        return f"{self.prefill}:{self.decode}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ratio": self.label,
            "goodput_rps": self.goodput_rps,
            "goodput_rps_per_gpu": self.goodput_rps_per_gpu,
            "attainment": self.attainment,
            "tokens_per_s": self.tokens_per_s,
            "decode_tps_per_instance": self.decode_tps_per_instance,
            "best": self.best,
        }


@dataclass(frozen=True)
class TuneResult:
    service: str
    ratio: PdRatio  # the best split reduced to small terms
    target_per_instance: float  # decode tokens/s per decode instance at the SLO threshold
    prefill_target_per_instance: float  # cache-miss prompt tokens/s per prefill instance there
    best_split: tuple[int, int]
    rows: list[TuneRow] = field(default_factory=list)
    rank_by: str = RANK_BY
    threshold: float = 0.9
    relative: bool = True
    instances: int = 16
    sample_s: float = 0.0
    sample_requests: int = 0
    input_mean: float = 0.0
    output_mean: float = 0.0
    input_sd: float = 0.0
    rejected: int = 0  # sample requests no instance holds: left out, as the ingress rejects them

    def yaml_fragment(self, spec: ServiceSpec | None = None) -> str:
        """The lines to paste into the service's entry in services.yaml, in place of its
        `policy`. Given the service, also each setting of the paper's rule as the benchmarks
        replay it on that service (`paper_rule`) that a bare `signal: decode_tps` would not
        have (a `signal: demand` service's defaults, for one, go with the block replaced)."""
        text = (
            f'pd_ratio: "{self.ratio}"\n'
            "policy:\n"
            "  signal: decode_tps\n"
            f"  target_per_instance: {round(self.target_per_instance)}\n"
            f"  tuned_at: {{prompt_tokens: {round(self.input_mean)}, "
            f"output_tokens: {round(self.output_mean)}, prompt_sd: {round(self.input_sd)}}}\n"
        )
        if spec is None:
            return text
        # the paper's rule has no demand defaults: what differs from the defaults is the rest
        ruled = paper_rule(spec, self).policy.model_dump(mode="json", exclude_defaults=True)
        for key, value in ruled.items():
            if key not in ("signal", "target_per_instance", "tuned_at"):
                text += f"  {key}: {_flow(value)}\n"
        return text

    def table(self) -> str:
        head = (
            f"{'P:D':>6}  {'goodput req/s':>13}  {'req/s/GPU':>9}  {'attainment':>10}  "
            f"{'tokens/s':>9}  {'tok/s/decode':>12}"
        )
        if self.relative:
            head = head.replace("attainment", "att/ceil  ")
        lines = [head]
        for r in self.rows:
            mark = "  <- best" if r.best else ""
            lines.append(
                f"{r.label:>6}  {r.goodput_rps:13.2f}  {r.goodput_rps_per_gpu:9.4f}  "
                f"{r.attainment:10.1%}  {r.tokens_per_s:9.0f}  {r.decode_tps_per_instance:12.0f}"
                f"{mark}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "pd_ratio": str(self.ratio),
            "target_per_instance": self.target_per_instance,
            "prefill_target_per_instance": self.prefill_target_per_instance,
            "best_split": f"{self.best_split[0]}:{self.best_split[1]}",
            "rank_by": self.rank_by,
            "threshold": self.threshold,
            "relative_to_ceiling": self.relative,
            "instances": self.instances,
            "sample_s": self.sample_s,
            "sample_requests": self.sample_requests,
            "input_mean": self.input_mean,
            "output_mean": self.output_mean,
            "input_sd": self.input_sd,
            "rejected": self.rejected,
            "rows": [r.as_dict() for r in self.rows],
        }


def small_ratio(prefill: int, decode: int, max_term: int = 8) -> PdRatio:
    """`prefill:decode` in lowest terms, or the nearest ratio with both terms <= `max_term`."""
    p, d = max(prefill, 1), max(decode, 1)
    g = math.gcd(p, d)
    if max(p // g, d // g) <= max_term:
        return PdRatio(p // g, d // g)
    low, high = PdRatio(1, max_term), PdRatio(max_term, 1)
    return PdRatio(*nearest_ratio(p / d, max_term, low, high))


def tune(
    services: ServicesConfig,
    spec_name: str,
    trace: Trace,
    *,
    sample_s: float = 1800.0,
    instances: int = 16,
    threshold: float = 0.9,
    duration_s: float = 180.0,
    warmup_s: float = 45.0,
    iterations: int = 6,
    max_term: int = 8,
    seed: int = 0,
    splits: list[tuple[int, int]] | None = None,
    relative: bool = True,
) -> TuneResult:
    """Algorithm 1 on the first `sample_s` seconds of `trace` for service `spec_name`.

    `relative` (default): `threshold` applies to SLO attainment over the idle-fleet ceiling of
    the same requests, so a trace where some requests miss an SLO at any size (Mooncake: ~10%
    on an idle fleet) is not judged against a share no split can reach; False: absolute, as
    the paper states it.

    Deterministic for fixed inputs. Cost: about (log2(max rate) + `iterations`) stress replays
    of `duration_s` simulated seconds per split (`instances` - 1 splits, or `splits`).
    """
    by_name = services.by_name()
    if spec_name not in by_name:
        raise ValueError(f"service {spec_name!r} is not in the services file: {sorted(by_name)}")
    if instances < 2:
        raise ValueError(f"instances must be >= 2 (got {instances})")
    spec = by_name[spec_name]
    sample = trace.slice(0, sample_s) if sample_s and sample_s < trace.duration_s else trace
    if len(sample) == 0:
        raise ValueError(
            f"the first {sample_s:g} s of {trace.source or 'the trace'} hold no requests"
        )
    # Tuned on what the ingress admits: two 700k-token prompts among 60 had taken tuned_at's
    # prompt mean 1,423 -> 24,707, and the replay under that fragment held 4x the GPU-hours.
    admitted = admitted_requests(spec, sample, services.catalog)
    rejected = len(sample) - len(admitted)
    sample = admitted
    inp = np.asarray(sample.input_tokens)
    out = np.asarray(sample.output_tokens)
    if not out.any():
        raise ValueError(
            f"the requests in the first {sample.duration_s:g} s of {trace.source or 'the trace'} "
            "generate no tokens: the paper's decode-TPS target has nothing to measure (use "
            "`signal: demand`, which sizes prefill on prompt tokens)"
        )
    points: list[SweepPoint] = sweep(
        services,
        spec,
        total_instances=instances,
        splits=splits,
        input_mean=float(inp.mean()),
        output_mean=float(out.mean()),
        threshold=threshold,
        duration_s=duration_s,
        warmup_s=warmup_s,
        seed=seed,
        iterations=iterations,
        lengths=(inp, out),
        relative=relative,
    )
    if not points or max(p.goodput_rps for p in points) <= 0:
        raise ValueError(
            f"no P:D split of {instances} instances meets {threshold:.0%} SLO attainment even at "
            "the lowest rate tried: the SLOs may be out of reach for these lengths"
        )
    best = max(points, key=lambda p: (p.goodput_rps, -abs(p.prefill - p.decode)))
    gp, gd = spec.prefill.gpus_per_instance, spec.decode.gpus_per_instance
    rows = [
        TuneRow(
            prefill=p.prefill,
            decode=p.decode,
            goodput_rps=p.goodput_rps,
            goodput_rps_per_gpu=p.goodput_rps / max(1, p.prefill * gp + p.decode * gd),
            attainment=p.attainment,
            tokens_per_s=p.tokens_per_s,
            decode_tps_per_instance=p.tokens_per_s / max(1, p.decode),
            best=p is best,
        )
        for p in points
    ]
    target = best.tokens_per_s / max(1, best.decode)
    # prompt tokens arriving per generated token, times the generated rate, per prefill instance
    prompt_per_out = float(inp.sum()) / max(1.0, float(out.sum()))
    prefill_target = best.tokens_per_s * prompt_per_out / max(1, best.prefill)
    return TuneResult(
        service=spec_name,
        ratio=small_ratio(best.prefill, best.decode, max_term),
        target_per_instance=target,
        prefill_target_per_instance=prefill_target,
        best_split=(best.prefill, best.decode),
        rows=rows,
        threshold=threshold,
        relative=relative,
        instances=instances,
        sample_s=float(sample.duration_s),
        sample_requests=len(sample),
        input_mean=float(inp.mean()),
        output_mean=float(out.mean()),
        input_sd=float(inp.std()),
        rejected=rejected,
    )


def _flow(value: Any) -> str:
    """One YAML flow value: `{metric: both}`, `0.0`."""
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10_000)
        .strip()
        .removesuffix("...")
        .strip()
    )


def paper_rule(spec: ServiceSpec, tuned: TuneResult) -> ServiceSpec:
    """`spec` under the paper's rule as `tuned` found it: decode-TPS signal at the tuned ratio
    and per-instance target, the latency guard on TTFT and TBT, and the paper's dead-band (its
    own threshold in, where `signal: demand` services narrow it)."""
    data = spec.model_dump(mode="json")
    data["pd_ratio"] = str(tuned.ratio)
    policy = dict(data["policy"])
    policy["signal"] = "decode_tps"
    policy["target_per_instance"] = round(tuned.target_per_instance, 1)
    policy["latency_guard"] = {**dict(policy.get("latency_guard") or {}), "metric": "both"}
    policy["scale_in_tolerance"] = PolicySpec.model_fields["scale_in_tolerance"].default
    data["policy"] = policy
    return ServiceSpec.model_validate(data)
