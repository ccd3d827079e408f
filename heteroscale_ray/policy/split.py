"""Coordinated P/D split: one role is the anchor, the other follows by the ratio (rounded up)."""

from __future__ import annotations

from heteroscale_ray.config import PdRatio, Role

Ratio = PdRatio  # (prefill, decode), e.g. 1:3


def other(role: Role) -> Role:
    return Role.DECODE if role is Role.PREFILL else Role.PREFILL


def shares(role: Role, ratio: Ratio) -> tuple[int, int]:
    """(this role's share, the other role's share) of the P/D ratio."""
    prefill, decode = ratio
    return (prefill, decode) if role is Role.PREFILL else (decode, prefill)


def follower_count(anchor: Role, count: int, ratio: Ratio) -> int:
    """Instances of the other role for ``count`` of the anchor: ceil(count * other / anchor share)."""
    mine, theirs = shares(anchor, ratio)
    return -(-count * theirs // mine)


def as_pair(anchor: Role, count: int, follower: int) -> tuple[int, int]:
    """(prefill, decode) from the anchor's count and the follower's count."""
    return (count, follower) if anchor is Role.PREFILL else (follower, count)


def split(anchor: Role, count: int, ratio: Ratio) -> tuple[int, int]:
    """(prefill, decode) at the ratio, anchored on ``count`` instances of ``anchor``."""
    return as_pair(anchor, count, follower_count(anchor, count, ratio))


def ratio_text(ratio: tuple[int, int]) -> str:
    return str(PdRatio(*ratio))
