"""PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _plt():  # noqa: ANN202 - matplotlib's pyplot module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def timeline_png(
    lines: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    title: str,
    slo: tuple[float, float] | None = None,
) -> Path:
    """Load, instances per role, p99 latency and utilisation over time, one line per policy."""
    plt = _plt()
    fig, ax = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    first = next(iter(lines.values()))
    ax[0].plot(first["t_min"], first["arrivals_rps"], color="black")
    ax[0].set_ylabel("arrivals (req/s)")
    ax[0].set_title(title)
    for name, tl in lines.items():
        (p,) = ax[1].plot(tl["t_min"], tl["prefill_instances"], label=f"{name} prefill")
        ax[1].plot(
            tl["t_min"], tl["decode_instances"], "--", color=p.get_color(), label=f"{name} decode"
        )
        ax[2].plot(tl["t_min"], tl["ttft_p99_s"], color=p.get_color(), label=f"{name} TTFT p99")
        ax[2].plot(
            tl["t_min"], tl["tbt_p99_s"] * 25, ":", color=p.get_color(), label=f"{name} TBT p99 x25"
        )
        ax[3].plot(tl["t_min"], tl["prefill_util"], color=p.get_color(), label=f"{name} prefill")
        ax[3].plot(
            tl["t_min"], tl["decode_util"], "--", color=p.get_color(), label=f"{name} decode"
        )
    if slo:
        ax[2].axhline(slo[0], color="grey", lw=0.8)
        ax[2].axhline(slo[1] * 25, color="grey", lw=0.8, ls=":")
    ax[1].set_ylabel("instances")
    ax[2].set_ylabel("latency p99 (s)")
    ax[3].set_ylabel("GPU util (busy share)")
    ax[3].set_xlabel("time (min)")
    for a in ax[1:]:
        a.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def bars_png(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str,
    ylabel: str = "",
) -> Path:
    """Grouped bars: one group per label, one bar per series."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) * max(1, len(series)) / 2), 4))
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=name)
    ax.set_xticks(x, labels, rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def curves_png(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
    xticklabels: Sequence[str] | None = None,
) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o", label=name)
    if xticklabels is not None:
        first = next(iter(curves.values()))[0]
        ax.set_xticks(list(first), list(xticklabels), rotation=30)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
