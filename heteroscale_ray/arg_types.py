"""argparse types for the CLI's numbers and folders: a bad value is refused where it is typed,
with the option named, not a traceback from deep in a replay (or a silent fleet of the wrong
size, or a replay's results lost at its end)."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


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


def split_instances(text: str) -> int:
    """argparse type: instances to split between prefill and decode, at least one of each."""
    try:
        return _whole(text, 2)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e}: a P:D split needs one instance of each") from None


def out_folder(text: str) -> Path:
    """argparse type: the folder a command writes its results to, made now. Made at the end, a
    path that is a file (or under one), or where this user cannot write, failed only after the
    replay had run, and took its results with it."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: name a folder, e.g. results/replay")
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = e.strerror or str(e)
        raise argparse.ArgumentTypeError(f"cannot make folder {text!r} ({why})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in folder {text!r}: pass another one")
    return path


def seed(text: str) -> int:
    """argparse type: a random seed, a whole number >= 0 (numpy's generators take no other)."""
    return _whole(text, 0)


def port(text: str) -> int:
    """argparse type: a TCP port, 0-65535 (0: off, where the option says so)."""
    value = _whole(text, 0)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in 0..65535 (got {text})")
    return value
