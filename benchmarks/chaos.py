"""Chaos benchmark: steady open-loop load while replicas, control-plane actors and a node die.

Starts the embedded local Ray cluster (one S1 mini-pod: two H20 and two L20 hosts of 4 fake
GPUs), the control plane in-process (what `heteroscale start` runs) with one P/D service
(prefill on L20, decode on H20, 1:1), and drives seeded Poisson arrivals through the OpenAI
endpoint, half of them streamed. Meanwhile a seeded schedule

- kills decode and prefill replicas (`ray.kill` on the Serve replica actor; Serve restarts it),
- kills each control-plane actor kind: PolicyEngine, FederatedPreScheduler, one
  SubClusterScheduler, one GpuNode (`ray.kill(no_restart=False)`: Ray restarts them and they
  read their checkpoints back),
- kills the ingress's routing-table actor (Ray restarts it on the head node; it reads its
  routes back from the GCS KV store, and the routers must not turn its restart into errors),
- removes the GPU host holding most of the service's replicas (`Cluster.remove_node`), waits
  until its instances run again elsewhere, then adds it back with the same labels,

and a scaler thread forces scale events the way an operator would: it alternates the
service's minimum instances between 2P/2D and 3P/3D (`--levels`) through the control plane's
`update_services` API (as `heteroscale update` does) every few seconds (seeded): a raise scales
out at once (clamped_min_max), a drop lets the policy scale in softly. Every role keeps two
replicas, so a killed replica's requests always have a peer to move to.

Measured: every request's outcome (completed / failed / truncated: a stream that ended without
a finish_reason, or with fewer tokens than asked for without a stop), request migrations (the
ingress's `heteroscale_request_migrations_total`), per fault kind the recovery time (serving
faults and the routing table: from the fault until every request sent in a 5 s window completes
within 3x the p99 latency seen before any fault; control-plane actors: until the restarted actor
answers with its checkpointed state) and the refill time (until the lost replicas run again, or
the restarted routing table answers with the service's routes), and every second
the control plane's status snapshot is checked: DG ids unique, no GPU held twice.

Prints a table; the LAST line is the JSON summary, also written to results/chaos/summary.json
with every fault and request, and results/chaos/timeline.png. Exit status 0 when the goals
hold (lost = 0, recovery <= 10 s per kind, no duplicate DG, no double-booked GPU, every kind
killed and >= 20 scale events), 1 otherwise. Everything started is stopped, also on Ctrl-C.

    .venv/bin/python benchmarks/chaos.py --quick     # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/chaos.py             # about 6.5 minutes: every kind 2-4 times

The pure part is benchmarks/chaos_core.py (schedule, outcomes, recovery, invariants) and
benchmarks/chaos_report.py (summary, goals, table, figure); the load, status and scaler threads
are benchmarks/chaos_drivers.py, the faults and how their recovery is measured
benchmarks/chaos_faults.py. This file parses the arguments and orchestrates one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # chaos_core etc. beside us
from chaos_core import (  # noqa: E402
    COMPLETED,
    FULL,
    LEVELS,
    QUICK,
    ROOT,
    SCALE_EVENTS_GOAL,
    TOPOLOGY,
    Clock,
    Mode,
    good_latency_bound,
    is_scale_event,
    level_yaml,
    longest_stall,
    make_schedule,
)
from chaos_drivers import Monitor, OpenLoopLoad, Scaler, read_migrations  # noqa: E402
from chaos_faults import Chaos, cp_status  # noqa: E402
from chaos_report import RunFacts, format_table, plot, summarise  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="one kill per kind (two decode), ~3 min")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, default=None, help="requests/s (default by mode)")
    p.add_argument("--period", type=float, default=1.5, help="control period, seconds")
    p.add_argument("--soft-window", type=float, default=5.0, help="soft scale-in window, s")
    p.add_argument(
        "--levels",
        type=_level,
        nargs=2,
        default=list(LEVELS),
        metavar="P,D",
        help="the two (prefill, decode) minimums the scaler alternates between (default 2,2 3,3)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "results" / "chaos")
    return p.parse_args(argv)


def _level(text: str) -> tuple[int, int]:
    try:
        p, d = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"want P,D such as 2,3; got {text!r}") from None
    if p < 1 or d < 1:
        raise argparse.ArgumentTypeError(f"each role needs 1 instance at least; got {text!r}")
    return p, d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_first_dg(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            st = cp_status(3)
            dgs = st["pre_scheduler"].get("dgs", [])
            if dgs and all(d["gate_open"] for d in dgs):
                return
            last = st.get("last_error")
        except Exception as e:  # not up yet
            last = e
        time.sleep(1.0)
    raise RuntimeError(f"the first DG did not come up in {timeout_s:g} s: {last}")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Run:
    """One benchmark run: what it started (so that `stop` can stop it) and what it saw."""

    args: argparse.Namespace
    mode: Mode
    levels: list[tuple[int, int]]
    clock: Clock = field(default_factory=Clock)
    local: Any = None
    url: str = ""
    load: OpenLoopLoad | None = None
    monitor: Monitor | None = None
    scaler: Scaler | None = None
    chaos: Chaos | None = None
    good_latency_s: float = 10.0
    scale_since: float = 0.0  # wall time the scaler started: scale events count from here
    end_t: float = 0.0
    migrations_start: float | None = None
    migrations: tuple[float | None, str] = (None, "not read")

    def start(self) -> None:
        """Local cluster, Serve with one proxy on the head, the control plane, the first DG."""
        from ray import serve

        from heteroscale_ray.actors.control_plane import ControlPlaneSettings, start_control_plane
        from heteroscale_ray.actors.serving_adapter import ServingOptions
        from heteroscale_ray.config import (
            ServicesConfig,
            TopologySpec,
            parse_model,
            parse_yaml_text,
        )
        from heteroscale_ray.local_cluster import start_local_cluster
        from heteroscale_ray.serving.emulation import EmulationConfig
        from heteroscale_ray.serving.model import ModelConfig

        self.local = start_local_cluster(parse_model(TopologySpec, TOPOLOGY, "chaos topology"))
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        # One HTTP proxy, on the head (CPU) node: a GPU host leaving must not take the
        # client's connections with it (on a real cluster the ingress sits on CPU nodes too).
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        options = ServingOptions(
            engine=ModelConfig(n_layers=2, d_model=64, n_heads=4, max_context=512),
            emulation=EmulationConfig(enabled=True, time_scale=2.0),
            graceful_shutdown_timeout_s=30.0,
        )
        settings = ControlPlaneSettings(
            period_s=self.args.period, soft_window_s=self.args.soft_window, options=options
        )
        config = parse_yaml_text(level_yaml(self.levels, 0), ServicesConfig, "chaos services")
        start_control_plane(config, settings=settings, http_host="127.0.0.1", http_port=port)
        _wait_first_dg(180)

    def drive(self) -> None:
        """Warm up, then the faults under load and scale events; stop the load at the end."""
        mode = self.mode
        self.clock = clock = Clock()
        self.monitor = monitor = Monitor(clock).start()
        self.load = load = OpenLoopLoad(self.url, self.args.seed, mode, clock).start()
        self.chaos = chaos = Chaos(self.local, clock, mode)
        time.sleep(mode.warmup_s)
        done = [r for r in load.records if r.outcome == COMPLETED]
        self.good_latency_s = good_latency_bound([r.latency_s for r in done])
        self.migrations_start = read_migrations(self.url)[0]
        print(
            f"[chaos] warm-up: {len(load.records)} requests done, "
            f"{len(load.records) - len(done)} lost; good = completed within "
            f"{self.good_latency_s:.1f} s",
            flush=True,
        )
        self.scale_since = time.time()
        self.scaler = Scaler(self.args.seed, mode, clock, self.levels).start()
        for fault in make_schedule(self.args.seed, mode):
            last_t = chaos.faults[-1]["t"] if chaos.faults else 0.0
            time.sleep(max(fault.gap_s, last_t + mode.window_s - clock()))
            first, before = len(chaos.faults), read_migrations(self.url)[0]
            chaos.run(fault)
            after = read_migrations(self.url)[0]
            if before is not None and after is not None and chaos.faults[first:]:
                chaos.faults[first]["migrations"] = int(max(after - before, 0))
        # Enough scale events, and a full recovery window after the last fault.
        deadline = clock() + 90.0
        while monitor.scale_events(self.scale_since) < SCALE_EVENTS_GOAL and clock() < deadline:
            time.sleep(1.0)
        self.scaler.stop()
        last_t = chaos.faults[-1]["t"] if chaos.faults else 0.0
        time.sleep(max(0.0, last_t + mode.window_s - clock()))
        self.end_t = clock()
        load.stop()
        time.sleep(2.0)  # a last cycle's decisions and snapshot
        monitor.poll()
        self.migrations = read_migrations(self.url)

    def stop(self) -> None:
        """Stop everything it started, in order; safe after a partial start or a Ctrl-C."""
        from heteroscale_ray.actors.control_plane import stop_control_plane

        with contextlib.suppress(Exception):
            if self.load is not None:
                self.load.stop(drain_s=0.0)  # a no-op after a normal end
        for part in (self.scaler, self.monitor):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        if self.local is not None:
            try:
                with contextlib.suppress(Exception):
                    stop_control_plane(purge=True)
            finally:
                self.local.shutdown()

    def report(self, wall_s: float) -> dict[str, Any]:
        """Summarise, write summary.json and timeline.png, print the table and the JSON line."""
        load, monitor, scaler, chaos = self.load, self.monitor, self.scaler, self.chaos
        assert load and monitor and scaler and chaos, "report() after a completed drive()"
        total, source = self.migrations
        if total is None:
            count, note = 0, f"not exported ({source}): reported as 0"
        else:  # since the warm-up; an ingress that restarted counts from zero again
            base = self.migrations_start or 0.0
            count, note = int(total - base if total >= base else total), source
        records = sorted(load.records, key=lambda r: r.sent)
        facts = RunFacts(
            scale_events=monitor.scale_events(self.scale_since),
            duplicate_dgs=len(monitor.dup_ids),
            double_booked_gpus=len(monitor.double_booked),
            migrations=count,
            migrations_source=note,
            good_latency_s=self.good_latency_s,
            end_t=self.end_t,
        )
        summary = summarise(records, chaos.faults, facts)
        summary.update(
            control_cycle_stall_s_max=longest_stall(monitor.samples),
            mode=self.mode.name,
            seed=self.args.seed,
            rate=self.mode.rate,
            wall_s=round(wall_s, 1),
        )
        out = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        full = {
            "summary": summary,
            "faults": chaos.faults,
            "scale_updates": scaler.updates,
            "scale_decisions": [
                e
                for e in sorted(monitor.decisions.values(), key=lambda e: e["time"])
                if e["time"] >= self.scale_since and is_scale_event(e)
            ],
            "duplicate_dg_ids": sorted(monitor.dup_ids),
            "double_booked": sorted(monitor.double_booked),
            "status_poll_errors": monitor.errors,
            "timeline": monitor.samples,
            "requests": [asdict(r) for r in records],
            "failure_examples": sorted({r.error[:160] for r in records if r.error})[:10],
            "mode": asdict(self.mode),
            "levels": self.levels,
        }
        (out / "summary.json").write_text(json.dumps(full, indent=1, default=str))
        png = plot(out / "timeline.png", records, chaos.faults, monitor.samples, scaler.updates)
        print()
        print(format_table(summary, chaos.faults))
        for example in full["failure_examples"][:3]:
            print(f"  e.g. {example}")
        rel = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
        print(f"wrote {rel}/summary.json" + (f" and {rel}/timeline.png" if png else ""))
        print(json.dumps(summary))
        return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = QUICK if args.quick else FULL
    if args.rate is not None:
        mode = Mode(**{**asdict(mode), "rate": args.rate})
    sys.path.insert(0, str(ROOT))
    signal.signal(signal.SIGTERM, _raise_interrupt)
    run = Run(args, mode, [tuple(x) for x in args.levels])
    wall0 = time.monotonic()
    schedule = make_schedule(args.seed, mode)
    print(
        f"[chaos] {mode.name} run, seed {args.seed}: {len(schedule)} faults "
        f"({', '.join(f.kind for f in schedule)}), load {mode.rate:g} req/s "
        f"({mode.stream_fraction:.0%} streamed), scale level {run.levels[0]} <-> "
        f"{run.levels[1]} (P, D) every {mode.scale_every_s[0]:g}-{mode.scale_every_s[1]:g} s",
        flush=True,
    )
    try:
        run.start()
        print(f"[chaos] cluster and first DG up after {time.monotonic() - wall0:.0f} s", flush=True)
        run.drive()
    except KeyboardInterrupt:
        print("\n[chaos] interrupted: stopping everything it started", flush=True)
        return 130
    finally:
        run.stop()
    summary = run.report(time.monotonic() - wall0)
    return 0 if summary["goals"]["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
