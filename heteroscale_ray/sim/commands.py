"""CLI commands of the simulator: `heteroscale replay` here, `heteroscale pd-sweep` and
`heteroscale tune` in `tuning_commands`, registered here together.

Handlers import the simulator lazily so `heteroscale --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from heteroscale_ray.arg_types import (
    fraction,
    non_negative,
    out_folder,
    positive,
    positive_int,
    seed,
    split_instances,
)
from heteroscale_ray.sim.cli_support import clean, load_trace_or_say, progress
from heteroscale_ray.sim.tuning_commands import cmd_pd_sweep, cmd_tune, service_of

if TYPE_CHECKING:  # imported when used: `--help` needs no numpy
    from heteroscale_ray.config import ServicesConfig, ServiceSpec
    from heteroscale_ray.traces import Trace

REPLAY_POLICIES = ("heteroscale", "hpa-util", "serve-default", "static", "oracle")
# the paper's rule, tuned on the trace first (`tune`, Algorithm 1): asked for by name, as its
# sweep takes longer than a replay
PAPER_FIXED = "paper-fixed"
# a replay steps every second of the span: a month is ~2.6M ticks per policy. A longer span
# is almost always a stray timestamp (a row from another year), so it is refused, not run.
MAX_SPAN_S = 31 * 86400.0
# A replay holds every request's columns in memory, about 170 bytes each (a week of the ServeGen
# day at x16, 32M requests, peaked at 5.5 GB): past this many, lower the rate or the span.
MAX_REPLAY_REQUESTS = 100_000_000
# a drain past this share of the span (and a minute) is reported: a policy left a backlog, or
# the outputs are long
DRAIN_NOTE, DRAIN_NOTE_MIN_S = 0.05, 60.0
DEFAULT_FLEET_GPUS = 1024  # `replay --gpus` unless the trace's static fleet needs more


# heteroscale_ray.traces.samples.samples_help(), spelled out so `--help` need not import numpy
# (tests/test_traces.py checks the two agree)
SAMPLE_NAMES = "azure-conv, mooncake, servegen-mlarge"
TRACE_HELP = (
    f"a packaged sample ({SAMPLE_NAMES}; see heteroscale_ray/traces/data/SOURCES.md) "
    "or a trace file (.csv Azure or BurstGPT, .jsonl Mooncake or Qwen-Bailian; each may be .gz)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="replay a request trace through the simulated cluster under an autoscaling policy",
        description="Replay a trace (a packaged sample, an Azure or BurstGPT CSV, a Mooncake or "
        "Qwen-Bailian JSONL) against a simulated GPU cluster; prints a summary table and writes a PNG "
        "timeline. With --json the last stdout line is one JSON object.",
    )
    p.add_argument("--trace", required=True, help=TRACE_HELP)
    p.add_argument("--services", required=True, help="services.yaml")
    p.add_argument("--service", help="service the trace belongs to (default: the first one)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--topology", help="topology.yaml")
    g.add_argument(
        "--gpus",
        type=positive_int,
        help=f"build a fleet of about N GPUs (default {DEFAULT_FLEET_GPUS}, or, if that is more, "
        "room for the trace's static fleet and an autoscaler's overshoot: sim.fleet.FLEET_FACTOR "
        "times it), its GPU types split as a static fleet for the trace needs them (3:1, 2:2 or "
        "1:3 per big-pod)",
    )
    p.add_argument(
        "--policy",
        default="heteroscale",
        help=f"one of {', '.join(REPLAY_POLICIES)}, a comma-separated list, or 'all'; also "
        f"{PAPER_FIXED}: the service under the paper's decode-TPS rule at the P/D ratio and "
        "target `tune` finds on the trace's first 30 min",
    )
    p.add_argument(
        "--rate-scale", type=positive, default=1.0, help="multiply the request rate by K"
    )
    p.add_argument(
        "--rate-method",
        choices=("superpose", "compress"),
        default="superpose",
        help="superpose shifted copies (keeps the span) or compress time",
    )
    p.add_argument(
        "--rate-shift-max",
        type=non_negative,
        metavar="S",
        help="superpose: shift copies by at most S seconds (default: 600 for a trace over 3 h, "
        "so its day/night shape survives; its whole span for a shorter one)",
    )
    p.add_argument("--duration", type=positive, help="replay only the first S seconds of the trace")
    p.add_argument("--seed", type=seed, default=0, help="seed for rate scaling (default 0)")
    p.add_argument("--startup-s", type=non_negative, default=90.0, help="instance start-up delay")
    p.add_argument("--control-period-s", type=positive, default=15.0, help="autoscaler period")
    p.add_argument(
        "--soft-window",
        type=non_negative,
        default=60.0,
        help="HeteroScale's soft scale-in window in seconds, as `heteroscale start` (0 = off)",
    )
    p.add_argument(
        "--topology-blind", action="store_true", help="placement ignores the switch tree"
    )
    p.add_argument("--skip-malformed", action="store_true", help="skip bad trace rows (counted)")
    p.add_argument(
        "--out", type=out_folder, default="results/replay", help="folder for PNG and JSON outputs"
    )
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    p.set_defaults(func=_cmd_replay)

    q = sub.add_parser(
        "pd-sweep",
        help="stress a service at each P/D split and report max goodput within SLO",
        description="For N instances, each prefill:decode split is held fixed while the request "
        "rate is raised until fewer than --threshold of requests meet both SLOs.",
    )
    q.add_argument("--services", required=True, help="services.yaml")
    q.add_argument("--service", help="service to sweep (default: the first one)")
    q.add_argument("--input-tokens", type=positive, help="mean prompt length")
    q.add_argument("--output-tokens", type=positive, help="mean output length")
    q.add_argument(
        "--trace",
        help="draw (input, output) lengths from this trace instead of the means (keeps tails): "
        + TRACE_HELP,
    )
    q.add_argument("--skip-malformed", action="store_true", help="skip bad trace rows (counted)")
    q.add_argument(
        "--instances", type=split_instances, default=10, help="total instances (default 10)"
    )
    q.add_argument("--threshold", type=fraction, default=0.9, help="SLO attainment to keep")
    q.add_argument(
        "--duration",
        type=positive,
        default=240.0,
        help="seconds per stress run, the first 60 of them warm-up (240)",
    )
    q.add_argument("--seed", type=seed, default=0)
    q.add_argument(
        "--out", type=out_folder, default="results/pd-sweep", help="folder for PNG and JSON outputs"
    )
    q.add_argument("--json", action="store_true", help="print one JSON result as the last line")
    q.set_defaults(func=cmd_pd_sweep)

    t = sub.add_parser(
        "tune",
        help="the paper's offline tuning (Algorithm 1): best P/D ratio and per-instance target",
        description="P/D sweep on the request lengths of a trace sample (its first --sample-s "
        "seconds): each prefill:decode split of --instances is stressed until fewer than "
        "--threshold of requests meet both SLOs; the split with the best goodput (max request "
        "rate within SLO x attainment) gives pd_ratio, and its generated tokens/s per decode "
        "instance gives target_per_instance for signal decode_tps. Prints the table and a YAML "
        "fragment to paste into the service's entry.",
    )
    t.add_argument("--trace", required=True, help=TRACE_HELP)
    t.add_argument("--services", required=True, help="services.yaml")
    t.add_argument("--service", help="service to tune (default: the first one)")
    t.add_argument(
        "--sample-s", type=positive, default=1800.0, help="use the trace's first S seconds (1800)"
    )
    t.add_argument(
        "--instances", type=split_instances, default=16, help="total instances swept (16)"
    )
    t.add_argument("--threshold", type=fraction, default=0.9, help="SLO attainment to keep (0.9)")
    t.add_argument(
        "--duration",
        type=positive,
        default=180.0,
        help="seconds per stress run, the first 45 of them warm-up (180)",
    )
    t.add_argument(
        "--iterations", type=positive_int, default=6, help="bisection steps per split (6)"
    )
    t.add_argument("--max-term", type=positive_int, default=8, help="largest term of the ratio (8)")
    t.add_argument(
        "--absolute",
        action="store_true",
        help="--threshold on raw SLO attainment (default: on attainment over the idle-fleet "
        "ceiling, so requests no capacity can fix do not count against a split)",
    )
    t.add_argument("--seed", type=seed, default=0)
    t.add_argument("--skip-malformed", action="store_true", help="skip bad trace rows (counted)")
    t.add_argument("--json", action="store_true", help="print one JSON result as the last line")
    t.set_defaults(func=cmd_tune)


def _cmd_replay(args: argparse.Namespace) -> int:
    from heteroscale_ray.config import ConfigError, load_topology
    from heteroscale_ray.perf.feasibility import service_problems
    from heteroscale_ray.sim.fleet import fleet_for, gpus_to_hold, replay_fleet_for
    from heteroscale_ray.sim.oversized import admitted_requests
    from heteroscale_ray.sim.plots import timeline_png
    from heteroscale_ray.sim.replay import ReplayOptions, run_replay
    from heteroscale_ray.sim.report import table, timeline
    from heteroscale_ray.sim.sizing import past_max_instances, round_counts, trace_needs
    from heteroscale_ray.traces import scale_rate, shape_keeping_shift

    picked = service_of(args)
    if picked is None:
        return 2
    services, spec = picked
    name = spec.name
    try:
        topology = load_topology(args.topology) if args.topology else None
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    # what `validate` refuses (a model that fits no GPU, a --topology with no host for a role)
    # replayed to 0% with no instance ever placed, and exited 0
    problems = service_problems(services, topology, only=name)
    for problem in problems:
        where = args.services if topology is None else f"{args.services} on {args.topology}"
        print(f"cannot replay on {where}: {problem}", file=sys.stderr)
    if problems:
        return 2
    trace = load_trace_or_say(args.trace, args.skip_malformed)
    if trace is None:
        return 2
    if args.duration:
        trace = trace.slice(0, args.duration)
    if trace.duration_s > MAX_SPAN_S:
        print(
            f"{trace.source} spans {trace.duration_s / 86400:,.4g} days (first arrival to last), "
            f"more than the {MAX_SPAN_S / 86400:.0f} a replay steps through: a stray timestamp, "
            "or milliseconds where the format reads seconds? Replay a part of it with --duration S",
            file=sys.stderr,
        )
        return 2
    superposed = args.rate_method == "superpose"  # compress keeps the count
    if superposed and len(trace) * args.rate_scale > MAX_REPLAY_REQUESTS:
        print(
            f"--rate-scale {args.rate_scale:g} makes {len(trace) * args.rate_scale:,.0f} "
            f"requests of {trace.source}'s {len(trace):,}, more than the "
            f"{MAX_REPLAY_REQUESTS:,} a replay holds in memory: lower --rate-scale, or replay a "
            "part with --duration S",
            file=sys.stderr,
        )
        return 2
    if args.rate_scale != 1.0:
        shift = args.rate_shift_max
        if shift is None:
            shift = shape_keeping_shift(trace.duration_s)
        trace = scale_rate(
            trace, args.rate_scale, method=args.rate_method, seed=args.seed, max_shift_s=shift
        )
    if not len(trace):
        print(f"{trace.source} holds no requests to replay", file=sys.stderr)
        return 2
    if silent := int((trace.output_tokens == 0).sum()):
        print(
            f"{silent:,} of {len(trace):,} requests have no output tokens (BurstGPT logs a "
            "failed request so): they are replayed as prompts alone",
            file=sys.stderr,
        )
    if args.control_period_s >= trace.duration_s:
        print(
            f"--control-period-s {args.control_period_s:g} is no shorter than the trace "
            f"({trace.duration_s:,.0f} s): no policy decides before its last arrival, so each "
            "replays on the fleet it starts with",
            file=sys.stderr,
        )
    # sized on what the ingress admits: a request no instance holds is rejected, not served
    try:
        admitted = admitted_requests(spec, trace, services.catalog)
        needs = trace_needs(spec, services.catalog, admitted)
    except ValueError as e:  # nothing fits, or no instance count meets the SLO
        print(f"cannot replay {trace.source}: {e}", file=sys.stderr)
        return 2
    peak = float(needs.prefill.max()), float(needs.decode.max())
    counts = round_counts(spec, *peak)
    uncached = ", before prefix-cache hits" if trace.has_hashes else ""
    if capped := past_max_instances(spec, *peak, uncached):
        print(capped, file=sys.stderr)
    layout = ""
    if topology is None:
        if args.gpus is None:
            topology = replay_fleet_for(spec, counts, DEFAULT_FLEET_GPUS)
        else:
            topology = fleet_for([spec], args.gpus, counts)
            if topology.total_gpus() != args.gpus:
                print(
                    f"--gpus {args.gpus:,}: the fleet is laid out in whole big-pods "
                    f"(S2 domains), so it holds {topology.total_gpus():,}",
                    file=sys.stderr,
                )
            held = gpus_to_hold(spec, counts, split_by_counts=True)
            if held > topology.total_gpus():
                print(
                    f"the trace's static fleet ({counts[0]} prefill, {counts[1]} decode "
                    f"instances) takes a fleet of {held:,} GPUs in this layout; the one built "
                    f"for --gpus {args.gpus:,} has {topology.total_gpus():,}: results are for "
                    "an overloaded fleet (without --gpus the fleet holds it)",
                    file=sys.stderr,
                )
        split = ", ".join(f"{n} {t}" for t, n in topology.gpus_by_type().items())
        layout = (
            f" ({split}, split as a static fleet for the trace needs: "
            f"{counts[0]} prefill, {counts[1]} decode instances{uncached})"
        )
    asked = [p.strip() for p in args.policy.split(",")]
    policies = REPLAY_POLICIES if asked == ["all"] else tuple(dict.fromkeys(asked))
    bad = [p for p in policies if p not in (*REPLAY_POLICIES, PAPER_FIXED)]
    if bad:
        known = f"{', '.join(REPLAY_POLICIES)}, {PAPER_FIXED}"
        why = (
            "'all' replays every policy and takes no others with it"
            if bad[0] == "all"
            else f"unknown policy {bad[0]!r}: use all, or one or more of {known}"
        )
        print(why, file=sys.stderr)
        return 2
    paper = None
    if PAPER_FIXED in policies:
        paper = paper_services(services, spec, trace, args.seed)
        if paper is None:
            return 2
    print(
        f"replay {trace.source}: {len(trace):,} request{'' if len(trace) == 1 else 's'} "
        f"over {trace.duration_s:.0f} s, "
        f"service {name}, {topology.total_gpus()} GPUs{layout}",
        file=sys.stderr,
    )
    summaries, lines = [], {}
    lead = "\r" if sys.stderr.isatty() else ""  # overwrite the progress line on a terminal
    for pol in policies:
        opts = ReplayOptions(
            policy=pol,
            startup_s=args.startup_s,
            control_period_s=args.control_period_s,
            topology_aware=not args.topology_blind,
            soft_window_s=args.soft_window,
        )
        replayed = services
        if pol == PAPER_FIXED:  # the same autoscaler, under the tuned rule
            replayed, opts = paper, replace(opts, policy="heteroscale")
        # nothing fits the given topology's GPUs, or the SLO is out of reach: said, not raised
        try:
            res = run_replay(replayed, topology, {name: trace}, opts, progress=progress(pol))
        except ValueError as e:
            print(f"{lead}[{pol}] cannot replay {trace.source}: {e}", file=sys.stderr)
            return 2
        s = res.summary
        s["policy"] = pol
        print(
            f"{lead}[{pol}] done: {s['sim_time_s']:.0f} s simulated in {s['wall_s']:.1f} s wall "
            f"= {s['speedup']:.0f}x real time",
            file=sys.stderr,
        )
        if s.get("unplaced_instances"):
            print(
                f"[{pol}] {s['unplaced_instances']:,} instance-periods were asked for and not "
                "placed: the fleet (or a DG's domain) had no room; results are for a capped "
                "fleet (pass a larger --gpus or your own --topology)",
                file=sys.stderr,
            )
        if s["rejected"]:
            room = res.rooms[name]
            print(
                f"[{pol}] {s['rejected']:,} of {s['requests']:,} requests fit no instance of "
                f"{name} (prompt > {room.prefill:,} tokens of prefill KV, or prompt + output > "
                f"{room.decode:,} of decode KV): rejected at the ingress as the real one does "
                "(HTTP 400), they count as missed SLOs",
                file=sys.stderr,
            )
        unfinished = s["requests"] - s["completed"] - s["rejected"]
        if unfinished > 0:
            print(
                f"[{pol}] {unfinished:,} of {s['requests']:,} requests did "
                f"not finish within {res.sim.drain_s:,.0f} s of the last arrival (the replay's "
                "drain limit): they count as missed SLOs",
                file=sys.stderr,
            )
        if s["drain_s"] > max(DRAIN_NOTE * s["duration_s"], DRAIN_NOTE_MIN_S):
            print(
                f"[{pol}] its last request finished {s['drain_s']:,.0f} s after the trace's "
                f"span, on {s['gpu_hours_after']:,.1f} GPU-hours held meanwhile (not in GPU-h, "
                "which covers the span)",
                file=sys.stderr,
            )
        summaries.append(s)
        lines[pol] = timeline(res.sim, trace.duration_s)
        del res  # its per-request arrays go before the next policy's replay allocates its own
    out = args.out  # made when the flag was read (arg_types.out_folder)
    png = timeline_png(
        lines, out / "timeline.png", f"{name}: {trace.source}", (spec.slo.ttft_s, spec.slo.tbt_s)
    )
    (out / "summary.json").write_text(json.dumps(clean(summaries), indent=2) + "\n")
    print(table(summaries))
    speeds = ", ".join(f"{s['policy']} {s['speedup']:.0f}x" for s in summaries)
    print(f"speed (simulated time / wall time): {speeds}")
    print(f"wrote {png} and {out / 'summary.json'}")
    if args.json:
        payload = summaries[0] if len(summaries) == 1 else {"policy": "all", "runs": summaries}
        print(json.dumps(clean(payload)))
    return 0


def paper_services(
    services: ServicesConfig, spec: ServiceSpec, trace: Trace, seed: int
) -> ServicesConfig | None:
    """`services` with `spec` under the paper's rule as `tune` finds it on `trace`'s first 30
    minutes (said on stderr), or None after saying why it cannot be tuned."""
    from heteroscale_ray.sim.tune import paper_rule, tune

    try:
        tuned = tune(services, spec.name, trace, seed=seed)
    except ValueError as e:
        print(f"[{PAPER_FIXED}] cannot tune on {trace.source}: {e}", file=sys.stderr)
        return None
    print(
        f"[{PAPER_FIXED}] tuned on the first {tuned.sample_s:.0f} s: pd_ratio {tuned.ratio}, "
        f"target_per_instance {tuned.target_per_instance:,.0f} decode tok/s",
        file=sys.stderr,
    )
    fixed = paper_rule(spec, tuned)
    return services.model_copy(
        update={"services": [fixed if s.name == spec.name else s for s in services.services]}
    )
