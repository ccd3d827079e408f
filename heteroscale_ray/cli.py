"""The `heteroscale` command: a thin dispatcher; each command lives in its own module.

Imports are lazy so `heteroscale --help` and `heteroscale validate` stay fast and
do not start Ray.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from heteroscale_ray import __version__
from heteroscale_ray.arg_types import out_folder


def _cmd_schema(args: argparse.Namespace) -> int:
    from heteroscale_ray.config import write_schemas

    for path in write_schemas(args.out):
        print(f"wrote {path}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from heteroscale_ray.config import ConfigError, load_services, load_topology
    from heteroscale_ray.perf.feasibility import service_problems

    try:
        services = load_services(args.services)
        topo = load_topology(args.topology) if args.topology else None
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    # well-formed, but can it be served? (the same roofline the simulator and replicas use)
    problems = service_problems(services, topo)
    for problem in problems:
        print(f"{args.services}: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(
        f"{args.services}: OK, {len(services.services)} service(s): "
        + ", ".join(s.name for s in services.services)
    )
    if topo is not None:
        print(f"{args.topology}: OK, {topo.total_gpus()} GPUs of types {sorted(topo.gpu_types())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heteroscale",
        description="Coordinated prefill/decode autoscaling for disaggregated LLM serving on Ray "
        "(HeteroScale, arXiv 2508.19559). Start with `heteroscale demo`.",
    )
    parser.add_argument("--version", action="version", version=f"heteroscale-ray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("schema", help="write JSON schemas for services.yaml and topology.yaml")
    p.add_argument(
        "--out", type=out_folder, default="schemas", help="output folder (default: schemas/)"
    )
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser(
        "validate", help="check a services.yaml (and topology.yaml) and explain errors"
    )
    p.add_argument("services", help="path to services.yaml")
    p.add_argument("--topology", help="path to topology.yaml")
    p.set_defaults(func=_cmd_validate)

    for register in _registrars():
        register(sub)
    return parser


def _registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Commands defined next to the code they drive register their own sub-parsers."""
    regs: list[Callable[[argparse._SubParsersAction], None]] = []
    for module in _COMMAND_MODULES:
        mod = __import__(module, fromlist=["register"])
        regs.append(mod.register)
    return regs


# Each module exposes `register(subparsers)`, adding its commands with lazy-imported handlers.
_COMMAND_MODULES: list[str] = [
    "heteroscale_ray.sim.commands",
    "heteroscale_ray.actors.commands",
    "heteroscale_ray.demo",
]


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run one parsed command. A reader that closed the pipe (`heteroscale status | head -1`)
    or Ctrl-C ends it with one line on stderr and the shell's exit code for that signal, never
    a traceback: handled here, once, for every command. Commands clean up in their own
    ``finally`` blocks, which run before this returns."""
    name = f"heteroscale {args.command}"
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe surfaces here, not at interpreter exit
        return code
    except BrokenPipeError:
        _detach_stdout()
        _say(f"{name}: output closed by the reader (broken pipe); stopped")
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _say(f"{name}: interrupted (Ctrl-C)")
        return EXIT_INTERRUPTED
    except SystemError as exc:
        # Ctrl-C inside a C callback (numba loading a compiled kernel) arrives wrapped.
        if not _caused_by_interrupt(exc):
            raise
        _say(f"{name}: interrupted (Ctrl-C)")
        return EXIT_INTERRUPTED


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _detach_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of the dead pipe cannot raise
    again at exit (the recipe in Python's signal module documentation)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (e.g. captured)
        pass


def _say(message: str) -> None:
    """One line on stderr, on a line of its own after a ``\r`` progress line or an echoed ^C
    on a terminal; silent if stderr is gone too."""
    try:
        lead = "\n" if sys.stderr.isatty() else ""
        sys.stderr.write(f"{lead}{message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
