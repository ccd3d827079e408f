"""The P/D ratio: prefill instances per decode instance, written and read as "1:3"."""

from __future__ import annotations

import re
from typing import NamedTuple


class PdRatio(NamedTuple):
    """A prefill:decode instance ratio, e.g. 1:3; written and read as "1:3"."""

    prefill: int
    decode: int

    def __str__(self) -> str:
        return f"{self.prefill}:{self.decode}"

    @property
    def value(self) -> float:
        """Prefill instances per decode instance."""
        return self.prefill / self.decode


def unquoted_ratio(value: object) -> object:
    """`value` as given, unless it is a ratio YAML 1.1 read as a base-60 number: unquoted,
    `pd_ratio: 3:1` loads as 181, and the error said only that 181 is no string."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 60:
        prefill, decode = divmod(value, 60)
        raise ValueError(
            f"YAML read an unquoted {prefill}:{decode} as the base-60 number {value}: "
            f'quote it, "{prefill}:{decode}"'
        )
    return value


def parse_pd_ratio(text: str) -> PdRatio:
    """'1:3' -> PdRatio(1, 3). Prefill first, decode second, both positive integers."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise ValueError(
            f"P/D ratio {text!r} must look like '1:3' (prefill:decode, positive integers)"
        )
    return PdRatio(int(m.group(1)), int(m.group(2)))
