"""CLI commands that tune a service on a simulated fleet: `heteroscale pd-sweep` (goodput per
P:D split) and `heteroscale tune` (the paper's Algorithm 1, printing the YAML to paste).

Handlers import the simulator lazily so `heteroscale --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from heteroscale_ray.sim.cli_support import clean, load_trace_or_say

FEW_REQUESTS = 100  # a sample under this many tells little of the lengths' spread


def service_of(args: argparse.Namespace) -> tuple[Any, Any] | None:
    """The services file and the spec --service names (default: the first), or None after
    printing why not."""
    from heteroscale_ray.config import ConfigError, load_services

    try:
        services = load_services(args.services)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return None
    names = [s.name for s in services.services]
    name = names[0] if args.service is None else args.service
    if name not in names:
        print(f"--service {name!r} is not in {args.services}: use one of {names}", file=sys.stderr)
        return None
    return services, services.by_name()[name]


def cmd_pd_sweep(args: argparse.Namespace) -> int:
    from heteroscale_ray.sim.oversized import admitted_requests
    from heteroscale_ray.sim.pdsweep import sweep
    from heteroscale_ray.sim.plots import curves_png

    picked = service_of(args)
    if picked is None:
        return 2
    services, spec = picked
    name = spec.name
    lengths = None
    if args.trace:
        tr = load_trace_or_say(args.trace, args.skip_malformed)
        if tr is None:
            return 2
        if not len(tr):
            print(f"{tr.source} holds no requests to draw lengths from", file=sys.stderr)
            return 2
        try:  # the lengths the ingress admits, as `tune` and `replay` draw on
            fits = admitted_requests(spec, tr, services.catalog)
        except ValueError as err:
            print(f"cannot sweep on {tr.source}: {err}", file=sys.stderr)
            return 2
        if len(fits) < len(tr):
            print(
                f"{len(tr) - len(fits):,} requests of {tr.source} fit no instance of {name} "
                "(too long for its KV memory): their lengths are left out",
                file=sys.stderr,
            )
        tr = fits
        lengths = (tr.input_tokens, tr.output_tokens)
        args.input_tokens = float(tr.input_tokens.mean())
        args.output_tokens = float(tr.output_tokens.mean())
    elif args.input_tokens is None or args.output_tokens is None:
        print("pd-sweep needs --input-tokens and --output-tokens, or --trace", file=sys.stderr)
        return 2
    try:
        points = sweep(
            services,
            spec,
            total_instances=args.instances,
            input_mean=args.input_tokens,
            output_mean=args.output_tokens,
            threshold=args.threshold,
            duration_s=args.duration,
            seed=args.seed,
            lengths=lengths,
        )
    except ValueError as err:  # a run too short to measure, or an SLO out of reach
        print(err, file=sys.stderr)
        return 2
    best = max(points, key=lambda p: p.goodput_rps)
    print(f"{'P:D':>6}  {'goodput req/s':>13}  {'attainment':>10}  {'tokens/s':>9}")
    for pt in points:
        mark = "  <- best" if pt is best else ""
        print(
            f"{pt.label:>6}  {pt.goodput_rps:13.2f}  {pt.attainment:10.1%}  {pt.tokens_per_s:9.0f}{mark}"
        )
    out = args.out  # made when the flag was read (arg_types.out_folder)
    png = curves_png(
        {name: (list(range(len(points))), [p.goodput_rps for p in points])},
        out / f"{name}.png",
        f"{name}: goodput within SLO vs P:D ({args.instances} instances)",
        "prefill:decode",
        "goodput (req/s)",
        [p.label for p in points],
    )
    result = {
        "service": name,
        "best_ratio": best.label,
        "best_goodput_rps": best.goodput_rps,
        "points": [
            {"ratio": p.label, "goodput_rps": p.goodput_rps, "attainment": p.attainment}
            for p in points
        ],
    }
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"best ratio {best.label}; wrote {png}")
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from heteroscale_ray.sim.tune import tune

    picked = service_of(args)
    if picked is None:
        return 2
    services, spec = picked
    name = spec.name
    trace = load_trace_or_say(args.trace, args.skip_malformed)
    if trace is None:
        return 2
    try:
        res = tune(
            services,
            name,
            trace,
            sample_s=args.sample_s,
            instances=args.instances,
            threshold=args.threshold,
            duration_s=args.duration,
            iterations=args.iterations,
            max_term=args.max_term,
            seed=args.seed,
            relative=not args.absolute,
        )
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    print(
        f"tune {name} on {trace.source}: first {res.sample_s:.0f} s, {res.sample_requests} "
        f"requests (prompt mean {res.input_mean:.0f}, output mean {res.output_mean:.0f} tokens); "
        f"{res.instances} instances, SLO attainment >= {res.threshold:.0%}"
        f"{' of the idle-fleet ceiling' if res.relative else ''}, ranked by goodput "
        "(max req/s within SLO x attainment)"
    )
    print(res.table())
    bp, bd = res.best_split
    print(
        f"best split {bp}:{bd} -> pd_ratio {res.ratio}; {res.target_per_instance:.0f} generated "
        f"tok/s per decode instance (prefill: {res.prefill_target_per_instance:.0f} prompt tok/s "
        "per instance)"
    )
    if res.rejected:
        print(
            f"{res.rejected:,} requests of the sample fit no instance of {name} (too long for its "
            "KV memory) and were left out, as its ingress rejects them (HTTP 400)",
            file=sys.stderr,
        )
    if res.sample_requests < FEW_REQUESTS:
        print(
            f"only {res.sample_requests} requests in the sample: its lengths stand for the "
            "trace's only roughly (raise --sample-s)",
            file=sys.stderr,
        )
    print("\n# paste into the service's entry, in place of its policy:")
    print(res.yaml_fragment(spec), end="")
    if args.json:
        print(json.dumps(clean(res.as_dict())))
    return 0
