"""CLI commands of the control plane: start, status, update, stop (the demo's: demo/commands.py).

Handlers import Ray lazily so `heteroscale --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from heteroscale_ray.arg_types import non_negative, port, positive, positive_int

ADDRESS_HELP = "Ray cluster address (default: auto, the cluster this machine belongs to)"


REACH_TIMEOUT_S = 5.0
WATCH_INTERVAL_S = 2.0
MIN_WATCH_INTERVAL_S = 0.2


def _check_reachable(address: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Fail fast on a ``host:port`` nobody listens on: ray.init would retry for minutes."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return  # auto-discovery and Ray Client addresses fail fast on their own
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except ValueError:
        raise SystemExit(f"--address {address!r} is not host:port (e.g. 10.0.0.5:6379)") from None
    except OSError as e:
        raise SystemExit(
            f"cannot reach a Ray cluster at {address!r} ({e.strerror or e}); check the head "
            "node's address and port (`ray status` on the head prints it) or omit --address "
            "on a node of the cluster"
        ) from None


def _connect(address: str) -> None:
    import ray

    from heteroscale_ray.actors.checkpoint import NAMESPACE

    _check_reachable(address)
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError) as e:
        raise SystemExit(
            f"cannot connect to a Ray cluster at {address!r}: {e}\n"
            "start one with `ray start --head` (or `ray up cluster.yaml`), or pass --address"
        ) from None


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise SystemExit(f"cannot read {what} {path!r}: {e.strerror}") from None


def _cmd_start(args: argparse.Namespace) -> int:
    from heteroscale_ray.actors.control_plane import (
        ControlPlaneError,
        ControlPlaneSettings,
        start_control_plane,
    )
    from heteroscale_ray.config import ConfigError, ServicesConfig, TopologySpec, parse_yaml_text

    services = _read(args.services, "services file")
    topology_text = _read(args.topology, "topology file") if args.topology else None
    try:  # validated once, here, before touching the cluster
        config = parse_yaml_text(services, ServicesConfig, args.services)
        topology = (
            parse_yaml_text(topology_text, TopologySpec, args.topology) if topology_text else None
        )
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    _connect(args.address)
    settings = ControlPlaneSettings(
        period_s=args.period,
        soft_window_s=args.soft_window,
        advisory=args.advisory,
        metrics_port=args.metrics_port or None,
    )
    try:
        start_control_plane(
            config,
            topology=topology,
            settings=settings,
            http_host=args.http_host,
            http_port=args.http_port,
        )
    except ControlPlaneError as e:
        print(e, file=sys.stderr)
        return 1
    mode = "advisory mode (decisions logged, nothing actuated)" if args.advisory else "active"
    print(
        f"HeteroScale control plane started ({mode}), period {args.period:g}s.\n"
        f"OpenAI-compatible endpoint: http://{args.http_host}:{args.http_port}/v1/completions\n"
        "Watch it with `heteroscale status`; stop it with `heteroscale stop`."
    )
    return 0


def _status_text(args: argparse.Namespace, *, one_line: bool = False) -> str:
    """What `status` prints once: the Prometheus text, JSON (one line when watching) or the
    table."""
    import ray

    from heteroscale_ray.actors.control_plane import (
        control_plane_status,
        format_migrations,
        format_status,
        policy_engine,
    )
    from heteroscale_ray.serving.routing_table import request_migrations

    if args.metrics:
        return ray.get(policy_engine().metrics_text.remote(), timeout=60).rstrip("\n")
    st = control_plane_status(args.last)
    st["request_migrations"] = request_migrations()  # the ingress's, from the routing table
    if args.json:
        return json.dumps(st, default=str) if one_line else json.dumps(st, indent=2, default=str)
    return format_status(st) + "\n" + format_migrations(st["request_migrations"])


def _cmd_status(args: argparse.Namespace) -> int:
    from heteroscale_ray.actors.control_plane import ControlPlaneError

    _connect(args.address)
    if args.watch or args.interval is not None:
        if args.interval is None:
            args.interval = WATCH_INTERVAL_S
        return _watch_status(args)
    try:
        text = _status_text(args)
    except ControlPlaneError as e:
        print(e, file=sys.stderr)
        return 1
    print(text)
    return 0


def _watch_status(args: argparse.Namespace) -> int:
    """`status --watch`: the status again every --interval seconds until Ctrl-C. On a terminal
    each frame replaces the last; into a pipe or file frames follow each other (with --json, one
    object a line). A control plane that stops answering mid-watch (an actor restarting) shows
    as a line in the frame and the watch goes on; Ctrl-C and a closed pipe end at the CLI entry
    point with one line and exit code 130 / 141."""
    import signal

    # Ctrl-C that lands inside a Ray call can come back as a RayError, which the loop below
    # would show as "not answering" and go on: remember it, and end the watch either way.
    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return _watch_frames(args, lambda: interrupted)
    finally:
        signal.signal(signal.SIGINT, previous)


def _watch_frames(args: argparse.Namespace, interrupted: Callable[[], bool]) -> int:
    """The frames of `status --watch` until Ctrl-C (`interrupted()`), which the caller traps."""
    import datetime as dt
    import time

    from ray.exceptions import RayError

    from heteroscale_ray.actors.control_plane import ControlPlaneError

    redraw = sys.stdout.isatty()
    frames = 0
    while True:
        if interrupted():
            raise KeyboardInterrupt
        stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        try:
            body = _status_text(args, one_line=True)
        except (ControlPlaneError, RayError) as e:
            if interrupted():
                raise KeyboardInterrupt from e
            if frames == 0:
                print(e, file=sys.stderr)  # nothing to watch
                return 1
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            body = (
                json.dumps({"time": stamp, "error": reason})
                if args.json and not args.metrics
                else f"control plane not answering: {reason}"
            )
        if args.json and not args.metrics:
            print(body)
        else:
            if redraw:
                sys.stdout.write("\033[H\033[2J")  # cursor home, clear screen
            elif frames:
                print()
            print(f"heteroscale status at {stamp}, every {args.interval:g}s (Ctrl-C to stop)")
            print(body)
        sys.stdout.flush()
        frames += 1
        time.sleep(args.interval)


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= MIN_WATCH_INTERVAL_S:  # also rejects nan
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_WATCH_INTERVAL_S:g} s (got {text}): each refresh asks the "
            "policy engine for its status"
        )
    return value


def _cmd_update(args: argparse.Namespace) -> int:
    from heteroscale_ray.actors.control_plane import ControlPlaneError, update_services

    text = _read(args.services, "services file")
    _connect(args.address)
    try:
        ok, message = update_services(text)
    except ControlPlaneError as e:
        print(e, file=sys.stderr)
        return 1
    print(
        message if ok else f"update rejected, the running config stays:\n{message}",
        file=sys.stdout if ok else sys.stderr,
    )
    return 0 if ok else 2


def _cmd_stop(args: argparse.Namespace) -> int:
    from heteroscale_ray.actors.control_plane import stop_control_plane

    _connect(args.address)
    done = stop_control_plane(purge=args.purge)
    if not done:
        print("no HeteroScale control plane was running")
        return 0
    for line in done:
        print(f"stopped {line}" if line.startswith("heteroscale-") else line)
    if not args.purge:
        print(
            "DG applications keep serving at their current size; `heteroscale start` adopts "
            "them again, `heteroscale stop --purge` deletes them."
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "start",
        help="run the control plane on an existing Ray cluster (returns once it runs)",
        description="Start the HeteroScale control plane (policy engine, federated "
        "pre-scheduler, one scheduler per sub-cluster, one GpuNode actor per GPU host) as "
        "detached Ray actors, plus Ray Serve and the OpenAI-compatible ingress. GPU nodes "
        "must carry the heteroscale.io/* labels (see cluster.yaml), or pass --topology.",
    )
    p.add_argument("--address", default="auto", help=ADDRESS_HELP)
    p.add_argument(
        "--services", required=True, help="services.yaml (check it with `heteroscale validate`)"
    )
    p.add_argument("--topology", help="topology.yaml; default: discovered from Ray node labels")
    p.add_argument(
        "--advisory",
        action="store_true",
        help="run the loop and log/export decisions without changing anything",
    )
    p.add_argument(
        "--period", type=positive, default=5.0, help="control period in seconds (default 5)"
    )
    p.add_argument(
        "--soft-window",
        type=non_negative,
        default=60.0,
        help="seconds removed instances stay out of routing before they stop (default 60)",
    )
    p.add_argument(
        "--metrics-port",
        type=port,
        default=9500,
        help="Prometheus port of the control plane's metrics (default 9500; 0 = off)",
    )
    p.add_argument("--http-host", default="0.0.0.0", help="Serve HTTP host (default 0.0.0.0)")
    p.add_argument("--http-port", type=port, default=8000, help="Serve HTTP port (default 8000)")
    p.set_defaults(func=_cmd_start)

    p = sub.add_parser("status", help="services, DGs, instances and the last decisions")
    p.add_argument("--address", default="auto", help=ADDRESS_HELP)
    p.add_argument(
        "--last", type=positive_int, default=10, help="how many recent decisions to show"
    )
    p.add_argument("--json", action="store_true", help="print the raw status as JSON")
    p.add_argument("--metrics", action="store_true", help="print the Prometheus metrics text")
    p.add_argument(
        "--watch",
        action="store_true",
        help="refresh until Ctrl-C (a live table on a terminal; one JSON object a line with "
        "--json)",
    )
    p.add_argument(
        "--interval",
        type=_interval,
        metavar="S",
        help=f"seconds between refreshes; implies --watch (default {WATCH_INTERVAL_S:g})",
    )
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("update", help="switch the running control plane to a new services.yaml")
    p.add_argument("--address", default="auto", help=ADDRESS_HELP)
    p.add_argument("--services", required=True, help="the new services.yaml")
    p.set_defaults(func=_cmd_update)

    p = sub.add_parser("stop", help="stop the control plane (DGs keep serving unless --purge)")
    p.add_argument("--address", default="auto", help=ADDRESS_HELP)
    p.add_argument(
        "--purge",
        action="store_true",
        help="also delete the DG applications, the ingress and the checkpoints",
    )
    p.set_defaults(func=_cmd_stop)
