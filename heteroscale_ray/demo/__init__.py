"""`heteroscale demo`: the whole system end to end on an embedded local Ray cluster."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from heteroscale_ray.demo.commands import add_demo_parser

    add_demo_parser(sub)
