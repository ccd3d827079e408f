"""argparse types for the CLI's numbers: a bad value is refused where it is typed, with the
option named, not a traceback from deep in a replay (or a silent fleet of the wrong size)."""

from __future__ import annotations

import argparse
import math


def _number(text: str, lowest: float, strict: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < lowest or (strict and value == lowest):
        bound = f"> {lowest:g}" if strict else f">= {lowest:g}"
        raise argparse.ArgumentTypeError(f"must be a finite number {bound} (got {text})")
    return value


def positive(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, 0.0, strict=True)


def non_negative(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, 0.0, strict=False)


def fraction(text: str) -> float:
    """argparse type: a share in (0, 1]."""
    value = _number(text, 0.0, strict=True)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"must be a share in (0, 1] (got {text})")
    return value


def _whole(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"must be >= {lowest} (got {text})")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _whole(text, 1)


def seed(text: str) -> int:
    """argparse type: a random seed, a whole number >= 0 (numpy's generators take no other)."""
    return _whole(text, 0)


def port(text: str) -> int:
    """argparse type: a TCP port, 0-65535 (0: off, where the option says so)."""
    value = _whole(text, 0)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in 0..65535 (got {text})")
    return value
