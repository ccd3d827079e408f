"""Learned capacity (issue 10): what one instance carries, the roofline prior vs what the policy
learned while replaying a shared trace.

Replays a slice of a trace in ../shared/data/traces (default: Mooncake, whose prompts span 30 to
40k tokens, rate-scaled K x) through the simulator with service `general` of
examples/sim_services.yaml (`signal: demand`, nothing tuned to a trace). Every decision's
sentence ends with the capacity in force,
`[prefill N tok/s/instance (xS), decode B seqs = T tok/s/instance (xS), learned]`; this script
reads those, pairs each with the mean prompt length of the requests that arrived in the replay's
signal window before it (the length the policy evaluated the prior at, to two significant
digits), and plots them over the prior curve: `policy.capacity` with an empty `PolicyState()`
(no learned correction) at prompt lengths from 128 to 32k tokens. The learned curve is the prior
times the final learned scales.

Writes results/learned_capacity/learned_capacity.png and learned_capacity.json (the last stdout
line is one JSON object: final scales, number of decisions, GPU-hours, SLO attainment).
Run: .venv/bin/python benchmarks/learned_capacity.py [--trace FILE] [--minutes 15] [--rate-scale 4]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from heteroscale_ray.config import load_services  # noqa: E402
from heteroscale_ray.policy import PolicyState  # noqa: E402
from heteroscale_ray.policy.capacity import capacity  # noqa: E402
from heteroscale_ray.policy.types import Signals  # noqa: E402
from heteroscale_ray.sim.fleet import fleet_for  # noqa: E402
from heteroscale_ray.sim.replay import ReplayOptions, run_replay  # noqa: E402
from heteroscale_ray.traces import load_trace, scale_rate  # noqa: E402
from heteroscale_ray.traces.transforms import SHAPE_SHIFT_S  # noqa: E402

TRACES_DIR = ROOT.parent / "shared" / "data" / "traces"
SERVICE = "general"
SEED = 0
FLEET_GPUS = 1024
PRIOR_PROMPTS = np.geomspace(128, 32768, 25)
CAPACITY = re.compile(
    r"\[prefill (?P<p>[\d,]+) tok/s/instance \(x(?P<ps>[\d.]+)\), "
    r"decode (?P<b>[\d,]+) seqs = (?P<d>[\d,]+) tok/s/instance \(x(?P<ds>[\d.]+)\), "
    r"(?P<src>\w+)\]$"
)


def parse_capacity(message: str) -> dict[str, Any] | None:
    """The capacity in force from a decision's sentence (None if it has none)."""
    m = CAPACITY.search(message)
    if m is None:
        return None

    def num(k: str) -> float:
        return float(m.group(k).replace(",", ""))

    return {
        "prefill_tps": num("p"),
        "prefill_scale": num("ps"),
        "decode_batch": num("b"),
        "decode_tps": num("d"),
        "decode_scale": num("ds"),
        "source": m.group("src"),
    }


def window_means(
    arrival: np.ndarray, prompt: np.ndarray, output: np.ndarray, t: float, window_s: float
) -> tuple[float | None, float | None]:
    """Mean prompt and output tokens of the requests that arrived in (t - window_s, t]."""
    sel = (arrival > t - window_s) & (arrival <= t)
    if not sel.any():
        return None, None
    return float(prompt[sel].mean()), float(output[sel].mean())


def prior_curve(spec: Any, catalog: Any, output_mean: float) -> list[dict[str, float]]:
    """Per-instance capacity of the roofline prior (no learned correction) vs prompt length."""
    out = []
    for prompt in PRIOR_PROMPTS:
        cap = capacity(
            spec,
            Signals(prompt_mean=float(prompt), output_mean=output_mean),
            PolicyState(),
            catalog,
        )
        out.append(
            {
                "prompt_mean": float(prompt),
                "prefill_tps": cap.prefill_tps,
                "decode_batch": cap.decode_batch,
                "decode_tps": cap.decode_tps,
            }
        )
    return out


def learned_curve(
    spec: Any, catalog: Any, output_mean: float, p_scale: float, d_scale: float
) -> list[dict[str, float]]:
    state = PolicyState(
        prefill_capacity_scale=p_scale, decode_capacity_scale=d_scale, capacity_learned_at=0.0
    )
    out = []
    for prompt in PRIOR_PROMPTS:
        sig = Signals(prompt_mean=float(prompt), output_mean=output_mean)
        cap = capacity(spec, sig, state, catalog)
        out.append(
            {
                "prompt_mean": float(prompt),
                "prefill_tps": cap.prefill_tps,
                "decode_tps": cap.decode_tps,
            }
        )
    return out


