"""End-to-end serving benchmark: open-loop Poisson load through the OpenAI ingress.

Starts an embedded Ray cluster (one S1 domain: an H20 host and an L20 host, fake GPUs),
deploys the ingress and one or more DGs (prefill on L20, decode on H20, emulating dense-8b
timing), then drives POST /v1/completions (streaming) at several request rates. Prompt and
output lengths are sampled from a real trace (default: the Azure conversation trace in
../shared/data/traces/) and scaled down to the tiny model's context.

Prints TTFT/TBT p50/p99 measured at the client, tokens/s per replica, errors, and the KV
handoff bandwidth measured on the decode side beside a plain numpy copy of the same bytes in
the same run. The LAST line is a JSON summary; the full result goes to results/serve_e2e/.

    .venv/bin/python benchmarks/serve_e2e.py                 # default run, about 2-3 minutes
    .venv/bin/python benchmarks/serve_e2e.py --rates 2 4 8 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
SERVICE = "bench"

TOPOLOGY = {
    "big_pods": [
        {
            "name": "s2-b",
            "mini_pods": [
                {
                    "name": "s1-b0",
                    "leaves": [
                        {
                            "name": "s0-b0-0",
                            "hosts": [{"name": "b-h20", "gpu_type": "H20", "gpus": 4}],
                        },
                        {
                            "name": "s0-b0-1",
                            "hosts": [{"name": "b-l20", "gpu_type": "L20", "gpus": 4}],
                        },
                    ],
                }
            ],
        }
    ]
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rates", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="req/s levels")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per level")
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="Azure CSV or Mooncake JSONL")
    p.add_argument("--dgs", type=int, default=1, help="deployment groups (1-2 fit the topology)")
    p.add_argument("--prefill-replicas", type=int, default=1)
    p.add_argument("--decode-replicas", type=int, default=2)
    p.add_argument("--model-profile", default="dense-8b", help="emulated model (perf profile)")
    p.add_argument("--time-scale", type=float, default=2.0, help="stretch emulated GPU time")
    p.add_argument("--length-scale", type=float, default=0.25, help="trace lengths x this")
    p.add_argument("--max-prompt", type=int, default=768)
    p.add_argument("--max-output", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "serve_e2e")
    return p.parse_args(argv)


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_requests(
    args: argparse.Namespace, rate: float, rng: np.random.Generator
) -> list[tuple[float, int, int]]:
    """(arrival offset s, prompt tokens, max_tokens) for one open-loop Poisson level."""
    from heteroscale_ray.traces.loaders import load_trace

    trace = load_trace(args.trace)
    ins = np.array([r.input_tokens for r in trace], dtype=np.int64)
    outs = np.array([r.output_tokens for r in trace], dtype=np.int64)
    out: list[tuple[float, int, int]] = []
    t = float(rng.exponential(1.0 / rate))
    while t < args.duration:
        i = int(rng.integers(len(trace)))
        n_in = int(np.clip(round(ins[i] * args.length_scale), 8, args.max_prompt))
        n_out = int(np.clip(round(outs[i] * args.length_scale), 4, args.max_output))
        out.append((t, n_in, n_out))
        t += float(rng.exponential(1.0 / rate))
    return out


async def one_request(
    session: Any, url: str, prompt_tokens: int, max_tokens: int, rng_seed: int
) -> dict[str, Any]:
    """Stream one completion; TTFT and inter-token gaps measured at the client."""
    rng = np.random.default_rng(rng_seed)
    prompt = "".join(chr(c) for c in rng.integers(97, 123, prompt_tokens - 1))  # + BOS
    body = {
        "model": SERVICE,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    t0 = time.perf_counter()
    first, last, gaps, chunks, error = None, None, [], 0, None
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                return {"error": f"HTTP {resp.status}: {(await resp.text())[:200]}"}
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    error = data["error"]["message"]
                    break
                now = time.perf_counter()
                if first is None:
                    first = now - t0
                else:
                    gaps.append(now - last)
                last = now
                chunks += 1
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    return {"ttft": first, "gaps": gaps, "chunks": chunks, "error": error}


async def run_level(args: argparse.Namespace, url: str, rate: float, seed: int) -> dict[str, Any]:
    import aiohttp

    rng = np.random.default_rng(seed)
    plan = sample_requests(args, rate, rng)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.perf_counter()

        async def fire(i: int, at: float, n_in: int, n_out: int) -> dict[str, Any]:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            return await one_request(session, url, n_in, n_out, seed * 100003 + i)

        results = await asyncio.gather(*(fire(i, *req) for i, req in enumerate(plan)))
        wall = time.perf_counter() - start
    ok = [r for r in results if not r.get("error")]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    return {
        "rate": rate,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_samples": sorted({str(r["error"])[:120] for r in results if r.get("error")})[:3],
        "wall_s": wall,
        "prompt_tokens_mean": float(np.mean([p[1] for p in plan])) if plan else 0.0,
        "output_tokens_mean": float(np.mean([p[2] for p in plan])) if plan else 0.0,
        "ttft_p50_s": _pct(ttfts, 50),
        "ttft_p99_s": _pct(ttfts, 99),
        "tbt_p50_s": _pct(gaps, 50),
        "tbt_p99_s": _pct(gaps, 99),
        "ttfts": ttfts,
        "gaps": gaps,
    }


def memcpy_gbps(total_bytes: int, count: int) -> float:
    """A plain numpy copy of the same bytes (same count of same-size buffers) in this process."""
    count = max(count, 1)
    each = max(int(total_bytes / count) // 4, 1)
    src = np.ones(each, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in first
    t0 = time.perf_counter()
    for _ in range(count):
        np.copyto(dst, src)
    dt = time.perf_counter() - t0
    return each * 4 * count / dt / 1e9


def _fmt(x: float | None, scale: float = 1000.0) -> str:
    return "-" if x is None else f"{x * scale:8.1f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from ray import serve

    from heteroscale_ray.config import TopologySpec, parse_model
    from heteroscale_ray.local_cluster import start_local_cluster
    from heteroscale_ray.serving.deployments import (
        DgServingSpec,
        RoleServing,
        deploy_dg,
        deploy_ingress,
        replica_stats,
    )
    from heteroscale_ray.serving.emulation import EmulationConfig
    from heteroscale_ray.serving.model import ModelConfig
    from heteroscale_ray.serving.routing_table import kill_routing_table

    engine = ModelConfig(
        n_layers=2,
        d_model=128,
        n_heads=4,
        max_context=args.max_prompt + args.max_output + 1,
        kv_capacity_tokens=65536,
    )
    t_start = time.perf_counter()
    local = start_local_cluster(parse_model(TopologySpec, TOPOLOGY, "serve_e2e"))
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deploy_ingress(max_inflight=512, token_timeout_s=60.0, prefill_timeout_s=120.0)
        for d in range(args.dgs):
            deploy_dg(
                DgServingSpec(
                    service=SERVICE,
                    dg_id=f"dg{d}",
                    prefill=RoleServing(gpu_type="L20", replicas=args.prefill_replicas),
                    decode=RoleServing(gpu_type="H20", replicas=args.decode_replicas),
                    domain="s1-b0",
                    model_profile=args.model_profile,
                    engine=engine,
                    emulation=EmulationConfig(enabled=True, time_scale=args.time_scale),
                )
            )
        setup_s = time.perf_counter() - t_start
        print(
            f"setup {setup_s:.1f}s: {args.dgs} DG(s), prefill {args.prefill_replicas}x L20, "
            f"decode {args.decode_replicas}x H20, emulating {args.model_profile} "
            f"(time_scale={args.time_scale}); trace {args.trace.name} lengths x{args.length_scale}"
        )
        url = f"http://127.0.0.1:{port}/v1/completions"
        levels = []
        header = f"{'rate':>6} {'reqs':>5} {'err':>4} {'TTFT p50':>9} {'p99':>8} {'TBT p50':>8} {'p99':>8}  (ms)  decode tok/s per replica | prefill tok/s"
        print(header)
        for k, rate in enumerate(args.rates):
            level = asyncio.run(run_level(args, url, rate, args.seed + k))
            time.sleep(1.2)  # let replicas push their last stats
            stats = replica_stats()
            level["decode_tps_per_replica"] = {
                s.replica_id: round(s.decode_tps, 1) for s in stats if s.role == "decode"
            }
            level["prefill_tps_per_replica"] = {
                s.replica_id: round(s.prefill_tps, 1) for s in stats if s.role == "prefill"
            }
            levels.append(level)
            print(
                f"{rate:6.1f} {level['requests']:5d} {level['errors']:4d} {_fmt(level['ttft_p50_s'])} "
                f"{_fmt(level['ttft_p99_s'])} {_fmt(level['tbt_p50_s'])} {_fmt(level['tbt_p99_s'])}"
                f"        {list(level['decode_tps_per_replica'].values())} | "
                f"{list(level['prefill_tps_per_replica'].values())}"
            )
            for sample in level["error_samples"]:
                print(f"       error: {sample}")
        stats = replica_stats()
        dec = [s for s in stats if s.role == "decode"]
        kv_bytes = sum(s.kv_handoff_bytes_total for s in dec)
        kv_secs = sum(s.kv_handoff_seconds_total for s in dec)
        kv_count = sum(s.kv_handoff_count for s in dec)
        overruns = sum(s.emulation_overruns for s in stats)
        steps = {r: sum(s.steps for s in stats if s.role == r) for r in ("prefill", "decode")}
        over = {
            r: sum(s.emulation_overruns for s in stats if s.role == r)
            for r in ("prefill", "decode")
        }
        kv_gbps = kv_bytes / kv_secs / 1e9 if kv_secs else 0.0
        mem_gbps = memcpy_gbps(kv_bytes, kv_count)
        print(
            f"KV handoff: {kv_count} transfers, {kv_bytes / 1e6:.1f} MB, mean "
            f"{kv_bytes / max(kv_count, 1) / 1e3:.0f} kB, {kv_gbps:.3f} GB/s through the object "
            f"store vs numpy copy {mem_gbps:.2f} GB/s"
        )
        print(
            "emulation overruns (real CPU compute slower than the emulated GPU step): "
            + ", ".join(f"{r} {over[r]}/{steps[r]} steps" for r in over)
        )
    finally:
        kill_routing_table()
        local.shutdown()
    all_ttft = [x for lv in levels for x in lv.pop("ttfts")]
    all_gaps = [x for lv in levels for x in lv.pop("gaps")]
    summary = {
        "requests": sum(lv["requests"] for lv in levels),
        "errors": sum(lv["errors"] for lv in levels),
        "ttft_p50_s": _pct(all_ttft, 50),
        "ttft_p99_s": _pct(all_ttft, 99),
        "tbt_p50_s": _pct(all_gaps, 50),
        "tbt_p99_s": _pct(all_gaps, 99),
        "kv_handoff_gbps": kv_gbps,
        "memcpy_gbps": mem_gbps,
        "kv_handoff_bytes": kv_bytes,
        "kv_handoffs": kv_count,
        "emulation_overruns": overruns,
        "emulation_overruns_by_role": over,
        "steps_by_role": steps,
        "rates": args.rates,
        "wall_s": time.perf_counter() - t_start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / f"serve_e2e-{time.strftime('%Y%m%d-%H%M%S')}.json"
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out_file.write_text(
        json.dumps({"summary": summary, "levels": levels, "config": config}, indent=2)
    )
    print(f"wrote {out_file.relative_to(ROOT) if out_file.is_relative_to(ROOT) else out_file}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
