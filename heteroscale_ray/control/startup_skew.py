"""Start-up skew (paper): a new DG takes traffic only once its ready P:D is near its ratio."""

from __future__ import annotations


def gate_open(ready_p: int, ready_d: int, want_p: int, want_d: int, tolerance: float) -> bool:
    """Route to a DG only once its ready P:D is within ``tolerance`` of the ratio it is built
    for. A DG meant to hold no instances of one role never opens: it could finish no request."""
    if want_p == 0 or want_d == 0:
        return False
    if ready_p >= want_p and ready_d >= want_d:
        return True
    if ready_p == 0 or ready_d == 0:
        return False
    skew = (ready_p / ready_d) / (want_p / want_d)
    return 1.0 / (1.0 + tolerance) <= skew <= 1.0 + tolerance
