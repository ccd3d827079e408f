"""The `heteroscale demo` sub-command (handler imports Ray lazily)."""

from __future__ import annotations

import argparse
from pathlib import Path

from heteroscale_ray.arg_types import non_negative, out_folder, positive

# The full hour beside a source checkout (per-minute burstiness, as the README's run used);
# else the packaged 15-minute sample, so a plain clone or a pip install still gets real
# burstiness.
REPO_TRACE = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "data"
    / "traces"
    / "AzureLLMInferenceTrace_conv.csv"
)


def default_trace() -> Path:
    from heteroscale_ray.traces.samples import SAMPLES

    return REPO_TRACE if REPO_TRACE.exists() else SAMPLES["azure-conv"].path


def _cmd_demo(args: argparse.Namespace) -> int:
    from heteroscale_ray.demo.run import run_demo

    if args.no_trace:
        trace = None
    elif args.trace:
        from heteroscale_ray.traces import TraceError, load_azure_csv
        from heteroscale_ray.traces.samples import resolve_trace

        hint = (
            f"--trace {args.trace}: the demo takes the burstiness of an Azure-format CSV "
            "(azure-conv, servegen-mlarge or a .csv / .csv.gz file)"
        )
        try:
            trace = resolve_trace(args.trace)
            if not trace.name.lower().endswith((".csv", ".csv.gz")):
                raise SystemExit(hint)
            load_azure_csv(trace)  # read here, so a wrong file is a message, not a traceback
        except TraceError as err:
            raise SystemExit(f"{hint}: {err}") from None
    else:
        trace = default_trace()
    summary = run_demo(
        Path(args.out),
        duration_s=args.duration,
        low_rps=args.low,
        peak_rps=args.peak,
        period_s=args.period,
        soft_window_s=args.soft_window,
        trace_path=trace,
    )
    return 0 if summary["requests_failed"] == 0 else 1


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run everything end to end on an embedded local Ray cluster (about 4 minutes)",
        description="Start a local Ray cluster of labelled fake-GPU nodes (H20 and L20 hosts in "
        "two mini-pods), deploy a P/D-disaggregated service with a tiny numpy model and "
        "emulated GPU timing, start the HeteroScale control plane, drive a load that rises "
        "and falls over HTTP, print a live table and a summary, and plot the run. Stops "
        "everything it started, also on Ctrl-C. No GPU needed.",
    )
    p.add_argument(
        "--out",
        type=out_folder,
        default="results/demo",
        help="output folder (default results/demo)",
    )
    p.add_argument("--duration", type=positive, default=150.0, help="seconds of load (default 150)")
    p.add_argument(
        "--low", type=non_negative, default=0.5, help="requests/s at the trough (default 0.5)"
    )
    p.add_argument("--peak", type=positive, default=3.0, help="requests/s at the peak (default 3)")
    p.add_argument("--period", type=positive, default=2.0, help="control period, s (default 2)")
    p.add_argument(
        "--soft-window",
        type=non_negative,
        default=15.0,
        help="soft scale-in observation window, s (default 15)",
    )
    p.add_argument(
        "--trace",
        help="Azure-format CSV (or the packaged sample azure-conv or servegen-mlarge) whose "
        "burstiness modulates the load (default: ../shared/data/traces/"
        "AzureLLMInferenceTrace_conv.csv when present, else the packaged azure-conv)",
    )
    p.add_argument("--no-trace", action="store_true", help="use the smooth envelope only")
    p.set_defaults(func=_cmd_demo)