def plot(path: Path, data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prior, learned, pts = data["prior"], data["learned_curve"], data["points"]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.6))
    xs = [r["prompt_mean"] for r in prior]
    px = [p["prompt_mean"] for p in pts]
    pt = [p["t"] / 60 for p in pts]
    for k, (key, title) in enumerate(
        (("prefill_tps", "prefill: cache-miss tokens/s per instance"),
         ("decode_tps", "decode: tokens/s per instance at the TBT budget"))
    ):  # fmt: skip
        a = ax[k]
        a.plot(xs, [r[key] for r in prior], "-", color="black", label="roofline prior (x1.00)")
        a.plot(
            xs,
            [r[key] for r in learned],
            "--",
            color="tab:red",
            label=f"learned at the end (x{data['final'][key.split('_')[0] + '_scale']:.2f})",
        )
        sc = a.scatter(
            px, [p[key] for p in pts], c=pt, cmap="viridis", s=14, label="in force per decision"
        )
        a.set_xscale("log")
        a.set_xlabel("mean prompt tokens (signal window)")
        a.set_title(title, fontsize=10)
        a.grid(alpha=0.3)
        a.legend(fontsize=8, loc="best")
    fig.colorbar(sc, ax=ax[1], label="replay time (min)")
    a = ax[2]
    a.plot(pt, [p["prefill_scale"] for p in pts], color="tab:orange", label="prefill scale")
    a.plot(pt, [p["decode_scale"] for p in pts], color="tab:blue", label="decode scale")
    a.axhline(1.0, color="black", lw=0.8, ls=":")
    a.set_xlabel("replay time (min)")
    a.set_ylabel("learned / prior")
    a.set_title("learned correction over the replay", fontsize=10)
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    fig.suptitle(
        f"Learned per-instance capacity, service '{SERVICE}' ({data['model']}: prefill "
        f"{data['prefill_gpu']}, decode {data['decode_gpu']}), {data['trace']} x{data['rate_scale']}, "
        f"{data['minutes']:g} min",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--trace", default="synthetic_trace.jsonl", help="file in ../shared/data/traces"
    )
    ap.add_argument("--minutes", type=float, default=15.0, help="slice length from the start")
    ap.add_argument(
        "--rate-scale", type=int, default=4, help="superposed copies (traces.scale_rate)"
    )
    ap.add_argument("--services", default=str(ROOT / "examples" / "sim_services.yaml"))
    ap.add_argument("--out", default=str(ROOT / "results" / "learned_capacity"))
    ap.add_argument("--docs", default=str(ROOT / "docs" / "learned_capacity.png"),
                    help="copy the PNG here too ('' to skip)")  # fmt: skip
    args = ap.parse_args(argv)

    services = load_services(args.services)
    services = services.model_copy(
        update={"services": [s for s in services.services if s.name == SERVICE]}
    )
    spec = services.services[0]
    catalog = services.catalog
    raw = load_trace(TRACES_DIR / args.trace)
    trace = scale_rate(raw, args.rate_scale, seed=SEED, max_shift_s=SHAPE_SHIFT_S)
    trace = trace.slice(0, min(args.minutes * 60, trace.duration_s))
    opts = ReplayOptions(policy="heteroscale")
    topo = fleet_for([spec], FLEET_GPUS)
    print(f"replay {len(trace)} requests ({args.trace} x{args.rate_scale}, {args.minutes:g} min) "
          f"on {topo.total_gpus()} GPUs, service {SERVICE}", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    res = run_replay(services, topo, {SERVICE: trace}, opts)
    wall = time.perf_counter() - t0

    arrival = np.asarray(trace.arrival_s, dtype=float)
    prompt = np.asarray(trace.input_tokens, dtype=float)
    output = np.asarray(trace.output_tokens, dtype=float)
    points = []
    for c in res.cycles:
        cap = parse_capacity(str(c.get(f"{SERVICE}.message", "")))
        pm, om = window_means(arrival, prompt, output, float(c["t"]), opts.window_s)
        if cap is None or pm is None:
            continue
        points.append(
            {"t": float(c["t"]), "prompt_mean": pm, "output_mean": om,
             "reason": c.get(f"{SERVICE}.reason"), **cap}
        )  # fmt: skip
    if not points:
        print("no decision carried a capacity: is the service `signal: demand`?", file=sys.stderr)
        return 1
    out_mean = float(output.mean())
    final = points[-1]
    data = {
        "trace": args.trace,
        "rate_scale": args.rate_scale,
        "minutes": args.minutes,
        "model": spec.model,
        "prefill_gpu": f"{spec.prefill.gpu_types[0]}x{spec.prefill.gpus_per_instance}",
        "decode_gpu": f"{spec.decode.gpu_types[0]}x{spec.decode.gpus_per_instance}",
        "output_mean": out_mean,
        "wall_s": round(wall, 1),
        "replay": {k: res.summary.get(k) for k in ("gpu_hours", "slo_attainment", "completed", "requests")},
        "final": {k: final[k] for k in ("prefill_tps", "prefill_scale", "decode_batch", "decode_tps", "decode_scale", "source")},
        "prior": prior_curve(spec, catalog, out_mean),
        "learned_curve": learned_curve(spec, catalog, out_mean, final["prefill_scale"], final["decode_scale"]),
        "points": points,
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "learned_capacity.png"
    plot(png, data)
    (out / "learned_capacity.json").write_text(json.dumps(data, indent=2))
    if args.docs:
        Path(args.docs).parent.mkdir(parents=True, exist_ok=True)
        Path(args.docs).write_bytes(png.read_bytes())
    ps = [p["prefill_scale"] for p in points]
    ds = [p["decode_scale"] for p in points]
    print(f"{len(points)} decisions; prefill scale {min(ps):.2f}..{max(ps):.2f} (end {ps[-1]:.2f}), "
          f"decode scale {min(ds):.2f}..{max(ds):.2f} (end {ds[-1]:.2f}); wrote {png}")  # fmt: skip
    print(json.dumps({
        "trace": args.trace, "rate_scale": args.rate_scale, "decisions": len(points),
        "final": data["final"], **data["replay"], "wall_s": data["wall_s"],
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
