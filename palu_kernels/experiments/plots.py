"""Plot helpers the experiments share (matplotlib, Agg): Forget Quality on a log axis."""

from __future__ import annotations

from typing import List, Sequence

__all__ = ["fq_floor", "frontier", "pyplot"]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fq_floor(x) -> float:
    """A Forget Quality for a log axis (a KS p-value may underflow to 0)."""
    return max(float(x), 1e-12) if x is not None else float("nan")


def frontier(points: Sequence[dict], x: str = "mu_mean", y: str = "fq_median") -> List[dict]:
    """The points no other point beats on both ``x`` and ``y`` (higher is better), by ``x``."""
    pts = [p for p in points if p.get(y) is not None]
    out = [p for p in pts
           if not any(q[x] >= p[x] and q[y] >= p[y] and (q[x] > p[x] or q[y] > p[y])
                      for q in pts)]
    return sorted(out, key=lambda p: p[x])
